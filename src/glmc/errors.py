"""Errors the user can act on.

Every `GlmcError` reaches the command line as one line and exit code 2, without a
traceback: they are about the user's input, not bugs in glmc.
"""


class GlmcError(Exception):
    """Bad input or environment, reported to the user as one line."""


class DataError(GlmcError):
    """A dataset is missing, incomplete or malformed."""


class ConfigError(GlmcError):
    """A configuration value, preset or name is invalid."""


class RunInterrupted(Exception):
    """SIGINT or SIGTERM stopped a run after its checkpoint was saved; exits 128 + signal."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
