"""Errors that the command line reports as one clear line (no traceback)."""


class BiglmError(Exception):
    """Base class for user-facing errors: bad input, bad config, bad files."""


class ConfigError(BiglmError, ValueError):
    """A configuration field has a value outside what is allowed."""


def check(condition: bool, message: str, error: type[BiglmError] = ConfigError) -> None:
    """Raise ``error(message)`` unless ``condition`` holds."""
    if not condition:
        raise error(message)
