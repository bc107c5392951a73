"""The one exception type a user is meant to read.

A `UserError` carries a single line that says what was wrong and how to fix it. The command line
prints it as ``error: <line>`` and exits with status 2; every other exception is a bug and keeps
its traceback.
"""


class UserError(Exception):
    """Bad input or environment, reported as one line before (or instead of) any work."""

    exit_code = 2

    def __init__(self, message: str):
        # One line by contract: a multi-line message would be cut by log viewers and DVC output.
        super().__init__(" ".join(str(message).split()))
