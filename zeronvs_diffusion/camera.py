"""Camera embeddings that condition the ZeroNVS UNet (through ``cc_projection``).

Cameras are OpenGL camera-to-world matrices (x right, y up, camera looks down −z) in a z-up world, as
everywhere in this project.
"""

from __future__ import annotations

import math
from typing import Union

import torch
from torch import Tensor

from zeronvs_diffusion.ldm_config import SUPPORTED_CONDITIONING_MODES, check_conditioning_mode

Number = Union[float, Tensor]

# 7dof_quantile_scale squashes the scaled translation t as SQUASH_AMPLITUDE * tanh(t / SQUASH_RANGE)
SQUASH_RANGE = 10.0
SQUASH_AMPLITUDE = 0.5 * SQUASH_RANGE
MIN_SCALE = 1e-2
UNSCALED_CLIP = 20.0


def _batch(x: Number, batch_size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    t = torch.as_tensor(x, device=device, dtype=dtype).reshape(-1)
    return t.expand(batch_size) if t.numel() == 1 else t


def _as_c2w_batch(c2w: Tensor) -> Tensor:
    if c2w.dim() == 2:
        c2w = c2w[None]
    if c2w.shape[-2:] != (4, 4):
        raise ValueError(f"camera-to-world matrices must be (B,4,4), got {tuple(c2w.shape)}")
    return c2w


def relative_pose(cond_c2w: Tensor, target_c2w: Tensor) -> Tensor:
    """inv(cond) @ target (B,4,4): the target camera expressed in the condition camera's frame.

    A singular ``cond`` raises on the CPU; on CUDA the check is skipped (``linalg.inv`` would wait for the GPU).
    """
    cond, target = torch.broadcast_tensors(_as_c2w_batch(cond_c2w), _as_c2w_batch(target_c2w))
    inverse = torch.linalg.inv_ex(cond.double(), check_errors=cond.device.type == "cpu").inverse
    return inverse @ target.double()


def _spherical(c2w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Polar angle from +z (rad), azimuth atan2(y, x) (rad) and radius of the camera centres (B,)."""
    t = c2w[:, :3, 3]
    radius = t.norm(dim=-1)
    polar = torch.atan2(t[:, :2].norm(dim=-1), t[:, 2])
    azimuth = torch.atan2(t[:, 1], t[:, 0])
    return polar, azimuth, radius


def zero123_embedding(cond_c2w: Tensor, target_c2w: Tensor) -> Tensor:
    """Zero-1-to-3's (B,4) embedding [Δpolar, sin Δazimuth, cos Δazimuth, Δradius] of two orbiting cameras."""
    cond, target = torch.broadcast_tensors(_as_c2w_batch(cond_c2w).double(), _as_c2w_batch(target_c2w).double())
    polar_c, azimuth_c, radius_c = _spherical(cond)
    polar_t, azimuth_t, radius_t = _spherical(target)
    d_azimuth = torch.remainder(azimuth_t - azimuth_c, 2 * math.pi)
    out = torch.stack([polar_t - polar_c, torch.sin(d_azimuth), torch.cos(d_azimuth), radius_t - radius_c], dim=-1)
    return out.to(target_c2w.dtype)


def camera_embedding(
    cond_c2w: Tensor,
    target_c2w: Tensor,
    fov_deg: Number,
    scale: Number = 1.0,
    mode: str = "7dof_quantile_scale",
) -> Tensor:
    """The camera embedding of ``mode`` for target cameras seen from condition cameras.

    Args:
        cond_c2w: (B,4,4) or (1,4,4) OpenGL camera-to-world of the conditioning view(s).
        target_c2w: (B,4,4) OpenGL camera-to-world of the views to generate.
        fov_deg: field of view in degrees, scalar or (B,).
        scale: scene scale, scalar or (B,) (ZeroNVS: the 20% quantile of the input view's depth);
            the relative translation is divided by max(scale, 1e-2). Unused by 3dof and 7dof_unscaled.
        mode: one of ``SUPPORTED_CONDITIONING_MODES``.

    Returns:
        (B,19) for the 7dof modes: the 16 values of inv(cond) @ target with its translation scaled (and,
        for 7dof_quantile_scale, squashed as 5·tanh(t/10)), then [fov_rad, sin fov, cos fov];
        (B,4) for 3dof (see :func:`zero123_embedding`).
    """
    check_conditioning_mode(mode, SUPPORTED_CONDITIONING_MODES.get(mode, -1))
    if mode == "3dof":
        return zero123_embedding(cond_c2w, target_c2w)
    rel = relative_pose(cond_c2w, target_c2w)
    batch_size = rel.shape[0]
    if mode != "7dof_unscaled":
        s = _batch(scale, batch_size, rel.device, rel.dtype).clamp_min(MIN_SCALE)
        rel[:, :3, 3] = rel[:, :3, 3] / s[:, None]
    if mode == "7dof_quantile_scale":
        rel[:, :3, 3] = SQUASH_AMPLITUDE * torch.tanh(rel[:, :3, 3] / SQUASH_RANGE)
        rel = torch.nan_to_num(rel, nan=0.0, posinf=SQUASH_RANGE, neginf=-SQUASH_RANGE)
    elif mode == "7dof_unscaled":
        rel = torch.nan_to_num(rel.clamp(-UNSCALED_CLIP, UNSCALED_CLIP), nan=0.0)
    fov_rad = torch.deg2rad(_batch(fov_deg, batch_size, rel.device, rel.dtype))
    fov = torch.stack([fov_rad, torch.sin(fov_rad), torch.cos(fov_rad)], dim=-1)
    dtype = target_c2w.dtype if target_c2w.is_floating_point() else torch.float32
    return torch.cat([rel.reshape(batch_size, 16), fov], dim=-1).to(dtype)


def relative_pose_from_embedding(embedding: Tensor, scale: Number = 1.0) -> tuple[Tensor, Tensor]:
    """Invert the 7dof_quantile_scale :func:`camera_embedding`: (B,19) → relative pose and field of view.

    The translation was squashed as ``5·tanh(t / (10·scale))``, so ``t = 10·scale·atanh(t_squashed / 5)``
    (``scale`` clamped to ≥ 1e-2 as in the forward direction). Returns ``inv(cond) @ target`` (B,4,4) float64
    and ``fov_deg`` (B,) float64.
    """
    if embedding.dim() != 2 or embedding.shape[-1] != SUPPORTED_CONDITIONING_MODES["7dof_quantile_scale"]:
        raise ValueError(f"a 7dof_quantile_scale embedding is (B,19), got {tuple(embedding.shape)}")
    emb = embedding.double()
    rel = emb[:, :16].reshape(-1, 4, 4).clone()
    s = _batch(scale, rel.shape[0], rel.device, rel.dtype).clamp_min(MIN_SCALE)
    squashed = (rel[:, :3, 3] / SQUASH_AMPLITUDE).clamp(-1 + 1e-15, 1 - 1e-15)
    rel[:, :3, 3] = SQUASH_RANGE * torch.atanh(squashed) * s[:, None]
    return rel, torch.rad2deg(emb[:, 16])
