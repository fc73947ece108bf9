"""The ZeroNVS diffusion model on diffusers + transformers (no vendored latent-diffusion code).

Importing this package is cheap; the public names below are imported on first use::

    from zeronvs_diffusion import load_model, sample_views, camera_embedding
    model = load_model("converted_dir")            # or load_model("zeronvs.ckpt", "zeronvs_config.yaml")
    views = sample_views(model, img01, cond_c2w, target_c2w, fov_deg=52.0, scale=1.0)

See docs/DIFFUSION.md.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load_model": "zeronvs_diffusion.model",
    "load_prior": "zeronvs_diffusion.sources",
    "load_configured_model": "zeronvs_diffusion.sources",
    "ZeroNVSModel": "zeronvs_diffusion.model",
    "camera_embedding": "zeronvs_diffusion.camera",
    "sample_views": "zeronvs_diffusion.sampling",
    "ddim_sample_latents": "zeronvs_diffusion.sampling",
    "convert": "zeronvs_diffusion.convert",
    "CCProjection": "zeronvs_diffusion.cc_projection",
    "ConditioningSpec": "zeronvs_diffusion.ldm_config",
    "SUPPORTED_CONDITIONING_MODES": "zeronvs_diffusion.ldm_config",
    "CheckpointError": "zeronvs_diffusion.errors",
    "UnsupportedConfigError": "zeronvs_diffusion.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'zeronvs_diffusion' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
