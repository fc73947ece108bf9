"""Checkpoint files of a trial: atomic writes, safe reads, no checkpoint of diverged weights.

- :class:`AtomicCheckpointIO`: a kill during saving never leaves a corrupt ``last.ckpt``; a full disk is a
  one-line error naming the file; reading never runs code from the file (:mod:`zeronvs_diffusion.torch_load`).
- :class:`FiniteModelCheckpoint`: Lightning's ModelCheckpoint that writes nothing while the system is in a
  non-finite streak, and always overwrites ``last.ckpt`` (no ``last-v1.ckpt`` in copied or moved trials).
"""

from __future__ import annotations

import errno
import glob
import logging
import os
import shutil
from typing import Any, Dict, List, Optional

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from threestudio.utils.errors import UserError
from threestudio.utils.io import atomic_path

logger = logging.getLogger(__name__)

# atomic_path's temporary names for a .ckpt: ".<base>.<random>.tmp.ckpt"
_TEMPORARY_CKPT_PATTERN = ".*.tmp.ckpt"


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a nested dict/list (the size a checkpoint needs, roughly)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


class DiskFullError(UserError):
    """A checkpoint could not be written for lack of space; ``filename`` is the file."""

    def __init__(self, filename: str, message: str) -> None:
        super().__init__(message)
        self.filename = filename


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A full disk raises a one-line UserError naming ``path`` and the space needed; ``path`` stays as it was.
    """
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        folder = os.path.dirname(os.path.abspath(path))
        free = shutil.disk_usage(folder).free
        raise DiskFullError(
            path,
            f"no space left on the device writing {path} (needs about {_tensor_bytes(obj) / 2**20:.1f} MiB, "
            f"{free / 2**20:.1f} MiB free); the previous {os.path.basename(path)} is intact — free space and resume"
        ) from None


def remove_stale_temporaries(ckpt_dir: str) -> int:
    """Delete temporary files of interrupted checkpoint writes in ``ckpt_dir``; returns how many.

    Only call it while holding the trial's lock (another run's write in progress would look the same).
    """
    stale = glob.glob(os.path.join(glob.escape(ckpt_dir), _TEMPORARY_CKPT_PATTERN))
    for path in stale:
        os.remove(path)
    if stale:
        logger.info("removed %d temporary file(s) of interrupted checkpoint writes in %s", len(stale), ckpt_dir)
    return len(stale)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning CheckpointIO plugin: atomic writes; reads without unpickling code.

    ``preloaded``: checkpoints already read (and checked) by the runner, by path, so they are not read twice.
    """

    def __init__(self, preloaded: Optional[Dict[str, Dict[str, Any]]] = None) -> None:
        super().__init__()
        self._preloaded = {os.path.abspath(k): v for k, v in (preloaded or {}).items()}

    def save_checkpoint(self, checkpoint: dict, path: Any, storage_options: Optional[Any] = None) -> None:
        atomic_torch_save(checkpoint, str(path))

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: Optional[bool] = None) -> dict:
        from zeronvs_diffusion.torch_load import load_torch_file

        cached = self._preloaded.pop(os.path.abspath(str(path)), None)
        return cached if cached is not None else load_torch_file(str(path), "checkpoint", mmap=False)


def _backup_path(path: str) -> str:
    base, ext = os.path.splitext(os.path.basename(path))
    return os.path.join(os.path.dirname(path), f".{base}.previous.tmp{ext}")  # matches _TEMPORARY_CKPT_PATTERN


class FiniteModelCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that never keeps a checkpoint of diverged weights.

    - No save while ``pl_module.weights_are_finite()`` is False (a non-finite streak, or NaN/inf parameters).
    - A checkpoint is confirmed only by the next step's finite loss: until then the file it replaced is kept as
      a hidden backup, and when training diverges right after the save, the backup is put back (or, for a first
      save, the unconfirmed file is removed). So the checkpoints hold the weights from before the streak's cause.
    - The version counter is off: ``last.ckpt`` is always overwritten, also in a copied or moved trial.

    ``saved_step`` is the global step of the checkpoint kept (None when there is none).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("enable_version_counter", False)
        super().__init__(*args, **kwargs)
        self.saved_step: Optional[int] = None
        self._unconfirmed: List[str] = []  # files saved at saved_step, not yet confirmed by a finite step

    @staticmethod
    def _weights_bad(trainer: Any) -> bool:
        module = trainer.lightning_module
        check = getattr(module, "weights_are_finite", None)
        if check is None or check():
            return False
        logger.warning("step %d: no checkpoint written (the weights are not finite)", trainer.global_step)
        return True

    # The two gates Lightning consults before every save (train batch/epoch end, validation end, exception).
    def _should_skip_saving_checkpoint(self, trainer: Any) -> bool:
        return super()._should_skip_saving_checkpoint(trainer) or self._weights_bad(trainer)

    def _should_save_on_exception(self, trainer: Any) -> bool:
        return super()._should_save_on_exception(trainer) and not self._weights_bad(trainer)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any, **kwargs: Any) -> None:
        if getattr(pl_module, "nonfinite_streak", 0) == 0 and self.saved_step != trainer.global_step:
            self._confirm()  # this step's loss was finite: the checkpoint of the previous step is good
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if not self._weights_bad(trainer):
            super().on_train_end(trainer, pl_module)
        if getattr(pl_module, "nonfinite_streak", 0) == 0:
            self._confirm()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        if isinstance(exception, SIGTERMException):
            self._save_at_signal(trainer)
        started = getattr(pl_module, "nonfinite_streak_start", None)
        if started is not None and self.saved_step == started:
            self._roll_back()

    def _save_at_signal(self, trainer: Any) -> None:
        """Training stopped by a signal (threestudio.utils.stop_signals) at a step boundary: write that step's
        checkpoints as a scheduled save would, so that ``resume=`` continues from it."""
        fitting = trainer.state.fn == "fit" and not trainer.sanity_checking
        if not fitting or trainer.global_step == 0 or self._last_global_step_saved == trainer.global_step:
            return
        if self._weights_bad(trainer):
            return
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)
        logger.info("step %d: checkpoint written at the signal", trainer.global_step)

    def _save_checkpoint(self, trainer: Any, filepath: str) -> None:
        if self.saved_step != trainer.global_step:
            self._confirm()
        owner = trainer.is_global_zero  # only rank 0 writes checkpoint files; the others only keep the step
        if owner and os.path.isfile(filepath):
            backup = _backup_path(filepath)
            if os.path.exists(backup):
                os.remove(backup)
            try:
                os.link(filepath, backup)  # the old file survives the atomic replace (no copy, no extra space yet)
            except OSError:  # a file system without hard links
                shutil.copyfile(filepath, backup)
        super()._save_checkpoint(trainer, filepath)
        self.saved_step = int(trainer.global_step)
        if owner:
            self._unconfirmed.append(filepath)

    def _confirm(self) -> None:
        for path in self._unconfirmed:
            if os.path.exists(_backup_path(path)):
                os.remove(_backup_path(path))
        self._unconfirmed = []

    def _roll_back(self) -> None:
        """Put back what the checkpoints saved right before a divergence replaced (remove first saves)."""
        from zeronvs_diffusion.torch_load import load_torch_file

        logger.warning("the checkpoint of step %s was written right before the divergence: not kept", self.saved_step)
        self.saved_step = None
        for path in self._unconfirmed:
            if os.path.exists(_backup_path(path)):
                os.replace(_backup_path(path), path)
                self.saved_step = int(load_torch_file(path, mmap=True).get("global_step", 0))
            elif os.path.exists(path):
                os.remove(path)
        self._unconfirmed = []

    def kept_checkpoint(self) -> str:
        """A sentence saying which step the trial's checkpoints hold, for the divergence message."""
        if self.saved_step is None:
            return "no checkpoint of this run was kept (none was written before the divergence)"
        path = self.last_model_path or self.best_model_path
        return f"the last checkpoint, {path}, holds step {self.saved_step} (from before the divergence)"
