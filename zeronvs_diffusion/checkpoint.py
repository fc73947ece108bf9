"""Reading latent-diffusion checkpoints (``zeronvs.ckpt``) lazily, memory-mapped, with clear errors."""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from typing import Dict, Mapping

import torch
from torch import Tensor

from zeronvs_diffusion.errors import HOW_TO_GET_WEIGHTS, CheckpointError

logger = logging.getLogger(__name__)


def _torch_load(path: str, weights_only: bool, mmap: bool):
    return torch.load(path, map_location="cpu", mmap=mmap, weights_only=weights_only)


def read_state_dict(path: str) -> Dict[str, Tensor]:
    """The ``state_dict`` of a Lightning / latent-diffusion checkpoint, memory-mapped where possible.

    Tensors stay on disk until read (``torch.load(mmap=True)``), so loading needs little more memory than
    the weights finally kept. Tries ``weights_only=True`` first; a Lightning pickle whose
    ``hyper_parameters`` need arbitrary classes is re-read with ``weights_only=False`` after a warning.

    Raises:
        CheckpointError: the file is missing, truncated, corrupt, or holds no state dict.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path!r}; {HOW_TO_GET_WEIGHTS}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); download it again")
    mmap = zipfile.is_zipfile(path)  # every torch.save since 1.6 writes a zip; older pickles cannot be mmapped
    if not mmap:
        with open(path, "rb") as f:
            head = f.read(2)
        if head[:1] == b"PK" or head[:1] not in (b"\x80",):
            raise CheckpointError(
                f"{path} is not a readable PyTorch checkpoint (truncated or corrupt zip archive?); download it again"
            )
    try:
        try:
            obj = _torch_load(path, weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as e:
            logger.warning(
                "%s needs weights_only=False to unpickle (%s); loading it with full unpickling — only do this "
                "for checkpoints you trust, or convert it once with `python -m zeronvs_diffusion.convert`",
                path,
                str(e).splitlines()[0],
            )
            obj = _torch_load(path, weights_only=False, mmap=mmap)
    except CheckpointError:
        raise
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"cannot read checkpoint {path} (truncated or corrupt? {first}); download it again"
        ) from None
    state = obj.get("state_dict", obj) if isinstance(obj, Mapping) else None
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(
            f"{path} holds no latent-diffusion state_dict; expected zeronvs.ckpt ({HOW_TO_GET_WEIGHTS})"
        )
    return dict(state)
