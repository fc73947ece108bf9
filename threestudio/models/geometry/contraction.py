"""Mapping world points into the [0, 1]^3 cube that the hash grid encodes.

Bounded scenes scale the box ``bbox`` (2, 3) linearly onto [0, 1]^3. Unbounded scenes (ZeroNVS: real 360° scenes,
far plane 1000) use threestudio's ``contract_to_unisphere``, a mip-NeRF 360 style contraction: the box is first
scaled onto [−1, 1]^3, points with ‖x‖ ≤ 1 stay put, points outside map to ``(2 − 1/‖x‖) · x/‖x‖`` (so all of space
lands in the ball of radius 2), and the result is mapped onto [0, 1]^3 by ``x/4 + 0.5``. The inner ball (the
geometry's ``radius``) thus gets half the grid's extent, linearly; infinity lies on the sphere of radius 1/2 about
the cube's centre.
"""

from __future__ import annotations

from torch import Tensor


def scale_to_unit_cube(x: Tensor, bbox: Tensor) -> Tensor:
    """Points (..., 3) in the box bbox (2, 3) → [0, 1]^3 (linear; points outside land outside)."""
    return (x - bbox[0]) / (bbox[1] - bbox[0])


def contract_to_unisphere(x: Tensor, bbox: Tensor, unbounded: bool = False) -> Tensor:
    """World points (..., 3) → (..., 3) in [0, 1]^3 (bounded: linear; unbounded: mip-NeRF 360 contraction)."""
    x = scale_to_unit_cube(x, bbox)
    if not unbounded:
        return x
    x = x * 2.0 - 1.0
    mag = x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    contracted = (2.0 - 1.0 / mag) * (x / mag)
    x = x.where(mag <= 1.0, contracted)
    return x / 4.0 + 0.5
