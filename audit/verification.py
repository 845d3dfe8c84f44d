"""What verify_audit checks, over the whole log or split by id into ranges walked side by side.

`range_verify` walks one id range (audit.integrity.chain_walk) and checks each intact row's stored
image; `log_verify` splits the ids into `jobs` consecutive ranges, runs one process per range
(forked, so each has its own database connection and the parent's settings), and joins their
reports in id order into one. Every range links its first row to the stored hash of the row
before it, which the range before checks, so the ranges together check every link of the chain.
"""

from __future__ import annotations

import hashlib
import multiprocessing
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass

from django.core.files.storage import storages
from django.db import connections
from django.db.models import Max, Min

from audit.integrity import ChainBreak, chain_walk
from audit.models import Prediction

# How often a range tells the parent how far it got (rows), for the progress bar.
_PROGRESS_EVERY = 5000


@dataclass
class RangeReport:
    rows: int = 0
    chained: int = 0
    unchained: int = 0
    images_checked: int = 0
    images_bad: int = 0
    breaks: int = 0
    head: str = ""
    last_id: int = 0
    first_break: dict | None = None
    # Whether `expect_head` was met; and the watched row (a checkpoint's last id), if met: its
    # chain hash and how many rows of this range come before it, itself included.
    expect_head_seen: bool = False
    watched: tuple[str, int] | None = None


def range_verify(
    *,
    using: str = "default",
    after_id: int = 0,
    through_id: int | None = None,
    check_images: bool = True,
    expect_head: str = "",
    watch_id: int | None = None,
    progress=None,
) -> RangeReport:
    """The report of the rows with id in (after_id, through_id]. `progress` (a callable) gets the
    number of rows walked since its last call."""
    storage = storages["xray_images"] if check_images else None
    report = RangeReport()
    unreported = 0
    for row, problem in chain_walk(using=using, after_id=after_id, through_id=through_id):
        report.rows += 1
        report.last_id = row.id
        if row.chain_hash:
            report.chained += 1
            report.head = row.chain_hash
            report.expect_head_seen = report.expect_head_seen or row.chain_hash == expect_head
        else:
            report.unchained += 1
        if row.id == watch_id:
            report.watched = (row.chain_hash, report.rows)
        if problem is None and storage is not None:
            report.images_checked += 1
            problem = image_problem(storage, row)
            if problem is not None:
                report.images_bad += 1
        if problem is not None:
            report.breaks += 1
            report.first_break = report.first_break or problem.as_dict()
        unreported += 1
        if progress is not None and unreported >= _PROGRESS_EVERY:
            progress(unreported)
            unreported = 0
    if progress is not None and unreported:
        progress(unreported)
    return report


def image_problem(storage, row) -> ChainBreak | None:
    """Whether the stored image of `row` (anything with id, image_url and stored_sha256) is there
    and has the recorded hash."""
    try:
        digest = hashlib.sha256()
        with storage.open(row.image_url, "rb") as handle:
            for chunk in handle.chunks():
                digest.update(chunk)
        digest = digest.hexdigest()
    except FileNotFoundError:
        return ChainBreak(row.id, "image_missing", f"the stored image {row.image_url} is missing")
    except Exception as exc:  # noqa: BLE001 - any backend failure is reported, not raised
        message = f"the stored image {row.image_url} cannot be read: {exc}"
        return ChainBreak(row.id, "image_unreadable", message)
    if row.stored_sha256 and digest != row.stored_sha256:
        return ChainBreak(
            row.id,
            "image_altered",
            f"the stored image {row.image_url} does not match its recorded sha256 "
            f"(recorded {row.stored_sha256[:12]}, found {digest[:12]})",
        )
    return None


def id_ranges(*, using: str, jobs: int) -> list[tuple[int, int | None]]:
    """`jobs` consecutive (after_id, through_id] ranges covering every id; the last is open-ended
    so rows appended during the walk are walked too."""
    bounds = Prediction.objects.using(using).aggregate(low=Min("id"), high=Max("id"))
    low, high = bounds["low"], bounds["high"]
    if low is None or jobs <= 1 or high - low < jobs:
        return [(0, None)]
    step = (high - low + 1) / jobs
    cuts = [low - 1 + round(step * n) for n in range(jobs)]
    return [(cut, nxt) for cut, nxt in zip(cuts, cuts[1:], strict=False)] + [(cuts[-1], None)]


_counters = []  # in a child: one shared row counter per range, for the parent's progress bar


def _child_start(counters) -> None:
    _counters[:] = counters


def _range_in_child(index: int, kwargs: dict) -> RangeReport:
    counter = _counters[index]

    def progress(rows: int) -> None:
        with counter.get_lock():
            counter.value += rows

    return range_verify(progress=progress, **kwargs)


def log_verify(
    *,
    using: str = "default",
    jobs: int = 1,
    check_images: bool = True,
    expect_head: str = "",
    watch_id: int | None = None,
    progress=None,
) -> tuple[RangeReport, list[RangeReport]]:
    """The whole log's report, and the reports of its ranges in id order."""
    options = {"using": using, "check_images": check_images, "expect_head": expect_head, "watch_id": watch_id}
    ranges = id_ranges(using=using, jobs=jobs)
    # Children cannot see this connection's uncommitted rows (nor may it be closed inside a
    # transaction): within one, the walk stays in this process.
    if len(ranges) == 1 or connections[using].in_atomic_block:
        reports = [range_verify(progress=progress, **options)]
    else:
        reports = _ranges_in_children(ranges, options, progress)
    return _joined(reports), reports


def _ranges_in_children(ranges, options: dict, progress) -> list[RangeReport]:
    # Fork: each child inherits the settings as this process has them (a test's database, a
    # command's overrides). Connections are closed first so no child shares this one's socket.
    connections.close_all()
    context = multiprocessing.get_context("fork")
    counters = [context.Value("q", 0) for _ in ranges]
    with ProcessPoolExecutor(
        max_workers=len(ranges), mp_context=context, initializer=_child_start, initargs=(counters,)
    ) as pool:
        futures = [
            pool.submit(_range_in_child, index, {**options, "after_id": after_id, "through_id": through_id})
            for index, (after_id, through_id) in enumerate(ranges)
        ]
        reported = 0
        while True:
            done, pending = wait(futures, timeout=0.5, return_when=FIRST_EXCEPTION)
            walked = sum(counter.value for counter in counters)
            if progress is not None and walked > reported:
                progress(walked - reported)
                reported = walked
            if not pending or any(future.exception() for future in done):
                break
        return [future.result() for future in futures]


def _joined(reports: list[RangeReport]) -> RangeReport:
    whole = RangeReport()
    rows_before = 0
    for report in reports:
        for name in ("rows", "chained", "unchained", "images_checked", "images_bad", "breaks"):
            setattr(whole, name, getattr(whole, name) + getattr(report, name))
        whole.head = report.head or whole.head
        whole.last_id = report.last_id or whole.last_id
        whole.first_break = whole.first_break or report.first_break
        whole.expect_head_seen = whole.expect_head_seen or report.expect_head_seen
        if report.watched is not None:
            whole.watched = (report.watched[0], rows_before + report.watched[1])
        rows_before += report.rows
    return whole
