"""The supervisor package's exceptions: one base, a few categories.

A script's failure is never an exception here; it is an outcome recorded as data.
"""


class SupervisorError(Exception):
    """Base of every error raised by the supervisor package."""


class ConfigError(SupervisorError):
    """The configuration is invalid; the message names the file, the key and what was expected."""


class StartupError(SupervisorError):
    """The supervisor cannot start (endpoint in use, unreadable script, workers never came up)."""


class CommandRefused(SupervisorError):
    """A command cannot do what was asked (unknown actor, no such version, file mode, ...);
    ``code`` is a stable word such as ``unknown_actor``, as in the supervisor's error replies."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
