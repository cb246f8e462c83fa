"""The one exception type for user-facing errors.

CLIs catch :class:`MpcgenError`, print its message as one line and exit with status 2; anything else is a bug and
keeps its traceback.
"""


class MpcgenError(Exception):
    """An error caused by user input (a bad flag, a missing file, an impossible setting), not by a bug."""
