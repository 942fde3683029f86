"""User-facing errors: one clear line, no traceback, and an exit code from the CLI."""


class UserError(ValueError):
    """A mistake in what the user asked for (bad config, missing data, unreadable file).

    The message must name the problem *and* the fix; the CLI prints it on one line and exits with `exit_code`.
    """
    exit_code = 2


class NonFinite(UserError):
    """A computation produced NaN or infinity (e.g. a thinking step with too large a step size)."""


class Diverged(UserError):
    """Training diverged (a non-finite loss or gradient). Exit code 3; the last good checkpoint is kept."""
    exit_code = 3


class Note(UserWarning):
    """Something the user should know that is not an error (the CLI prints it as one `ebt: note:` line)."""
