"""Bad input and unavailable sources as pages that say what is wrong, never a traceback.

Why exceptions: a lookup deep in a page (a suite, a system, a case, a model) can refuse the
request in one line, and the app turns it into a page with the right status: 404 naming the
unknown thing and what exists, 400 for a filter value that does not exist, 503 when the
warehouse is held by a writer or the object store does not answer.
"""

from __future__ import annotations


class ViewerError(Exception):
    """A page that cannot be shown; ``status`` and ``message`` are what the person sees."""

    status = 500
    title = "Something went wrong"

    def __init__(self, message: str, nav: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.nav = nav or []


class NotFound(ViewerError):
    status = 404
    title = "Not found"


class BadRequest(ViewerError):
    status = 400
    title = "Bad request"
