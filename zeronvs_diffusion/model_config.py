"""The config of the diffusion model as the pipeline uses it, and its one dtype rule.

The SDS guidance's ``system.guidance`` (``zeronvs-guidance``, which adds its SDS keys) and the diffusion-only NVS
system's ``system.diffusion_model`` (``nvs-system``) are each a :class:`DiffusionModelConfig`: where the weights come
from, the scene scale of the camera embedding, the classifier-free guidance scale, the weights' precision and
an optional ``torch.compile`` of the UNet. :func:`check_model_config` validates it without loading anything;
:func:`resolve_weights_dtype` picks the weights' dtype for a device.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

import torch

from zeronvs_diffusion.errors import ConfigError, UserError

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_CHOICES = ("auto", *DTYPES)
# torch.compile modes accepted for the UNet (``compile_unet``)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class DiffusionModelConfig:
    """The diffusion model's keys (``system.guidance.*``; nvs-system: ``system.diffusion_model.*``)."""

    # ldm .ckpt (with pretrained_config), a folder written by zeronvs_diffusion.convert, or "random"
    pretrained_model_name_or_path: str = "zeronvs.ckpt"
    pretrained_config: Optional[str] = None  # the latent-diffusion YAML; optional for a converted folder
    # allow full unpickling of a .ckpt that holds more than tensors: it runs any code the file holds
    trust_checkpoint: bool = False
    precomputed_scale: Optional[float] = None  # scene scale of the camera embedding; required (0.7 in the paper)
    guidance_scale: float = 5.0  # classifier-free guidance
    half_precision_weights: bool = False  # with dtype auto: bf16 (fp16 where the GPU lacks bf16) on CUDA
    dtype: str = "auto"  # auto | fp32 | fp16 | bf16 (CUDA only; the CPU always computes in fp32)
    # null, or a torch.compile mode for the UNet ("reduce-overhead": CUDA-graph replay on GPUs)
    compile_unet: Optional[str] = None


def check_precomputed_scale(scale: Optional[float], section: str = "system.guidance") -> float:
    """The scene scale of the camera embedding (``<section>.precomputed_scale``); errors say what to set."""
    if scale is None:
        raise UserError(
            f"{section}.precomputed_scale is null, but there is no depth model to estimate the scene "
            "scale here; set it, e.g. 0.7 as in the paper"
        )
    if scale <= 0:
        raise ConfigError(f"{section}.precomputed_scale must be positive, got {scale}")
    return float(scale)


def check_compile_mode(mode: Optional[str], section: str = "system.guidance") -> None:
    """``<section>.compile_unet``: null or one of :data:`COMPILE_MODES`."""
    if mode is not None and mode not in COMPILE_MODES:
        raise ConfigError(f"{section}.compile_unet is {mode!r}; valid: null, {', '.join(COMPILE_MODES)}")


def check_dtype(dtype: str, section: str = "system.guidance") -> None:
    """``<section>.dtype``: one of :data:`DTYPE_CHOICES`."""
    if dtype not in DTYPE_CHOICES:
        raise ConfigError(f"{section}.dtype is {dtype!r}; valid: {', '.join(DTYPE_CHOICES)}")


def check_model_config(cfg: Any, section: str = "system.guidance") -> None:
    """Validate a parsed :class:`DiffusionModelConfig` (scene scale, dtype, compile mode) found at ``section``
    (named in the errors); loads nothing."""
    check_precomputed_scale(cfg.precomputed_scale, section)
    check_dtype(cfg.dtype, section)
    check_compile_mode(cfg.compile_unet, section)


def resolve_weights_dtype(dtype: str, half_precision_weights: bool, device: torch.device) -> torch.dtype:
    """The dtype of the diffusion weights on ``device``.

    CPU (and any non-CUDA device) always computes in fp32. On CUDA an explicit ``dtype`` wins; ``"auto"`` gives
    bf16 (fp16 where the GPU lacks bf16) when ``half_precision_weights`` is set, else fp32.
    """
    check_dtype(dtype)
    if device.type != "cuda":
        if dtype not in ("auto", "fp32") or half_precision_weights:
            logger.info("diffusion weights stay fp32 on %s (half precision is used on CUDA only)", device)
        return torch.float32
    if dtype != "auto":
        return DTYPES[dtype]
    if not half_precision_weights:
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
