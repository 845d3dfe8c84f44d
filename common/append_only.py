"""The error every append-only log raises (the prediction log in audit, the activation history in
registry). It lives here, below both apps, so that neither has to import the other for it."""


class AppendOnlyError(Exception):
    """Raised when code tries to change or remove a row of an append-only log."""
