"""Errors that the command line reports as one clear line (no traceback)."""


class BiglmError(Exception):
    """Base class for user-facing errors: bad input, bad config, bad files. The message is one line whatever it
    quotes: line breaks in it (a value from a file or a request) are shown escaped."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(a.replace("\r", "\\r").replace("\n", "\\n") if isinstance(a, str) else a for a in args))


class ConfigError(BiglmError, ValueError):
    """A configuration field has a value outside what is allowed."""


def check(condition: bool, message: str, error: type[BiglmError] = ConfigError) -> None:
    """Raise ``error(message)`` unless ``condition`` holds."""
    if not condition:
        raise error(message)
