"""Lightning's CSV and TensorBoard loggers for a trial, whose write failures name the file.

fsspec (under Lightning's CSV logger) raises a full disk as a bare ``OSError`` without a file name; these
subclasses raise it again naming the file, so the run's one-line error says what could not be written.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger


@contextlib.contextmanager
def naming_failures(path: str) -> Iterator[None]:
    """Re-raise an ``OSError`` without a file name as one naming ``path``."""
    try:
        yield
    except OSError as e:
        if e.filename is not None or e.errno is None:
            raise
        raise OSError(e.errno, e.strerror or os.strerror(e.errno), path) from e


class TrialCSVLogger(CSVLogger):
    def save(self) -> None:
        with naming_failures(os.path.join(self.log_dir, "metrics.csv")):
            super().save()

    def log_metrics(self, *args: Any, **kwargs: Any) -> None:
        with naming_failures(os.path.join(self.log_dir, "metrics.csv")):
            super().log_metrics(*args, **kwargs)


class TrialTensorBoardLogger(TensorBoardLogger):
    def save(self) -> None:
        with naming_failures(self.log_dir):
            super().save()

    def log_metrics(self, *args: Any, **kwargs: Any) -> None:
        with naming_failures(self.log_dir):
            super().log_metrics(*args, **kwargs)
