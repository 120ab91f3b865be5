"""Errors a user can act on.

Anything raised as a :class:`UserError` is reported by the command-line entry
points as one line (``error: ...``) without a stack trace, because its message
already says what to change.
"""


class UserError(Exception):
    """Base class: bad input that the user can fix."""


class ConfigError(UserError, ValueError):
    """A config field has a value that cannot work; the message names the field."""


class DataError(UserError, ValueError):
    """A corpus or data file is missing, empty, too short or malformed."""


class CheckpointError(UserError, ValueError):
    """A checkpoint or workdir does not match the run that is asked for."""
