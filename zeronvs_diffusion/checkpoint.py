"""Reading latent-diffusion checkpoints (``zeronvs.ckpt``) lazily, memory-mapped, with clear errors."""

from __future__ import annotations

import logging
import os
from typing import Dict, Mapping

from torch import Tensor

from zeronvs_diffusion.errors import HOW_TO_GET_WEIGHTS, CheckpointError, missing_file_message
from zeronvs_diffusion.torch_load import UnsafeCheckpointError, load_torch_file

logger = logging.getLogger(__name__)

TRUST_HINT = ("system.guidance.trust_checkpoint=true (nvs-system: system.diffusion_model.trust_checkpoint=true; "
              "python -m zeronvs_diffusion.convert: --trust-checkpoint)")
CONVERT_COMMAND = "`python -m zeronvs_diffusion.convert --trust-checkpoint`"


def read_state_dict(path: str, trust: bool = False) -> Dict[str, Tensor]:
    """The ``state_dict`` of a Lightning / latent-diffusion checkpoint, memory-mapped where possible.

    Tensors stay on disk until read (``torch.load(mmap=True)``), so loading needs little more memory than
    the weights finally kept. The file is read with ``weights_only=True`` and an allow-list of harmless classes
    (:func:`zeronvs_diffusion.torch_load.load_torch_file`); a checkpoint that needs anything else is refused
    unless ``trust`` is True (``system.guidance.trust_checkpoint=true``, ``convert --trust-checkpoint``).

    Raises:
        CheckpointError: the file is missing, truncated, corrupt, holds no state dict, or needs full unpickling.
    """
    if not os.path.isfile(path) and not os.path.isdir(path):
        raise CheckpointError(missing_file_message("checkpoint", path))
    try:
        obj = load_torch_file(path, "checkpoint", trust=trust, trust_hint=TRUST_HINT, error=CheckpointError)
    except UnsafeCheckpointError as e:
        raise CheckpointError(f"{e}; or convert it once in a trusted session with {CONVERT_COMMAND}") from None
    state = obj.get("state_dict", obj) if isinstance(obj, Mapping) else None
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(
            f"{path} holds no latent-diffusion state_dict; expected zeronvs.ckpt ({HOW_TO_GET_WEIGHTS})"
        )
    return dict(state)
