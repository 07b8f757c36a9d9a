"""The one error type of configuration problems."""


class ConfigError(ValueError):
    """A configuration value or combination that cannot run; the message names the keys."""
