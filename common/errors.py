"""The one error type of lungsite, with no Django in it so that every layer (the engine included)
can raise it where the problem is found.

A LungsiteError carries a stable `code`, the HTTP `status` that says it, and a message a person can
act on. It is mapped to an output once per kind of output: JSON (common.api_errors.exception_handler),
pages (web.views), job rows (jobs.services), worklist reasons and DICOM statuses (pacs). Subclasses
name the kinds that some code must tell apart (an unavailable store is retried, a refused input is
not); they add no fields.
"""

from __future__ import annotations


class LungsiteError(Exception):
    code = "error"
    status = 500
    retry_after: int | None = None  # seconds, when trying again later can help (Retry-After)

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    @property
    def message(self) -> str:
        return str(self)

    def as_dict(self) -> dict:
        """{"code", "message"}: the error as JSON bodies and pages show it."""
        return {"code": self.code, "message": str(self)}

    @property
    def retryable(self) -> bool:
        """True for outages (5xx): the same input may succeed later."""
        return self.status >= 500

    def __reduce__(self):  # crosses process boundaries (the decoding child, Celery results)
        return _rebuild, (type(self), str(self), self.code, self.status)


def _rebuild(cls, message: str, code: str, status: int) -> LungsiteError:
    return cls(message, code=code, status=status)


class Refused(LungsiteError):
    """The input cannot be analysed as sent (4xx): nothing is written, sending it again won't help."""

    code = "invalid"
    status = 400


class Unavailable(LungsiteError):
    """Something the service needs is down or missing (503): nothing is written; try again later."""

    code = "unavailable"
    status = 503


class StorageUnavailable(Unavailable):
    """A storage (images or weights) refused a read or a write."""

    code = "storage_unavailable"


class DatabaseUnavailable(Unavailable):
    """The database refused a write (the prediction log, a job row)."""

    code = "database_unavailable"


class NoActiveModel(Unavailable):
    """No version is active, or none that is or was active can be served."""

    code = "no_model"


class NonFiniteOutput(Unavailable):
    """A version gave scores or maps that are not finite numbers: nothing it says can be trusted,
    and it is withdrawn from serving."""

    code = "model_output_not_finite"
