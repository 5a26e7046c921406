"""The one error a user's mistake raises before anything runs."""


class ConfigError(ValueError):
    """A user mistake in flags or the settings file: one sentence that says what to do."""


class EngineGone(RuntimeError):
    """The engine a run needs (a cluster's scheduler) cannot be reached or went away
    during the run: one sentence that says so; the run exits 1."""
