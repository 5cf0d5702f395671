"""The supervisor package's exceptions: one base, a few categories.

A script's failure is never an exception here; it is an outcome recorded as data.
"""


class SupervisorError(Exception):
    """Base of every error raised by the supervisor package."""


class ConfigError(SupervisorError):
    """The configuration is invalid; the message names the file, the key and what was expected."""


class StartupError(SupervisorError):
    """The supervisor cannot start (endpoint in use, unreadable script, workers never came up)."""
