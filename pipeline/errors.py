"""The one error a user's mistake raises before anything runs."""


class ConfigError(ValueError):
    """A user mistake in flags or the settings file: one sentence that says what to do."""
