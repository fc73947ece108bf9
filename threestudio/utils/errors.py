"""The exception types for bad user input and for a diverged training.

``launch.py`` (and the other command-line entry points) turn a :class:`UserError` into a one-line
message on stderr and exit code 2, with the traceback only under ``--verbose``. ``UserError`` and
``ConfigError`` are defined in :mod:`zeronvs_diffusion.errors` (the diffusion package stands alone) and
re-exported here, so one ``except UserError`` catches the errors of both packages.
"""

from zeronvs_diffusion.errors import ConfigError, UserError

__all__ = ["ConfigError", "TrainingDiverged", "UserError"]


class TrainingDiverged(RuntimeError):
    """The loss stayed NaN/inf for too many steps in a row; the last good checkpoint is kept."""
