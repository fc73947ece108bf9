"""The one exception type for bad user input.

``launch.py`` (and the other command-line entry points) turn a :class:`UserError` into a one-line
message on stderr and exit code 2, with the traceback only under ``--verbose``.
"""


class UserError(Exception):
    """Bad input from the user: a missing file, an unknown config key, a wrong value.

    The message must say what is wrong and what to do about it, on one line.
    """


class ConfigError(UserError):
    """A config key is unknown, mistyped or has a value of the wrong type."""


class TrainingDiverged(RuntimeError):
    """The loss stayed NaN/inf for too many steps in a row; the last good checkpoint is kept."""
