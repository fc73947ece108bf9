"""Progress bars for long runs: Lightning's training/test loops (tqdm, with it/s and ETA) and plain loops.

Every run longer than a few seconds shows progress on stderr. ``--quiet`` (launch.py and the scripts) sets
``THREESTUDIO_QUIET=1``, which turns every bar off in this process and in the processes it starts; the test suite
sets it too (tests/conftest.py).
"""

from __future__ import annotations

import os
from typing import Any, Iterable, List, Optional

QUIET_ENV = "THREESTUDIO_QUIET"


def is_quiet() -> bool:
    return os.environ.get(QUIET_ENV, "") not in ("", "0")


def set_quiet(quiet: bool = True) -> None:
    """Turn progress bars off (or on again) here and in child processes."""
    if quiet:
        os.environ[QUIET_ENV] = "1"
    else:
        os.environ.pop(QUIET_ENV, None)


def progress(iterable: Optional[Iterable] = None, **kwargs: Any) -> Any:
    """``tqdm(iterable, **kwargs)`` on stderr, disabled when quiet."""
    from tqdm.auto import tqdm

    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=is_quiet(), **kwargs)


def lightning_progress_callbacks(enable_progress_bar: Optional[bool]) -> List[Any]:
    """The progress-bar callback for a Lightning Trainer: tqdm's (its ``it/s`` and ETA read well in a log file too;
    Lightning would pick its rich bar, which draws nothing until the end when stderr is not a terminal), or none
    when ``trainer.enable_progress_bar`` is false or the run is quiet."""
    if enable_progress_bar is False or is_quiet():
        return []
    from lightning.pytorch.callbacks import TQDMProgressBar

    return [TQDMProgressBar()]
