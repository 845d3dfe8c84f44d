"""Fair decoding: heavy files queue behind each other instead of in front of everyone else.

Most X-rays decode in tens of milliseconds; a few legitimate files (a 60-megapixel lossless JPEG
2000 of tens of MB) take seconds of a core each. Without a bound, four of those at once hold every
web thread and both cores, and every other user waits. So an upload of at least
LUNGSITE_HEAVY_DECODE_MB bytes (compressed size is what predicts a slow decode: PNG and JPEG chest
films are 0.1-3 MB, uncompressed DICOM decodes at copy speed) needs a slot:

- per user: at most LUNGSITE_HEAVY_DECODES_PER_USER heavy decodes in flight; one more is refused at
  once with 429 `decode_busy` and Retry-After (waiting would hold a web thread);
- overall: at most LUNGSITE_HEAVY_DECODES heavy decodes in flight; one more waits for a slot up to
  LUNGSITE_DECODE_QUEUE_S seconds, then is refused with 503 `decode_busy` and Retry-After.

The counters live in Django's cache: shared by every worker and host with LUNGSITE_CACHE_URL
(Redis), per process otherwise. They expire on their own, so a worker killed mid-decode cannot hold
a slot for ever.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from django.conf import settings
from django.core.cache import cache

from common.errors import LungsiteError

POLL_S = 0.1


class DecodeBusy(LungsiteError):
    code = "decode_busy"

    def __init__(self, message: str, *, status: int, retry_after: int) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after

    def __reduce__(self):
        return DecodeBusy, (str(self),), {"status": self.status, "retry_after": self.retry_after}


def _ttl() -> int:
    # Longer than any decode may run (the child is killed at the timeout), so a slot held by a
    # process that died comes back.
    return int(settings.LUNGSITE_DECODE_TIMEOUT_S) * 3 + 5


def _take(key: str, limit: int) -> bool:
    cache.add(key, 0, timeout=_ttl())
    try:
        taken = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.add(key, 1, timeout=_ttl())
        taken = 1
    if taken > limit:
        _give(key)
        return False
    cache.touch(key, _ttl())
    return True


def _give(key: str) -> None:
    with contextlib.suppress(ValueError):
        if cache.decr(key) < 0:
            cache.set(key, 0, timeout=_ttl())


@contextlib.contextmanager
def decode_slot(*, size: int, user_key: str) -> Iterator[None]:
    """Holds the slots a decode of `size` bytes needs for `user_key` (a user's id, or a door's name
    for requests without a user). Raises DecodeBusy (429 for the user's own limit, 503 overall)."""
    if size < settings.LUNGSITE_HEAVY_DECODE_MB * 1024 * 1024:
        yield
        return
    retry_after = int(settings.LUNGSITE_DECODE_TIMEOUT_S)
    mine = f"lungsite:heavy-decodes:user:{user_key}"
    if not _take(mine, settings.LUNGSITE_HEAVY_DECODES_PER_USER):
        raise DecodeBusy(
            f"You already have {settings.LUNGSITE_HEAVY_DECODES_PER_USER} large image(s) being decoded; "
            "send the next one when they are done.",
            status=429,
            retry_after=retry_after,
        )
    try:
        everyone = "lungsite:heavy-decodes:all"
        deadline = time.monotonic() + settings.LUNGSITE_DECODE_QUEUE_S
        while not _take(everyone, settings.LUNGSITE_HEAVY_DECODES):
            if time.monotonic() >= deadline:
                raise DecodeBusy(
                    "Other large images are being decoded; try again shortly.",
                    status=503,
                    retry_after=retry_after,
                )
            time.sleep(POLL_S)
        try:
            yield
        finally:
            _give(everyone)
    finally:
        _give(mine)
