"""The error every layer raises for an input that cannot work (exit code 2 in the CLIs), and how its messages show
a value."""

from typing import Any


class ConfigError(ValueError):
    """A config key has a value that cannot work; the message says which and what is allowed."""


class OutputError(RuntimeError):
    """An output could not be written (a full disk, a file-size limit); the message names it and what is kept."""


def shown(value: Any, limit: int = 60) -> str:
    """repr(value), cut short: a message names a value, it does not reprint a document."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + " ...)"
