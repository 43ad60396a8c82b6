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
