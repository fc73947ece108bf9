"""Nearest-view selection: which input (conditioning) camera each target camera should use.

Rules (config ``selection``):

- ``"angle"`` (default, ZeroNVS's rule): the smallest relative rotation angle
  ``arccos((tr(R1ᵀR2) − 1) / 2)`` between the cameras' orientations.
- ``"distance"``: the smallest distance between camera centres.
- ``"mixed"``: the smallest ``angle_deg + distance_weight · center_distance`` (``distance_weight`` in
  degrees per world unit, config ``selection_distance_weight``).

Both measures are unchanged by rigid transforms of the world, so the result does not depend on the
OpenCV/OpenGL convention (the same for all cameras) or on canonicalisation; centre distances scale with
the world's units.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from threestudio.utils.camera import rotation_angle_deg
from threestudio.utils.errors import ConfigError

SELECTION_RULES = ("angle", "distance", "mixed")


def pairwise_view_distances(input_c2w: Tensor, target_c2w: Tensor) -> Tuple[Tensor, Tensor]:
    """Rotation angles (deg) and centre distances (M, N) between targets (M, 4, 4) and inputs (N, 4, 4)."""
    angles = rotation_angle_deg(target_c2w[:, None, :3, :3], input_c2w[None, :, :3, :3])
    distances = torch.cdist(target_c2w[:, :3, 3].double(), input_c2w[:, :3, 3].double()).to(angles.dtype)
    return angles, distances


def selection_scores(
    angles_deg: Tensor, distances: Tensor, rule: str = "angle", distance_weight: float = 1.0
) -> Tensor:
    """Scores (lower is nearer) of the given rule for pairwise ``angles_deg`` and ``distances`` (same shape)."""
    if rule == "angle":
        return angles_deg
    if rule == "distance":
        return distances
    if rule == "mixed":
        return angles_deg + distance_weight * distances
    raise ConfigError(f"unknown view selection rule {rule!r}; valid: {', '.join(SELECTION_RULES)}")


def select_nearest(
    input_c2w: Tensor, target_c2w: Tensor, rule: str = "angle", distance_weight: float = 1.0
) -> Tuple[Tensor, Tensor, Tensor]:
    """For each target camera, the nearest input camera under ``rule``.

    ``input_c2w`` (N, 4, 4), ``target_c2w`` (M, 4, 4) camera-to-world matrices in one world frame.
    Returns ``indices`` (M,) positions in the input list, and the chosen pair's ``angles_deg`` (M,) and
    ``center_distances`` (M,). Ties go to the earlier input.
    """
    if input_c2w.shape[0] == 0:
        raise ValueError("select_nearest needs at least one input camera")
    angles, distances = pairwise_view_distances(input_c2w.double(), target_c2w.double())
    indices = selection_scores(angles, distances, rule, distance_weight).argmin(dim=1)
    rows = torch.arange(target_c2w.shape[0])
    return indices, angles[rows, indices].float(), distances[rows, indices].float()
