import hashlib
import json

from django.core.files.storage import storages
from django.core.management.base import BaseCommand, CommandError

from audit.checkpoints import checkpoint_latest, checkpoint_write
from audit.integrity import ChainBreak, chain_walk
from audit.models import Prediction


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
        parser.add_argument("--no-progress", action="store_true", help="No progress bar on stderr.")
        parser.add_argument(
            "--no-checkpoint",
            action="store_true",
            help="Neither compare with nor write the checkpoint in audit-checkpoints/ (xray_images).",
        )

    def handle(self, *args, **options):
        storage = None if options["skip_images"] else storages["xray_images"]
        expect_head = options.get("expect_head") or ""
        report = {
            "rows": 0,
            "chained": 0,
            "unchained": 0,
            "images_checked": 0,
            "images_bad": 0,
            "breaks": 0,
            "head": "",
            "ok": True,
            "first_break": None,
        }
        head_seen = not expect_head
        # The newest checkpoint written outside the database (audit.checkpoints): its row must
        # still be in the chain with the same hash, else rows were cut off the end.
        checkpoint = None if options["no_checkpoint"] else _checkpoint_or_none(self.stderr)
        checkpoint_seen = checkpoint is None
        report["checkpoint"] = checkpoint
        last_id = 0
        from tqdm import tqdm

        # An estimate for the bar only (a count would read the whole table once more).
        estimate = (
            Prediction.objects.using(options["database"]).order_by("-id").values_list("id", flat=True).first()
        )
        progress = tqdm(
            total=estimate or 0,
            unit="rows",
            unit_scale=True,
            file=self.stderr._out,
            disable=options["no_progress"],
            desc="verify_audit",
        )
        for row, problem in chain_walk(using=options["database"]):
            progress.update(1)
            last_id = row.pk
            if checkpoint is not None and row.pk == checkpoint["last_id"]:
                checkpoint_seen = row.chain_hash == checkpoint["head"] and (
                    checkpoint.get("rows") is None or report["rows"] + 1 == checkpoint["rows"]
                )
            report["rows"] += 1
            report["chained" if row.chain_hash else "unchained"] += 1
            report["head"] = row.chain_hash or report["head"]
            head_seen = head_seen or row.chain_hash == expect_head
            if problem is None and storage is not None:
                report["images_checked"] += 1
                problem = _image_problem(storage, row)
                if problem is not None:
                    report["images_bad"] += 1
            if problem is not None:
                report["breaks"] += 1
                if report["first_break"] is None:
                    report["first_break"] = problem.as_dict()
        if not head_seen:
            report["breaks"] += 1
            report["first_break"] = (
                report["first_break"]
                or ChainBreak(
                    None,
                    "truncated",
                    f"the expected head {expect_head[:12]} is not in the chain: rows were removed",
                ).as_dict()
            )
        progress.close()
        if not checkpoint_seen:
            rows = f", {checkpoint['rows']} rows" if checkpoint.get("rows") else ""
            report["breaks"] += 1
            report["first_break"] = (
                report["first_break"]
                or ChainBreak(
                    checkpoint["last_id"],
                    "truncated",
                    f"the checkpointed head (row {checkpoint['last_id']}, {checkpoint['head'][:12]}{rows}) "
                    "is not in the chain as recorded: rows were cut from the end or removed",
                ).as_dict()
            )
        report["ok"] = report["breaks"] == 0
        if report["ok"] and report["rows"] and not options["no_checkpoint"]:
            checkpoint_write(
                {"last_id": last_id, "head": report["head"], "rows": report["rows"], "by": "verify_audit"}
            )
        self.stdout.write(json.dumps(report))
        if not report["ok"]:
            raise CommandError(
                f"the audit log is not intact: {report['first_break']['message']}", returncode=1
            )


def _image_problem(storage, row) -> ChainBreak | None:
    try:
        digest = hashlib.sha256()
        with storage.open(row.image_url, "rb") as handle:
            for chunk in handle.chunks():
                digest.update(chunk)
        digest = digest.hexdigest()
    except FileNotFoundError:
        return ChainBreak(row.pk, "image_missing", f"the stored image {row.image_url} is missing")
    except Exception as exc:  # noqa: BLE001 - any backend failure is reported, not raised
        return ChainBreak(
            row.pk, "image_unreadable", f"the stored image {row.image_url} cannot be read: {exc}"
        )
    if row.stored_sha256 and digest != row.stored_sha256:
        return ChainBreak(
            row.pk,
            "image_altered",
            f"the stored image {row.image_url} does not match its recorded sha256 "
            f"(recorded {row.stored_sha256[:12]}, found {digest[:12]})",
        )
    return None


def _checkpoint_or_none(stderr) -> dict | None:
    try:
        return checkpoint_latest()
    except Exception as exc:  # noqa: BLE001 - a storage failure is reported, the chain still checked
        stderr.write(f"cannot read the audit checkpoints: {exc}")
        return None
