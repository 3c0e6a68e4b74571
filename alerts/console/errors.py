"""The console's own refusal, carried to an HTTP status by one exception handler."""

from __future__ import annotations


class HttpError(Exception):
    """Refused: ``status`` is the HTTP status, ``message`` what the caller is told."""

    def __init__(self, status: int, message: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after_s = retry_after_s
