"""`Idempotency-Key` for prediction requests: a client that lost a response retries with the same
key and gets the prediction the first request made, never a second row.

The key row (audit.models.IdempotencyKey, unique per user and key) is inserted by the chain's
appender in the same transaction as the prediction row (`key_bind_pending`, under the chain
lock), so a worker killed at any point leaves both or neither: a retry after a lost response finds
the key, a retry after a crash before the commit analyses again. Two requests with one key at once
both analyse; the second to reach the lock finds the key taken, its row rolls back, and it answers
with the first one's prediction.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextvars import ContextVar

from django.db import IntegrityError, transaction

from audit.models import IdempotencyKey, Prediction
from common.errors import Refused

KEY_MAX_CHARS = 255
KEY_PATTERN = r"^[\x21-\x7e][\x20-\x7e]{0,254}$"  # visible ASCII (a UUID, a hash, ...), no surrounding space
_KEY_RE = re.compile(KEY_PATTERN)

# (user id, key) of the request whose row is being written on this thread, if it sent a key.
_pending: ContextVar[tuple[int, str] | None] = ContextVar("lungsite_idempotency_key", default=None)


class InvalidKey(ValueError):
    """The header's value is not a key this service accepts."""


class KeyReused(Refused):
    """The key already names a prediction of another image (422)."""

    code = "idempotency_key_reused"
    status = 422

    def __init__(self, prediction: Prediction):
        super().__init__(
            f"This Idempotency-Key was used for prediction {prediction.pk} of another image; "
            "use a new key for a new image."
        )
        self.prediction = prediction


class _KeyTaken(Exception):
    """Raised inside the appender's transaction: another request with the key committed first."""


def key_checked(value: str) -> str:
    """The header's value if it is a usable key (1 to 255 visible ASCII characters); InvalidKey else."""
    if not _KEY_RE.fullmatch(value):
        raise InvalidKey(
            f"The Idempotency-Key header must be 1 to {KEY_MAX_CHARS} visible ASCII characters "
            "(a UUID, for example)."
        )
    return value


def _recorded(*, user, key: str) -> Prediction | None:
    found = IdempotencyKey.objects.filter(user=user, key=key).select_related("prediction").first()
    return found.prediction if found else None


def prediction_once(
    *, user, key: str | None, image_sha256: str, create: Callable[[], Prediction]
) -> tuple[Prediction, bool]:
    """(the prediction, whether it was made before) for a request with `key` (None: no key, just
    `create()`). `image_sha256` is the upload's sha256: a key already used for another image
    raises KeyReused."""
    if key is None:
        return create(), False
    earlier = _recorded(user=user, key=key)
    if earlier is None:
        token = _pending.set((user.pk, key))
        try:
            made = create()
        except Exception:
            # _KeyTaken, or whatever a caller made of it: answered with the first request's row.
            earlier = _recorded(user=user, key=key)
            if earlier is None:
                raise
        else:
            if not IdempotencyKey.objects.filter(user=user, key=key).exists():
                # The row was written where this thread's key could not follow (another thread):
                # record the key now (a crash in between could let a retry analyse again).
                try:
                    with transaction.atomic():
                        IdempotencyKey.objects.create(user=user, key=key, prediction=made)
                except IntegrityError:
                    earlier = _recorded(user=user, key=key)
            if earlier is None:
                return made, False
        finally:
            _pending.reset(token)
    if earlier.image_sha256 != image_sha256:
        raise KeyReused(earlier)
    return earlier, True


def key_bind_pending(row: Prediction, *, using: str) -> None:
    """Called by the chain's appender inside its transaction, after inserting `row`: records the
    key of the request being served on this thread, if any. Raises _KeyTaken (rolling the row
    back) when another request with the same key committed first."""
    pending = _pending.get()
    if pending is None:
        return
    user_id, key = pending
    _pending.set(None)  # one row per request: a second row on this thread is not this key's
    keys = IdempotencyKey.objects.using(using)
    if keys.filter(user_id=user_id, key=key).exists():  # the chain lock is held: no race
        raise _KeyTaken(key)
    keys.create(user_id=user_id, key=key, prediction=row)
