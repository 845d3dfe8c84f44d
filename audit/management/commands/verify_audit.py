import json
import os

from django.core.management.base import BaseCommand, CommandError

from audit.checkpoints import checkpoint_latest, checkpoint_write, signature_problem
from audit.integrity import ChainBreak, keyed_from_id
from audit.models import Prediction
from audit.verification import log_verify


class Command(BaseCommand):
    help = "Checks the prediction log's hash chain and every stored image; prints JSON, exits 1 on a break."

    def add_arguments(self, parser):
        parser.add_argument("--skip-images", action="store_true", help="Check the chain only.")
        parser.add_argument(
            "--expect-head",
            metavar="HASH",
            help="A chain hash printed by an earlier run: it must still be in the chain (detects "
            "rows cut off the end, which the chain alone cannot).",
        )
        parser.add_argument("--database", default="default")
        parser.add_argument(
            "--jobs",
            type=int,
            default=0,
            metavar="N",
            help="Processes walking the chain side by side, each over one range of ids (default: one "
            "per core, at most 4, from 100,000 rows on; 1 walks it in this process).",
        )
        parser.add_argument("--no-progress", action="store_true", help="No progress bar on stderr.")
        parser.add_argument(
            "--no-checkpoint",
            action="store_true",
            help="Neither compare with nor write the checkpoint in audit-checkpoints/ (xray_images).",
        )

    def handle(self, *args, **options):
        using = options["database"]
        expect_head = options.get("expect_head") or ""
        # The newest checkpoint written outside the database (audit.checkpoints): its row must
        # still be in the chain with the same hash, else rows were cut off the end.
        checkpoint = None if options["no_checkpoint"] else _checkpoint_or_none(self.stderr)
        from tqdm import tqdm

        # An estimate for the bar only (a count would read the whole table once more).
        estimate = Prediction.objects.using(using).order_by("-id").values_list("id", flat=True).first()
        progress = tqdm(
            total=estimate or 0,
            unit="rows",
            unit_scale=True,
            file=self.stderr._out,
            disable=options["no_progress"],
            desc="verify_audit",
        )
        whole, _ = log_verify(
            using=using,
            jobs=options["jobs"] or default_jobs(estimate or 0),
            check_images=not options["skip_images"],
            expect_head=expect_head,
            watch_id=checkpoint["last_id"] if checkpoint else None,
            progress=progress.update,
        )
        progress.close()
        report = {
            "rows": whole.rows,
            "chained": whole.chained,
            "unchained": whole.unchained,
            "images_checked": whole.images_checked,
            "images_bad": whole.images_bad,
            "breaks": whole.breaks,
            "head": whole.head,
            "ok": True,
            "first_break": whole.first_break,
            "checkpoint": checkpoint,
        }
        if expect_head and not whole.expect_head_seen:
            _add_break(
                report,
                ChainBreak(
                    None,
                    "truncated",
                    f"the expected head {expect_head[:12]} is not in the chain: rows were removed",
                ),
            )
        forged = signature_problem(checkpoint, keyed_from=keyed_from_id(using)) if checkpoint else None
        if forged is not None:
            _add_break(report, ChainBreak(checkpoint.get("last_id"), *forged))
        elif checkpoint is not None and not _checkpoint_met(checkpoint, whole.watched):
            rows = f", {checkpoint['rows']} rows" if checkpoint.get("rows") else ""
            _add_break(
                report,
                ChainBreak(
                    checkpoint["last_id"],
                    "truncated",
                    f"the checkpointed head (row {checkpoint['last_id']}, {checkpoint['head'][:12]}{rows}) "
                    "is not in the chain as recorded: rows were cut from the end or removed",
                ),
            )
        report["ok"] = report["breaks"] == 0
        if report["ok"] and report["rows"] and not options["no_checkpoint"]:
            head = {"last_id": whole.last_id, "head": report["head"], "rows": report["rows"]}
            checkpoint_write({**head, "by": "verify_audit"})
        self.stdout.write(json.dumps(report))
        if not report["ok"]:
            raise CommandError(
                f"the audit log is not intact: {report['first_break']['message']}", returncode=1
            )


def default_jobs(rows: int) -> int:
    """One process per core, up to 4 (each walk also keeps a database backend busy); one for a log
    under 100,000 rows, which a single process walks in seconds."""
    if rows < 100_000:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(4, cores))


def _checkpoint_met(checkpoint: dict, watched: tuple[str, int] | None) -> bool:
    """The checkpoint's row is in the chain with its hash (and, for a checkpoint verify_audit
    wrote, as the same numbered row)."""
    if watched is None:
        return False
    chain_hash, rows_through = watched
    return chain_hash == checkpoint["head"] and checkpoint.get("rows") in (None, rows_through)


def _add_break(report: dict, problem: ChainBreak) -> None:
    report["breaks"] += 1
    report["first_break"] = report["first_break"] or problem.as_dict()


def _checkpoint_or_none(stderr) -> dict | None:
    try:
        return checkpoint_latest()
    except Exception as exc:  # noqa: BLE001 - a storage failure is reported, the chain still checked
        stderr.write(f"cannot read the audit checkpoints: {exc}")
        return None
