"""User-facing errors: the CLI prints them as one line and exits non-zero, without a traceback."""


class UserError(Exception):
    """A problem with the user's input or setup (bad file, mismatched run, unknown model)."""


class DataError(UserError):
    """A record that cannot be read; the message names the file, line and field."""
