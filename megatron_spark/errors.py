"""Errors a user can cause (bad config, bad data, bad checkpoint, bad arguments).

The CLI prints ``str(error)`` as one line on stderr and exits with status 2; anything else is a
bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input, worded so that the user can fix it."""

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))


class Stopped(Exception):
    """A run ended early on request (a signal), its state saved: the CLI prints ``str(error)``
    as one line and exits with ``exit_status``."""

    def __init__(self, message: str, exit_status: int):
        super().__init__(message)
        self.exit_status = exit_status
