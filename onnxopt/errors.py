"""Errors a user can cause and fix; the CLI prints their one-line message and exits with code 2."""


class UserError(Exception):
    """An error the user can fix; its message is one line saying what is wrong and what to do."""


class PassError(Exception):
    """A pass broke the model (internal error); the message names the pass."""


class VerificationError(Exception):
    """The optimized model's outputs moved past the allowed budget; nothing was written. ``report``: the run's
    report (``"written": false``), for the CLI to write where ``--report`` asks and for library callers to read."""

    def __init__(self, message: str, report: dict | None = None):
        super().__init__(message)
        self.report = report
