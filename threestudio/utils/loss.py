"""Loss terms shared by the systems: photometric, opacity and geometry regularisers (pure functions of tensors)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def normal_smoothness_2d(comp_normal: Tensor) -> Tensor:
    """Mean squared difference of neighbouring pixels of rendered normals (B, H, W, 3)."""
    return (comp_normal[:, 1:] - comp_normal[:, :-1]).square().mean() + (
        comp_normal[:, :, 1:] - comp_normal[:, :, :-1]
    ).square().mean()


def orientation_loss(weights: Tensor, normal: Tensor, t_dirs: Tensor, opacity: Tensor) -> Tensor:
    """Penalise normals facing away from the camera (Ref-NeRF): Σ w·max(0, n·d)² / #rays with opacity > 0.

    weights (N, 1), normal (N, 3), t_dirs (N, 3) per sample; opacity (B, H, W, 1).
    """
    facing = (normal * t_dirs).sum(-1, keepdim=True).clamp_min(0.0) ** 2
    return (weights.detach() * facing).sum() / (opacity > 0).sum().clamp_min(1)


def sparsity_loss(opacity: Tensor) -> Tensor:
    return (opacity**2 + 0.01).sqrt().mean()


def opaque_loss(opacity: Tensor) -> Tensor:
    """Binary entropy of the opacity: pushes every ray to fully opaque or fully empty."""
    o = opacity.clamp(1e-3, 1 - 1e-3)
    return F.binary_cross_entropy(o, o)


def weighted_mse(pred: Tensor, target: Tensor, weight: Optional[Tensor]) -> Tensor:
    """Σ w‖pred − target‖² / (C Σ w) over rays; pred, target (..., C), weight (..., 1) or None (all ones)."""
    se = (pred - target).square()
    if weight is None:
        return se.mean()
    weight = weight.to(se.dtype)
    return (se * weight).sum() / (weight.sum() * se.shape[-1]).clamp_min(1e-8)


def distortion_loss(weights: Tensor, s_mid: Tensor, s_delta: Tensor) -> Tensor:
    """mip-NeRF 360's distortion loss, mean over rays: Σᵢⱼ wᵢwⱼ|sᵢ − sⱼ| + ⅓ Σᵢ wᵢ²Δsᵢ.

    weights, s_mid (interval midpoints), s_delta (interval lengths): (R, S), in the normalised ray spacing s ∈ [0, 1].
    """
    w_before = torch.cumsum(weights, dim=-1) - weights  # Σ_{j<i} w_j
    ws_before = torch.cumsum(weights * s_mid, dim=-1) - weights * s_mid  # Σ_{j<i} w_j s_j
    inter = 2.0 * (weights * (s_mid * w_before - ws_before)).sum(dim=-1)
    intra = (weights.square() * s_delta).sum(dim=-1) / 3.0
    return (inter + intra).mean()


def normalized_spacing(t_mid: Tensor, t_delta: Tensor, near: float, far: float, sampling_type: str):
    """Distances t (midpoints, lengths) → the renderer's normalised spacing s ∈ [0, 1] (uniform or lindisp)."""
    if sampling_type == "lindisp":
        scale = 1.0 / (1.0 / near - 1.0 / far)
        return (1.0 / near - 1.0 / t_mid) * scale, t_delta / t_mid.square() * scale
    return (t_mid - near) / (far - near), t_delta / (far - near)
