"""The one exception type for problems the user can fix (bad input, bad parameters, unreachable teacher)."""


class UserError(Exception):
    """A problem with the user's input or setup; the CLI prints it as one line and exits non-zero."""
