"""Keyset pages of the prediction log, newest first: a page is "the rows before (created_at, id)"
or "the rows after it", read from the (created_at, id) indexes. Unlike OFFSET, the cost of a page
does not grow with its depth, and no total count is needed (it grows with the table)."""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass, field

from django.db.models import Q, QuerySet

from audit.models import Prediction


def cursor_encode(row: Prediction) -> str:
    raw = f"{row.created_at.astimezone(dt.UTC).isoformat(timespec='microseconds')}|{row.pk}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def cursor_decode(value: str | None) -> tuple[dt.datetime, int] | None:
    """The (created_at, id) of a cursor, or None for a missing or malformed one (the first page)."""
    if not value:
        return None
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
        stamp, pk = raw.split("|")
        created = dt.datetime.fromisoformat(stamp)
        pk = int(pk)
    except (ValueError, UnicodeDecodeError):
        return None
    if created.tzinfo is None or not 0 < pk < 2**63:
        return None
    return created, pk


@dataclass
class KeysetPage:
    rows: list[Prediction]
    newer: str | None = None  # cursor of the page before (newer rows), None on the first page
    older: str | None = None  # cursor of the page after (older rows), None on the last page
    first: bool = True
    extra: dict = field(default_factory=dict)

    def __iter__(self):
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def object_list(self) -> list[Prediction]:
        return self.rows


def _before(created: dt.datetime, pk: int) -> Q:
    # (created_at, id) < (created, pk), written so that `created_at <= created` bounds the index scan.
    return Q(created_at__lte=created) & (Q(created_at__lt=created) | Q(id__lt=pk))


def _after(created: dt.datetime, pk: int) -> Q:
    return Q(created_at__gte=created) & (Q(created_at__gt=created) | Q(id__gt=pk))


def keyset_page(
    queryset: QuerySet[Prediction], *, per_page: int, before: str | None = None, after: str | None = None
) -> KeysetPage:
    """One page of `queryset`, newest first: the rows older than the `before` cursor, or newer than
    the `after` cursor, or the newest rows when neither is given."""
    newest_first = queryset.order_by("-created_at", "-id")
    after_key = cursor_decode(after)
    before_key = None if after_key else cursor_decode(before)
    if after_key:
        rows = list(queryset.filter(_after(*after_key)).order_by("created_at", "id")[: per_page + 1])
        more_newer = len(rows) > per_page
        rows = rows[:per_page][::-1]
        has_older = True
        first = not more_newer
    else:
        scoped = newest_first.filter(_before(*before_key)) if before_key else newest_first
        rows = list(scoped[: per_page + 1])
        has_older = len(rows) > per_page
        rows = rows[:per_page]
        first = before_key is None
        more_newer = not first
    if not rows:
        return KeysetPage(rows=[], first=first)
    return KeysetPage(
        rows=rows,
        newer=cursor_encode(rows[0]) if more_newer else None,
        older=cursor_encode(rows[-1]) if has_older else None,
        first=first,
    )
