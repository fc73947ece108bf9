"""Atomic checkpoint writes: a kill during saving never leaves a corrupt ``last.ckpt``."""

from __future__ import annotations

import os
from typing import Any, Optional

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from threestudio.utils.io import atomic_path


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning CheckpointIO plugin that writes every checkpoint with :func:`atomic_torch_save`."""

    def save_checkpoint(self, checkpoint: dict, path: Any, storage_options: Optional[Any] = None) -> None:
        atomic_torch_save(checkpoint, str(path))
