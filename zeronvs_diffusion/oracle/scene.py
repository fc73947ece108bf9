"""A procedural known world for the oracle prior: YAML scenes rendered exactly by ray–primitive intersection.

A scene file (``configs/oracle_scenes/*.yaml``)::

    background: {top: [r, g, b], bottom: [r, g, b]}   # colour by the ray's world z, linear from bottom to top
    primitives:
      - {type: sphere, center: [x, y, z], radius: r, color: [r, g, b]}
      - {type: box, center: [x, y, z], size: [sx, sy, sz], color: [r, g, b]}        # axis-aligned
      - {type: plane, height: z, checker: {colors: [[r, g, b], [r, g, b]], cell: s}}  # ground z = height
    # any primitive may have `checker` (a 3D checker of two colours with cells of side s) instead of `color`

World coordinates are the single-image run's: z up, OpenGL camera-to-world cameras. A pixel's colour is the
unshaded colour of the nearest hit, or the background when nothing is hit; :func:`render` averages
``supersample`` × ``supersample`` rays per pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from zeronvs_diffusion.errors import UserError

PRIMITIVE_KEYS = {
    "sphere": {"type", "center", "radius", "color", "checker"},
    "box": {"type", "center", "size", "color", "checker"},
    "plane": {"type", "height", "color", "checker"},
}
SCENE_KEYS = {"background", "primitives"}
_EPS = 1e-6  # smallest accepted ray parameter
_INSIDE = 1e-5  # the checker is read this far inside the surface, so cells on a face's plane do not flicker


class SceneError(UserError):
    """A scene file is malformed (the message names the key)."""


def _vector(value: Any, n: int, where: str) -> Tensor:
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != n:
        raise SceneError(f"{where} must be a list of {n} numbers, got {value!r}")
    return torch.tensor([float(v) for v in value], dtype=torch.float64)


@dataclass
class Surface:
    """A colour, or a 3D checker of ``colors`` (2, 3) with cubic cells of side ``cell``."""

    colors: Tensor
    cell: Optional[float] = None

    @classmethod
    def parse(cls, spec: Mapping[str, Any], where: str) -> "Surface":
        if ("color" in spec) == ("checker" in spec):
            raise SceneError(f"{where} needs exactly one of `color` or `checker`")
        if "color" in spec:
            return cls(_vector(spec["color"], 3, f"{where}.color")[None])
        checker = spec["checker"]
        if not isinstance(checker, Mapping) or set(checker) != {"colors", "cell"} or len(checker["colors"]) != 2:
            raise SceneError(f"{where}.checker must be {{colors: [[r, g, b], [r, g, b]], cell: s}}")
        cell = float(checker["cell"])
        if cell <= 0:
            raise SceneError(f"{where}.checker.cell must be positive, got {cell}")
        colors = torch.stack([_vector(c, 3, f"{where}.checker.colors") for c in checker["colors"]])
        return cls(colors, cell)

    def shade(self, points: Tensor) -> Tensor:
        """Colours (N, 3) at surface points (N, 3) (already moved slightly inside the surface)."""
        if self.cell is None:
            return self.colors[0].to(points).expand(points.shape[0], 3)
        parity = torch.floor(points / self.cell).sum(-1).remainder(2).long()
        return self.colors.to(points)[parity]


@dataclass
class Primitive:
    """One primitive: ``kind`` sphere | box | plane with its parameters and surface."""

    kind: str
    surface: Surface
    center: Optional[Tensor] = None
    radius: float = 0.0
    half_size: Optional[Tensor] = None
    height: float = 0.0

    @classmethod
    def parse(cls, spec: Mapping[str, Any], where: str) -> "Primitive":
        kind = spec.get("type") if isinstance(spec, Mapping) else None
        if kind not in PRIMITIVE_KEYS:
            raise SceneError(f"{where}.type must be one of {', '.join(PRIMITIVE_KEYS)}, got {kind!r}")
        unknown = set(spec) - PRIMITIVE_KEYS[kind]
        if unknown:
            raise SceneError(f"unknown key {where}.{sorted(unknown)[0]} for a {kind}")
        surface = Surface.parse(spec, where)
        if kind == "plane":
            return cls(kind, surface, height=float(spec["height"]))
        center = _vector(spec.get("center"), 3, f"{where}.center")
        if kind == "sphere":
            radius = float(spec.get("radius", 0.0))
            if radius <= 0:
                raise SceneError(f"{where}.radius must be positive")
            return cls(kind, surface, center=center, radius=radius)
        size = _vector(spec.get("size"), 3, f"{where}.size")
        if bool((size <= 0).any()):
            raise SceneError(f"{where}.size must be positive")
        return cls(kind, surface, center=center, half_size=size / 2)

    def intersect(self, rays_o: Tensor, rays_d: Tensor) -> Tuple[Tensor, Tensor]:
        """Nearest hit ``t`` (N,) (inf where missed) and outward unit normal (N, 3) for unit rays (N, 3)."""
        if self.kind == "sphere":
            return _hit_sphere(rays_o, rays_d, self.center.to(rays_o), self.radius)
        if self.kind == "box":
            return _hit_box(rays_o, rays_d, self.center.to(rays_o), self.half_size.to(rays_o))
        return _hit_plane(rays_o, rays_d, self.height)


def _nearest_positive(t_near: Tensor, t_far: Tensor, valid: Tensor) -> Tensor:
    t = torch.where(t_near > _EPS, t_near, t_far)
    return torch.where(valid & (t > _EPS), t, torch.full_like(t, math.inf))


def _hit_sphere(o: Tensor, d: Tensor, center: Tensor, radius: float) -> Tuple[Tensor, Tensor]:
    oc = o - center
    b = (oc * d).sum(-1)
    disc = b * b - ((oc * oc).sum(-1) - radius * radius)
    root = disc.clamp_min(0).sqrt()
    t = _nearest_positive(-b - root, -b + root, disc >= 0)
    normal = F.normalize(o + t.clamp(max=1e9)[:, None] * d - center, dim=-1)
    return t, normal


def _hit_box(o: Tensor, d: Tensor, center: Tensor, half: Tensor) -> Tuple[Tensor, Tensor]:
    inv = 1.0 / torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
    t1, t2 = (center - half - o) * inv, (center + half - o) * inv
    t_lo, t_hi = torch.minimum(t1, t2), torch.maximum(t1, t2)
    t_near, near_axis = t_lo.max(-1)
    t_far, far_axis = t_hi.min(-1)
    t = _nearest_positive(t_near, t_far, t_far >= t_near)
    axis = torch.where(t_near > _EPS, near_axis, far_axis)
    p = o + t.clamp(max=1e9)[:, None] * d
    sign = torch.sign((p - center).gather(1, axis[:, None]))
    normal = torch.zeros_like(o).scatter(1, axis[:, None], sign)
    return t, normal


def _hit_plane(o: Tensor, d: Tensor, height: float) -> Tuple[Tensor, Tensor]:
    dz = torch.where(d[:, 2].abs() < 1e-12, torch.full_like(d[:, 2], 1e-12), d[:, 2])
    t = (height - o[:, 2]) / dz
    t = torch.where(t > _EPS, t, torch.full_like(t, math.inf))
    up = torch.sign(o[:, 2] - height)[:, None] * torch.tensor([0.0, 0.0, 1.0], dtype=o.dtype, device=o.device)
    return t, up.expand_as(o)


class Scene:
    """A parsed scene: background colours (top, bottom) and primitives; see the module docstring."""

    def __init__(self, background_top: Tensor, background_bottom: Tensor, primitives: List[Primitive]):
        self.background_top = background_top
        self.background_bottom = background_bottom
        self.primitives = primitives

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], where: str = "scene") -> "Scene":
        unknown = set(spec) - SCENE_KEYS
        if unknown:
            raise SceneError(f"unknown key {where}.{sorted(unknown)[0]}; valid: {', '.join(sorted(SCENE_KEYS))}")
        background = spec.get("background") or {}
        if set(background) != {"top", "bottom"}:
            raise SceneError(f"{where}.background must be {{top: [r, g, b], bottom: [r, g, b]}}")
        prims = spec.get("primitives") or []
        if not isinstance(prims, list) or not prims:
            raise SceneError(f"{where}.primitives must be a non-empty list")
        return cls(
            _vector(background["top"], 3, f"{where}.background.top"),
            _vector(background["bottom"], 3, f"{where}.background.bottom"),
            [Primitive.parse(p, f"{where}.primitives[{i}]") for i, p in enumerate(prims)],
        )

    def trace(self, rays_o: Tensor, rays_d: Tensor) -> Tuple[Tensor, Tensor]:
        """Colour (N, 3) and hit distance ``t`` (N,) (inf for background) of unit rays (N, 3)."""
        n = rays_o.shape[0]
        t_best = torch.full((n,), math.inf, dtype=rays_o.dtype, device=rays_o.device)
        rgb = self.background(rays_d)
        for prim in self.primitives:
            t, normal = prim.intersect(rays_o, rays_d)
            closer = t < t_best
            if bool(closer.any()):
                p = rays_o[closer] + t[closer, None] * rays_d[closer] - _INSIDE * normal[closer]
                rgb[closer] = prim.surface.shade(p)
                t_best = torch.where(closer, t, t_best)
        return rgb, t_best

    def background(self, rays_d: Tensor) -> Tensor:
        """Background colours (N, 3): bottom at world z = −1, top at +1, linear in the ray direction's z."""
        w = ((rays_d[:, 2:3] + 1.0) / 2.0).clamp(0.0, 1.0)
        return self.background_bottom.to(rays_d) * (1 - w) + self.background_top.to(rays_d) * w


def read_mapping(path: str, what: str) -> Mapping[str, Any]:
    """The YAML mapping in ``path`` (``what`` names the file kind in errors)."""
    import yaml

    try:
        with open(path, "r", encoding="utf-8") as f:
            spec = yaml.safe_load(f)
    except OSError as e:
        raise SceneError(f"cannot read the {what} {path!r}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise SceneError(f"the {what} {path} is not valid YAML: {e}") from None
    if not isinstance(spec, Mapping):
        raise SceneError(f"the {what} {path} must be a mapping with background and primitives")
    return spec


def load_scene(path: str) -> Scene:
    """Read a scene YAML file (errors name the file and key)."""
    return Scene.from_dict(read_mapping(path, "oracle scene"), where=path)


def pinhole_rays(c2w: Tensor, fov_deg: Tensor, height: int, width: int) -> Tuple[Tensor, Tensor]:
    """Unit world rays (B, H, W, 3) through the pixel centres of OpenGL cameras ``c2w`` (B, 4, 4), vertical
    field of view ``fov_deg`` (B,)."""
    focal = 0.5 * height / torch.tan(0.5 * torch.deg2rad(fov_deg.to(c2w)))  # (B,)
    j, i = torch.meshgrid(
        torch.arange(height, dtype=c2w.dtype, device=c2w.device) + 0.5,
        torch.arange(width, dtype=c2w.dtype, device=c2w.device) + 0.5,
        indexing="ij",
    )
    f = focal[:, None, None]
    dirs = torch.stack([(i - width / 2) / f, -(j - height / 2) / f, -torch.ones_like(i).expand_as(f * i)], dim=-1)
    rays_d = F.normalize(torch.einsum("bhwj,bij->bhwi", dirs, c2w[:, :3, :3]), dim=-1)
    return c2w[:, None, None, :3, 3].expand_as(rays_d), rays_d


def render(
    scene: Scene, c2w: Tensor, fov_deg: Tensor, height: int, width: int, supersample: int = 2
) -> Tuple[Tensor, Tensor]:
    """The world seen by cameras ``c2w`` (B, 4, 4) with vertical fov ``fov_deg`` (B,).

    Returns rgb (B, H, W, 3) in [0, 1], the mean of ``supersample``² rays per pixel (float64 intersections,
    returned in ``c2w``'s dtype), and the z-depth (B, H, W) of the pixel-centre ray (inf on background).
    """
    c2w64 = c2w.detach().double()
    fov = fov_deg.detach().double().reshape(-1).expand(c2w.shape[0])
    s = int(supersample)
    rays_o, rays_d = pinhole_rays(c2w64, fov, height * s, width * s)
    rgb, _ = scene.trace(rays_o.reshape(-1, 3), rays_d.reshape(-1, 3))
    rgb = rgb.view(-1, height, s, width, s, 3).mean(dim=(2, 4))
    center_o, center_d = pinhole_rays(c2w64, fov, height, width)
    _, t = scene.trace(center_o.reshape(-1, 3), center_d.reshape(-1, 3))
    forward = -c2w64[:, None, None, :3, 2]
    depth = t.view(-1, height, width) * (center_d * forward).sum(-1)
    dtype = c2w.dtype if c2w.is_floating_point() else torch.float32
    return rgb.to(dtype).clamp(0.0, 1.0), depth.to(dtype)


def visible_from(
    scene: Scene, c2w: Tensor, fov_deg: Tensor, height: int, width: int, cond_c2w: Tensor, cond_fov_deg: Tensor
) -> Tensor:
    """Whether the conditioning camera of each target sees what each target pixel shows: (B, H, W) bool.

    Targets ``c2w`` (B, 4, 4) with vertical fov ``fov_deg`` (B,), conditioning cameras ``cond_c2w`` (B, 4, 4) with
    ``cond_fov_deg`` (B,), both square-pixel pinhole cameras of aspect ``width / height``. A pixel-centre ray that
    hits a surface point p is visible when p projects inside the conditioning camera's frame, in front of it, and
    the conditioning camera's ray towards p hits nothing nearer (a depth test, relative tolerance 1e-4); a
    background pixel is visible when its direction, a point at infinity, projects inside that frame.
    """
    c2w64, cond64 = c2w.detach().double(), cond_c2w.detach().double()
    rays_o, rays_d = pinhole_rays(c2w64, fov_deg.detach().double().reshape(-1), height, width)
    b = c2w.shape[0]
    o, d = rays_o.reshape(b, -1, 3), rays_d.reshape(b, -1, 3)
    _, t = scene.trace(o.reshape(-1, 3), d.reshape(-1, 3))
    t = t.view(b, -1)
    hit = torch.isfinite(t)
    points = o + torch.where(hit, t, torch.zeros_like(t))[..., None] * d
    rotation, centre = cond64[:, :3, :3], cond64[:, :3, 3]
    # camera-space coordinates of the points (hits) or of the directions (background); OpenGL: the camera looks to -z
    rel = torch.where(hit[..., None], points - centre[:, None], d)
    cam = torch.einsum("bij,bni->bnj", rotation, rel)
    depth = -cam[..., 2]
    tan_y = torch.tan(0.5 * torch.deg2rad(cond_fov_deg.detach().double().reshape(-1, 1)))
    tan_x = tan_y * (width / height)
    safe = depth.clamp_min(1e-12)
    inside = (depth > 1e-9) & ((cam[..., 0] / safe).abs() <= tan_x) & ((cam[..., 1] / safe).abs() <= tan_y)
    # depth test for the hits inside the frame: nothing nearer on the segment from the conditioning camera to p
    distance = rel.norm(dim=-1)
    towards = F.normalize(rel, dim=-1)
    _, t_cond = scene.trace(centre[:, None].expand_as(points).reshape(-1, 3), towards.reshape(-1, 3))
    unoccluded = t_cond.view(b, -1) >= distance * (1 - 1e-4) - 1e-9
    visible = inside & (~hit | unoccluded)
    return visible.view(b, height, width)
