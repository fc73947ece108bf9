"""Camera sampling for score distillation: random training views around the scene and evaluation orbits.

Conventions (docs/DESIGN.md): world z-up, OpenGL camera-to-world (camera looks down −z), angles in degrees.
Azimuth 0 lies on +x and grows towards +y; elevation is measured from the xy plane. Every camera dict
returned here holds tensors with a leading view dimension B:

- ``c2w`` (B, 4, 4), ``fov_deg`` (B,) vertical field of view, ``elevation_deg``, ``azimuth_deg``,
  ``camera_distance`` (B,), ``light_positions`` (B, 3).

:func:`camera_rays` turns such a dict into ``rays_o``/``rays_d`` (B, H, W, 3) at a chosen resolution.
The plain functions (:func:`sample_random_cameras`, :func:`orbit_cameras`) are shared by the
datamodules; :class:`RandomCameraSampler` and :class:`OrbitCameraDataset` wrap them with a config.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from threestudio.data.utils import MAX_IMAGE_SIDE, StagedResolution, as_range
from threestudio.utils.base import Updateable
from threestudio.utils.camera import look_at, orbit_c2w, rays_for_cameras, spherical_to_cartesian
from threestudio.utils.errors import ConfigError

logger = logging.getLogger(__name__)

LIGHT_SAMPLE_STRATEGIES = ("dreamfusion", "magic3d")
ELEVATION_SAMPLINGS = ("threestudio", "uniform_area")
# the keys of every camera dict returned here
CAMERA_KEYS = ("c2w", "fov_deg", "elevation_deg", "azimuth_deg", "camera_distance", "light_positions")


def wrap_azimuth(azimuth_deg: Tensor) -> Tensor:
    """Azimuths (any shape) wrapped into [-180, 180) degrees."""
    return torch.remainder(azimuth_deg + 180.0, 360.0) - 180.0


def _uniform(n: int, low: float, high: float) -> Tensor:
    return torch.rand(n) * (high - low) + low


def sample_elevations(
    batch_size: int, elevation_range: Sequence[float], elevation_sampling: str = "threestudio"
) -> Tensor:
    """Elevations (B,) in degrees for the range ``[e0, e1]`` (degrees).

    ``"threestudio"`` (ZeroNVS's and threestudio's sampler, one coin per batch): with probability 1/2 uniform in
    degrees on [e0, e1]; otherwise ``asin(u)`` with u uniform on [e0/90, e1/90] (threestudio's
    ``asin(2·(e+90)/180 − 1)``), which is uniform in area only for the full range [−90, 90]: for [5, 80] it spans
    3.19°–62.73°, not 5°–80°. ``"uniform_area"``: every batch uniform in area on the sphere between e0 and e1
    (u uniform on [sin e0, sin e1]).
    """
    low, high = float(elevation_range[0]), float(elevation_range[1])
    if elevation_sampling == "threestudio":
        if torch.rand(()) < 0.5:
            return _uniform(batch_size, low, high)
        u_low, u_high = low / 90.0, high / 90.0
    elif elevation_sampling == "uniform_area":
        u_low, u_high = math.sin(math.radians(low)), math.sin(math.radians(high))
    else:
        raise ConfigError(
            f"unknown elevation_sampling {elevation_sampling!r}; valid: {', '.join(ELEVATION_SAMPLINGS)}"
        )
    return torch.rad2deg(torch.asin(_uniform(batch_size, u_low, u_high).clamp(-1.0, 1.0)))


def sample_azimuths(batch_size: int, azimuth_range: Sequence[float], batch_uniform: bool = True) -> Tensor:
    """Azimuth offsets (B,) in degrees within ``azimuth_range`` (not wrapped).

    ``batch_uniform``: stratified, one sample in each of B equal slices of the range, so a batch covers it.
    """
    low, high = float(azimuth_range[0]), float(azimuth_range[1])
    if batch_uniform:
        return (torch.rand(batch_size) + torch.arange(batch_size)) / batch_size * (high - low) + low
    return _uniform(batch_size, low, high)


def sample_light_positions(
    camera_positions: Tensor,
    light_distance_range: Sequence[float],
    light_position_perturb: float = 1.0,
    strategy: str = "dreamfusion",
) -> Tensor:
    """Point-light positions (B, 3) for cameras at ``camera_positions`` (B, 3).

    ``"dreamfusion"``: direction = camera direction + N(0, light_position_perturb²) noise;
    ``"magic3d"``: a direction 30°–90° above the plane facing the camera, at a random angle around it.
    The distance from the origin is uniform in ``light_distance_range``.
    """
    b = camera_positions.shape[0]
    distances = _uniform(b, float(light_distance_range[0]), float(light_distance_range[1]))
    if strategy == "dreamfusion":
        direction = F.normalize(camera_positions + torch.randn(b, 3) * light_position_perturb, dim=-1)
    elif strategy == "magic3d":
        local_z = F.normalize(camera_positions, dim=-1)
        local_x = torch.stack([local_z[:, 1], -local_z[:, 0], torch.zeros_like(local_z[:, 0])], dim=-1)
        degenerate = local_x.norm(dim=-1, keepdim=True) < 1e-6  # camera straight above/below the origin
        local_x = F.normalize(torch.where(degenerate, torch.tensor([1.0, 0.0, 0.0]), local_x), dim=-1)
        local_y = torch.linalg.cross(local_z, local_x, dim=-1)
        light_azim = _uniform(b, -math.pi, math.pi)
        light_elev = _uniform(b, math.pi / 6, math.pi / 2)
        direction = (
            torch.cos(light_elev)[:, None] * torch.cos(light_azim)[:, None] * local_x
            + torch.cos(light_elev)[:, None] * torch.sin(light_azim)[:, None] * local_y
            + torch.sin(light_elev)[:, None] * local_z
        )
    else:
        raise ConfigError(
            f"unknown light_sample_strategy {strategy!r}; valid: {', '.join(LIGHT_SAMPLE_STRATEGIES)}"
        )
    return direction * distances[:, None]


def sample_random_cameras(
    batch_size: int,
    elevation_range: Sequence[float],
    azimuth_range: Sequence[float],
    distance_range: Sequence[float],
    fovy_range: Sequence[float],
    azimuth_offset_deg: float = 0.0,
    camera_perturb: float = 0.0,
    center_perturb: float = 0.0,
    up_perturb: float = 0.0,
    light_position_perturb: float = 1.0,
    light_distance_range: Sequence[float] = (0.8, 1.5),
    light_sample_strategy: str = "dreamfusion",
    batch_uniform_azimuth: bool = True,
    elevation_sampling: str = "threestudio",
) -> Dict[str, Tensor]:
    """``batch_size`` random cameras looking at (about) the origin, drawn from torch's global RNG.

    Azimuths are ``azimuth_offset_deg`` plus an offset from ``azimuth_range``, wrapped into [-180, 180);
    pass the reference view's azimuth as ``azimuth_offset_deg`` to sample relative to it.
    Perturbations as in threestudio: the camera centre moves by U(−camera_perturb, camera_perturb) per axis,
    the look-at point by N(0, center_perturb²), the up vector by N(0, up_perturb²). The returned angles and
    distances are the sampled (unperturbed) ones; ``c2w`` is the actual camera.

    Elevations follow ``elevation_sampling`` (:func:`sample_elevations`).

    Returns the camera dict of the module docstring with B = ``batch_size``.
    """
    elevation_deg = sample_elevations(batch_size, elevation_range, elevation_sampling)
    azimuth_deg = wrap_azimuth(
        azimuth_offset_deg + sample_azimuths(batch_size, azimuth_range, batch_uniform_azimuth)
    )
    camera_distance = _uniform(batch_size, float(distance_range[0]), float(distance_range[1]))
    fov_deg = _uniform(batch_size, float(fovy_range[0]), float(fovy_range[1]))

    eye = spherical_to_cartesian(elevation_deg, azimuth_deg, camera_distance)
    center = torch.zeros_like(eye)
    up = torch.tensor([0.0, 0.0, 1.0]).repeat(batch_size, 1)
    if camera_perturb > 0:
        eye = eye + (torch.rand(batch_size, 3) * 2 - 1) * camera_perturb
    if center_perturb > 0:
        center = center + torch.randn(batch_size, 3) * center_perturb
    if up_perturb > 0:
        up = up + torch.randn(batch_size, 3) * up_perturb
    c2w = look_at(eye, center, up)
    light_positions = sample_light_positions(eye, light_distance_range, light_position_perturb, light_sample_strategy)
    return {
        "c2w": c2w,
        "fov_deg": fov_deg,
        "elevation_deg": elevation_deg,
        "azimuth_deg": azimuth_deg,
        "camera_distance": camera_distance,
        "light_positions": light_positions,
    }


def orbit_cameras(
    n_views: int,
    elevation_deg: float,
    distance: float,
    fovy_deg: float,
    azimuth_start_deg: float = 0.0,
) -> Dict[str, Tensor]:
    """``n_views`` cameras on a circle at ``elevation_deg`` and ``distance``, looking at the origin.

    Azimuths are evenly spaced over 360° (no repeated end view), starting at ``azimuth_start_deg``, wrapped
    into [-180, 180). Lights sit at the cameras. ``orbit_cameras(1, ...)`` is a single camera at that pose.
    Returns the camera dict of the module docstring with B = ``n_views``.
    """
    if n_views < 1:
        raise ConfigError(f"an orbit needs at least one view, got n_views={n_views}")
    azimuth = wrap_azimuth(azimuth_start_deg + torch.arange(n_views, dtype=torch.float32) * (360.0 / n_views))
    elevation = torch.full((n_views,), float(elevation_deg))
    dist = torch.full((n_views,), float(distance))
    c2w = orbit_c2w(elevation, azimuth, dist)
    return {
        "c2w": c2w,
        "fov_deg": torch.full((n_views,), float(fovy_deg)),
        "elevation_deg": elevation,
        "azimuth_deg": azimuth,
        "camera_distance": dist,
        "light_positions": c2w[:, :3, 3].clone(),
    }


def camera_rays(cameras: Dict[str, Tensor], height: int, width: int, normalize: bool = True) -> Dict[str, Tensor]:
    """``rays_o``, ``rays_d`` (B, H, W, 3) through the pixel centres of ``cameras`` (keys ``c2w``, ``fov_deg``).

    ``normalize=False`` scales each direction so its component along the optical axis is 1 (camera-space
    z = −1), so that a ray parameter t is the depth along the viewing direction.
    """
    rays_o, rays_d = rays_for_cameras(cameras["c2w"], cameras["fov_deg"], height, width)
    if not normalize:
        forward = -cameras["c2w"][:, None, None, :3, 2]  # (B, 1, 1, 3) optical axis in world space
        rays_d = rays_d / (rays_d * forward).sum(-1, keepdim=True)
    return {"rays_o": rays_o.contiguous(), "rays_d": rays_d.contiguous()}


@dataclass
class RandomCameraConfig:
    """Random training cameras and evaluation orbits (threestudio's ``RandomCameraDataModuleConfig`` keys).

    ``height``, ``width``, ``batch_size``: an int or one value per stage, switched at ``resolution_milestones``.
    Values left ``None`` follow the reference (input) camera: ``fovy_range`` → [fov, fov],
    ``eval_elevation_deg``/``eval_camera_distance``/``eval_fovy_deg`` → the reference's.
    """

    height: Any = 64
    width: Any = 64
    batch_size: Any = 1
    resolution_milestones: List[int] = field(default_factory=list)
    eval_height: int = 512
    eval_width: int = 512
    eval_batch_size: int = 1
    n_val_views: int = 1
    n_test_views: int = 120
    elevation_range: Tuple[float, float] = (-10.0, 90.0)
    elevation_sampling: str = "threestudio"  # threestudio | uniform_area (see sample_elevations)
    azimuth_range: Tuple[float, float] = (-180.0, 180.0)  # relative to the reference view's azimuth
    camera_distance_range: Tuple[float, float] = (1.0, 1.5)
    fovy_range: Optional[Tuple[float, float]] = None  # vertical, degrees; None: fixed to the input's fov
    camera_perturb: float = 0.1
    center_perturb: float = 0.2
    up_perturb: float = 0.02
    light_position_perturb: float = 1.0
    light_distance_range: Tuple[float, float] = (0.8, 1.5)
    eval_elevation_deg: Optional[float] = None
    eval_camera_distance: Optional[float] = None
    eval_fovy_deg: Optional[float] = None
    light_sample_strategy: str = "dreamfusion"
    batch_uniform_azimuth: bool = True
    # elevation/azimuth ranges widen linearly from the reference view to the full ranges:
    # r = min(1, step / (progressive_until + 1)) as in ZeroNVS/threestudio
    progressive_until: int = 0
    rays_d_normalize: bool = True


@dataclass(frozen=True)
class ReferenceCamera:
    """The input view's camera: where the single image was taken from (angles in degrees)."""

    elevation_deg: float
    azimuth_deg: float
    distance: float
    fovy_deg: float

    def cameras(self) -> Dict[str, Tensor]:
        """The camera dict (B = 1) of this view; its light sits at the camera."""
        return orbit_cameras(1, self.elevation_deg, self.distance, self.fovy_deg, self.azimuth_deg)

    def c2w(self) -> Tensor:
        """OpenGL camera-to-world (1, 4, 4)."""
        return self.cameras()["c2w"]


# bounds of what an orbit may ask for: scene units (the scenes are normalised to about unit size; pose files are
# bounded to ±1e4 too) and views per validation / test pass
MAX_CAMERA_DISTANCE = 1e4
MAX_EVAL_VIEWS = 10_000


def check_eval_camera(cfg: Any, prefix: str) -> None:
    """ConfigError for an orbit camera value (``eval_*``) that is NaN, infinite or out of range."""
    checks = (
        ("eval_elevation_deg", lambda v: -90 <= v <= 90, "lie in [-90, 90] degrees"),
        ("eval_camera_distance", lambda v: 0 < v <= MAX_CAMERA_DISTANCE, f"lie in (0, {MAX_CAMERA_DISTANCE:g}]"),
        ("eval_fovy_deg", lambda v: 0 < v < 180, "lie in (0, 180) degrees"),
    )
    for key, valid, what in checks:
        value = getattr(cfg, key, None)
        if value is not None and not valid(value):
            raise ConfigError(f"config key {prefix}.{key} must {what}, got {value}")


def check_random_camera_config(cfg: Any, prefix: str = "data.random_camera") -> None:
    """Raise :class:`ConfigError` naming the key for values the sampler cannot use."""
    for key in ("elevation_range", "azimuth_range", "camera_distance_range", "light_distance_range"):
        as_range(getattr(cfg, key), f"{prefix}.{key}")
    if cfg.fovy_range is not None:
        low, high = as_range(cfg.fovy_range, f"{prefix}.fovy_range")
        if not 0 < low <= high < 180:
            raise ConfigError(f"config key {prefix}.fovy_range must lie in (0, 180) degrees, got {[low, high]}")
    low, high = as_range(cfg.elevation_range, f"{prefix}.elevation_range")
    if low < -90 or high > 90:
        raise ConfigError(f"config key {prefix}.elevation_range must lie within [-90, 90], got {[low, high]}")
    low, high = as_range(cfg.camera_distance_range, f"{prefix}.camera_distance_range")
    if low <= 0 or high > MAX_CAMERA_DISTANCE:
        raise ConfigError(f"config key {prefix}.camera_distance_range must lie in (0, {MAX_CAMERA_DISTANCE:g}], got "
                          f"{[low, high]}")
    check_eval_camera(cfg, prefix)
    if cfg.elevation_sampling not in ELEVATION_SAMPLINGS:
        raise ConfigError(
            f"config key {prefix}.elevation_sampling is {cfg.elevation_sampling!r}; "
            f"valid: {', '.join(ELEVATION_SAMPLINGS)}"
        )
    if cfg.light_sample_strategy not in LIGHT_SAMPLE_STRATEGIES:
        raise ConfigError(
            f"config key {prefix}.light_sample_strategy is {cfg.light_sample_strategy!r}; "
            f"valid: {', '.join(LIGHT_SAMPLE_STRATEGIES)}"
        )
    limits = {"n_val_views": MAX_EVAL_VIEWS, "n_test_views": MAX_EVAL_VIEWS, "eval_height": MAX_IMAGE_SIDE,
              "eval_width": MAX_IMAGE_SIDE, "eval_batch_size": MAX_EVAL_VIEWS}
    for key, most in limits.items():
        if not 1 <= getattr(cfg, key) <= most:
            raise ConfigError(f"config key {prefix}.{key} must lie in [1, {most}], got {getattr(cfg, key)}")
    if cfg.progressive_until < 0:
        raise ConfigError(f"config key {prefix}.progressive_until must be >= 0, got {cfg.progressive_until}")


class RandomCameraSampler(Updateable):
    """Draws batches of random training cameras around a reference view, following the training step.

    ``update_step`` switches the resolution/batch-size stage and widens the elevation and azimuth ranges
    from the reference view to the configured ranges over ``progressive_until`` steps. :meth:`sample`
    uses the state of the last ``update_step``.
    """

    def __init__(self, cfg: RandomCameraConfig, reference: ReferenceCamera, prefix: str = "data.random_camera"):
        check_random_camera_config(cfg, prefix)
        self.cfg = cfg
        self.reference = reference
        self.canonical_c2w = reference.c2w()
        self.stages = StagedResolution(cfg.height, cfg.width, cfg.resolution_milestones, cfg.batch_size, prefix)
        self.fovy_range = (
            (reference.fovy_deg, reference.fovy_deg) if cfg.fovy_range is None else tuple(cfg.fovy_range)
        )
        self.global_step = 0
        self.update_step(0, 0)

    @property
    def stage(self):
        """The current :class:`~threestudio.data.utils.Stage` (height, width, batch_size)."""
        return self.stages.at(self.global_step)

    def progress(self, global_step: int) -> float:
        """Fraction r = min(1, step / (progressive_until + 1)) in [0, 1] of the way from the reference view to the
        full ranges at ``global_step`` (ZeroNVS's formula: the full ranges are reached at progressive_until + 1)."""
        if self.cfg.progressive_until <= 0:
            return 1.0
        return min(1.0, max(0.0, global_step / (self.cfg.progressive_until + 1)))

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        self.global_step = global_step
        r = self.progress(global_step)
        ref_elev = self.reference.elevation_deg
        self.elevation_range = tuple((1 - r) * ref_elev + r * v for v in self.cfg.elevation_range)
        self.azimuth_range = tuple(r * v for v in self.cfg.azimuth_range)  # offsets from the reference azimuth

    def sample(self) -> Dict[str, Any]:
        """A batch of random views at the current stage: the camera dict plus ``rays_o``, ``rays_d``
        (B, h, w, 3), ``height``, ``width`` (ints) and ``canonical_c2w`` (1, 4, 4), the reference camera."""
        cfg, stage = self.cfg, self.stage
        cameras = sample_random_cameras(
            stage.batch_size,
            self.elevation_range,
            self.azimuth_range,
            cfg.camera_distance_range,
            self.fovy_range,
            azimuth_offset_deg=self.reference.azimuth_deg,
            camera_perturb=cfg.camera_perturb,
            center_perturb=cfg.center_perturb,
            up_perturb=cfg.up_perturb,
            light_position_perturb=cfg.light_position_perturb,
            light_distance_range=cfg.light_distance_range,
            light_sample_strategy=cfg.light_sample_strategy,
            batch_uniform_azimuth=cfg.batch_uniform_azimuth,
            elevation_sampling=cfg.elevation_sampling,
        )
        cameras.update(camera_rays(cameras, stage.height, stage.width, cfg.rays_d_normalize))
        cameras.update(height=stage.height, width=stage.width, canonical_c2w=self.canonical_c2w.clone())
        return cameras

    def eval_cameras(self, split: str) -> Dict[str, Tensor]:
        """The validation (``split="val"``) or test orbit: ``n_val_views``/``n_test_views`` cameras at
        ``eval_elevation_deg``/``eval_camera_distance``/``eval_fovy_deg``, starting at the reference azimuth."""
        cfg, ref = self.cfg, self.reference
        n_views = cfg.n_val_views if split == "val" else cfg.n_test_views
        return orbit_cameras(
            n_views,
            ref.elevation_deg if cfg.eval_elevation_deg is None else cfg.eval_elevation_deg,
            ref.distance if cfg.eval_camera_distance is None else cfg.eval_camera_distance,
            ref.fovy_deg if cfg.eval_fovy_deg is None else cfg.eval_fovy_deg,
            ref.azimuth_deg,
        )

    def eval_dataset(self, split: str) -> "OrbitCameraDataset":
        """An :class:`OrbitCameraDataset` of :meth:`eval_cameras` at ``eval_height`` × ``eval_width``."""
        return OrbitCameraDataset(
            self.eval_cameras(split),
            self.cfg.eval_height,
            self.cfg.eval_width,
            canonical_c2w=self.canonical_c2w,
            rays_d_normalize=self.cfg.rays_d_normalize,
        )


class OrbitCameraDataset(Dataset):
    """Fixed evaluation views, one per item; rays are computed per item to keep memory small.

    Batches (via :meth:`collate`) hold the camera keys with B views, ``rays_o``/``rays_d`` (B, H, W, 3),
    ``index`` (B,) long, ``height``/``width`` ints and ``canonical_c2w`` (1, 4, 4) when given.
    """

    def __init__(
        self,
        cameras: Dict[str, Tensor],
        height: int,
        width: int,
        canonical_c2w: Optional[Tensor] = None,
        rays_d_normalize: bool = True,
    ) -> None:
        super().__init__()
        self.cameras = cameras
        self.height, self.width = int(height), int(width)
        self.canonical_c2w = canonical_c2w
        self.rays_d_normalize = rays_d_normalize

    def __len__(self) -> int:
        return self.cameras["c2w"].shape[0]

    def __getitem__(self, index: int) -> Dict[str, Any]:
        view = {k: v[index : index + 1] for k, v in self.cameras.items()}
        view.update(camera_rays(view, self.height, self.width, self.rays_d_normalize))
        view["index"] = torch.tensor([index], dtype=torch.long)
        return view

    def collate(self, items: List[Dict[str, Any]]) -> Dict[str, Any]:
        """Concatenate items along the view dimension and add ``height``, ``width``, ``canonical_c2w``."""
        batch: Dict[str, Any] = {k: torch.cat([item[k] for item in items], dim=0) for k in items[0]}
        batch.update(height=self.height, width=self.width)
        if self.canonical_c2w is not None:
            batch["canonical_c2w"] = self.canonical_c2w.clone()
        return batch
