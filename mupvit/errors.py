"""The error every layer raises for an input that cannot work (exit code 2 in the CLIs)."""


class ConfigError(ValueError):
    """A config key has a value that cannot work; the message says which and what is allowed."""
