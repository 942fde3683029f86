"""User-facing errors: one clear line, no traceback, exit code 2 from the CLI."""


class UserError(ValueError):
    """A mistake in what the user asked for (bad config, missing data, unreadable file).

    The message must name the problem *and* the fix; the CLI prints it on one line and exits with 2.
    """
