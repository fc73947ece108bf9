"""Camera maths shared by every part of the pipeline.

Conventions (see docs/DESIGN.md): world z-up; camera-to-world 4×4 matrices in the OpenGL convention
(camera x right, y up, looking down −z) everywhere inside the pipeline. OpenCV cameras (x right,
y down, z forward) appear only at the file boundary and are converted with
``c2w_gl = c2w_cv · diag(1, −1, −1, 1)`` (:func:`opencv_to_opengl`).
"""

from __future__ import annotations

import math
from typing import Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

_CV_GL_FLIP = (1.0, -1.0, -1.0, 1.0)


def opencv_to_opengl(c2w: Tensor) -> Tensor:
    """(..., 4, 4) OpenCV camera-to-world → OpenGL camera-to-world (flip the camera's y and z axes)."""
    flip = torch.tensor(_CV_GL_FLIP, dtype=c2w.dtype, device=c2w.device)
    return c2w * flip  # scales columns: c2w @ diag(flip)


def opengl_to_opencv(c2w: Tensor) -> Tensor:
    """(..., 4, 4) OpenGL camera-to-world → OpenCV camera-to-world (the same flip; it is its own inverse)."""
    return opencv_to_opengl(c2w)


def fov_to_focal(fov_deg: Union[float, Tensor], size: Union[int, float]) -> Union[float, Tensor]:
    """Focal length in pixels for a field of view ``fov_deg`` spanning ``size`` pixels."""
    if isinstance(fov_deg, Tensor):
        return 0.5 * size / torch.tan(torch.deg2rad(fov_deg) / 2)
    return 0.5 * size / math.tan(math.radians(fov_deg) / 2)


def focal_to_fov(focal: Union[float, Tensor], size: Union[int, float]) -> Union[float, Tensor]:
    """Field of view in degrees spanned by ``size`` pixels at focal length ``focal`` (pixels)."""
    if isinstance(focal, Tensor):
        return torch.rad2deg(2 * torch.atan(0.5 * size / focal))
    return math.degrees(2 * math.atan(0.5 * size / focal))


def look_at(eye: Tensor, target: Tensor, up: Tensor) -> Tensor:
    """OpenGL camera-to-world (B, 4, 4) for cameras at ``eye`` (B, 3) looking at ``target`` (B, 3).

    ``up`` (B, 3) or (3,) is the world up direction (z in this pipeline). A camera looking straight
    along ``up`` falls back to the world y axis as its up vector.
    """
    up = up.expand_as(eye)
    forward = F.normalize(target - eye, dim=-1)
    right = torch.linalg.cross(forward, up, dim=-1)
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    alt_up = torch.tensor([0.0, 1.0, 0.0], dtype=eye.dtype, device=eye.device).expand_as(eye)
    right = torch.where(degenerate, torch.linalg.cross(forward, alt_up, dim=-1), right)
    right = F.normalize(right, dim=-1)
    cam_up = torch.linalg.cross(right, forward, dim=-1)
    c2w = torch.zeros(eye.shape[0], 4, 4, dtype=eye.dtype, device=eye.device)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = cam_up
    c2w[:, :3, 2] = -forward
    c2w[:, :3, 3] = eye
    c2w[:, 3, 3] = 1.0
    return c2w


def spherical_to_cartesian(elevation_deg: Tensor, azimuth_deg: Tensor, distance: Tensor) -> Tensor:
    """Points (B, 3) on spheres about the origin, z up: azimuth 0 lies on +x, elevation above the xy plane."""
    elev = torch.deg2rad(elevation_deg)
    azim = torch.deg2rad(azimuth_deg)
    return torch.stack(
        [
            distance * torch.cos(elev) * torch.cos(azim),
            distance * torch.cos(elev) * torch.sin(azim),
            distance * torch.sin(elev),
        ],
        dim=-1,
    )


def orbit_c2w(elevation_deg: Tensor, azimuth_deg: Tensor, distance: Tensor, center: Tensor | None = None) -> Tensor:
    """OpenGL camera-to-world (B, 4, 4) for cameras on a z-up sphere looking at ``center`` (default origin).

    ``elevation_deg``, ``azimuth_deg``, ``distance``: (B,).
    """
    eye = spherical_to_cartesian(elevation_deg, azimuth_deg, distance)
    if center is None:
        center = torch.zeros_like(eye)
    eye = eye + center
    up = torch.tensor([0.0, 0.0, 1.0], dtype=eye.dtype, device=eye.device)
    return look_at(eye, center.expand_as(eye), up)


def get_ray_directions(
    height: int, width: int, focal: Union[float, Tuple[float, float]], principal: Tuple[float, float] | None = None
) -> Tensor:
    """Camera-space OpenGL ray directions (H, W, 3), not normalised, through pixel centres.

    ``focal``: one focal length in pixels or (fx, fy); ``principal``: (cx, cy), default the image centre.
    """
    fx, fy = (focal, focal) if not isinstance(focal, (tuple, list)) else focal
    cx, cy = (width / 2, height / 2) if principal is None else principal
    j, i = torch.meshgrid(
        torch.arange(height, dtype=torch.float32) + 0.5,
        torch.arange(width, dtype=torch.float32) + 0.5,
        indexing="ij",
    )
    return torch.stack([(i - cx) / fx, -(j - cy) / fy, -torch.ones_like(i)], dim=-1)


def get_rays(directions: Tensor, c2w: Tensor, normalize: bool = True) -> Tuple[Tensor, Tensor]:
    """World rays from camera-space ``directions`` (H, W, 3) or (B, H, W, 3) and ``c2w`` (B, 4, 4).

    Returns ``rays_o``, ``rays_d``, each (B, H, W, 3); ``rays_d`` unit length when ``normalize``.
    """
    if directions.dim() == 3:
        directions = directions.unsqueeze(0)
    rays_d = torch.einsum("bhwj,bij->bhwi", directions.to(c2w), c2w[:, :3, :3])
    rays_o = c2w[:, None, None, :3, 3].expand_as(rays_d)
    if normalize:
        rays_d = F.normalize(rays_d, dim=-1)
    return rays_o, rays_d


def rays_for_cameras(c2w: Tensor, fov_deg: Tensor, height: int, width: int) -> Tuple[Tensor, Tensor]:
    """Rays (B, H, W, 3) for pinhole cameras ``c2w`` (B, 4, 4) with vertical field of view ``fov_deg`` (B,)."""
    focal = fov_to_focal(fov_deg.float(), height)  # (B,)
    base = get_ray_directions(height, width, 1.0).to(c2w.device)  # directions at focal 1
    dirs = base[None].repeat(c2w.shape[0], 1, 1, 1)
    dirs[..., :2] = dirs[..., :2] / focal[:, None, None, None].to(c2w)
    return get_rays(dirs, c2w)


def rotation_angle_deg(R1: Tensor, R2: Tensor) -> Tensor:
    """Angle in degrees of the relative rotation R1ᵀR2: arccos((tr(R1ᵀR2) − 1) / 2). Shapes (..., 3, 3)."""
    rel = R1.transpose(-1, -2) @ R2
    trace = rel.diagonal(dim1=-2, dim2=-1).sum(-1)
    cos = ((trace - 1) / 2).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cos))


def c2w_to_spherical(c2w: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Elevation (deg), azimuth (deg) and distance (B,) of camera centres ``c2w`` (B, 4, 4) about the origin."""
    t = c2w[:, :3, 3]
    distance = t.norm(dim=-1)
    elevation = torch.rad2deg(torch.asin((t[:, 2] / distance.clamp_min(1e-8)).clamp(-1, 1)))
    azimuth = torch.rad2deg(torch.atan2(t[:, 1], t[:, 0]))
    return elevation, azimuth, distance
