"""One base class for every error a user can cause and fix: the CLI and API show its message
as-is (naming file, row, field or parameter) instead of a traceback."""


class UserError(Exception):
    """An error whose message tells the user what is wrong and what to do."""
