"""Where a diffusion model comes from: a small ``name:`` → loader table in front of the production loader.

``pretrained_model_name_or_path`` is a checkpoint, a converted folder or ``random`` (the production loader,
:func:`zeronvs_diffusion.model.load_model`, which knows nothing else), or ``NAME:ARGUMENT`` for a source in
:data:`MODEL_SOURCES` (``oracle:WORLD.yaml``: the weight-free oracle prior of :mod:`zeronvs_diffusion.oracle`).
Every source returns a :class:`zeronvs_diffusion.prior.DiffusionPrior` (the interface the guidance and the
samplers use). :func:`load_configured_model` is the one loader of a
:class:`~zeronvs_diffusion.model_config.DiffusionModelConfig` (the guidance's and nvs-system's model section).
"""

from __future__ import annotations

import importlib
import logging
from typing import Any, Dict, Optional, Union

import torch

from zeronvs_diffusion.prior import DiffusionPrior

logger = logging.getLogger(__name__)

# NAME → "module:function" taking (argument, config=, device=) and returning the model
MODEL_SOURCES: Dict[str, str] = {"oracle": "zeronvs_diffusion.oracle.model:load_oracle"}


def load_prior(
    path: str,
    config: Optional[str] = None,
    dtype: Union[None, str, torch.dtype] = None,
    device: Union[str, torch.device] = "cpu",
    trust_checkpoint: bool = False,
) -> DiffusionPrior:
    """The model of ``path``: a :data:`MODEL_SOURCES` entry for ``NAME:ARGUMENT``, else the production loader."""
    name, sep, argument = str(path).partition(":")
    if sep and name in MODEL_SOURCES:
        module, function = MODEL_SOURCES[name].split(":")
        return getattr(importlib.import_module(module), function)(argument, config=config, device=device)
    from zeronvs_diffusion.model import load_model

    return load_model(path, config=config, dtype=dtype, device=device, trust_checkpoint=trust_checkpoint)


def load_configured_model(cfg: Any) -> DiffusionPrior:
    """The model of a ``DiffusionModelConfig`` section, in fp32 on the CPU (callers move it), frozen, eval mode,
    its UNet compiled when ``compile_unet`` is set."""
    logger.info("loading the ZeroNVS diffusion model from %s", cfg.pretrained_model_name_or_path)
    model = load_prior(
        cfg.pretrained_model_name_or_path,
        config=cfg.pretrained_config,
        dtype=torch.float32,
        device="cpu",
        trust_checkpoint=cfg.trust_checkpoint,
    )
    model.eval().requires_grad_(False)
    if cfg.compile_unet is not None:
        model.compile_unet(cfg.compile_unet)
    return model
