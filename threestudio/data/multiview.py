"""The multi-view datamodule (``multiview-datamodule``): a posed scene, or one image with target poses.

Two modes:

**Scene mode** (``scene_dir`` set): a folder in the IDR/NeuS layout — ``image/*.png`` (sorted order = camera
index), optional ``mask/*.png``, ``cameras.npz`` (see :mod:`threestudio.data.idr_cameras`). Views are chosen by
dataset index: ``input_views`` (the first is the conditioning/canonical view), ``target_views`` (null = every
view that is neither an input nor in ``excluded_views``) and ``excluded_views``, which only shapes the default
targets: input or target views named explicitly are used even when excluded (with a warning).

Poses, in order: decode ``P = world_mat · scale_mat`` (normalised world: the object fits the unit sphere);
OpenCV → OpenGL (:func:`threestudio.utils.camera.opencv_to_opengl`); if ``flip_world_yz``, rotate the world
180° about x (x, −y, −z): DTU's normalised world has its up roughly along −z, and pixelNeRF's/ZeroNVS's DTU
loader applies the same flip so z is roughly up; multiply all camera translations by ``pose_scale``; then,
if ``canonicalize``, re-express everything in the pipeline's canonical frame as ZeroNVS's DTU evaluation
does (kylesargent/ZeroNVS ``threestudio/data/image.py``, ``ViewSynthesisCameraDataset``)::

    c2w_i ← canonical_c2w · inv(c2w_input) · c2w_i

where ``canonical_c2w`` is the orbit camera at ``default_elevation_deg`` / ``default_azimuth_deg`` /
``default_camera_distance`` looking at the origin (z up). The first input camera then *is* the canonical
camera; the others keep their poses relative to it. ZeroNVS's DTU settings are elevation 20°, azimuth 0,
distance 1 and translations divided by ``view_synthesis.scale: 2.02``, i.e. ``pose_scale = 1 / 2.02``
(≈ 0.495). Without ``canonicalize`` the poses stay in the (flipped, scaled) normalised world and
``canonical_c2w`` is the first input camera. ``scene_center`` / ``scene_radius`` give the object's bounding
sphere (the normalised unit sphere) in the pipeline frame.

**No-scene mode** (``image_path`` set, ``scene_dir`` null): one input image at the canonical camera
(vertical fov ``default_fovy_deg`` of the processed image) and target poses from ``target_c2w_path`` — an
N×4×4 OpenGL camera-to-world ``.npy`` or ``.json`` (a list of 4×4 lists, or ``{"c2w": [...]}``) giving each
target's pose *in the input camera's frame* (the input camera at the identity); translations are multiplied
by ``pose_scale`` and mapped by ``canonical_c2w · rel`` — or from ``orbit`` (``n_views``, ``elevation_deg``,
``distance``, ``azimuth_start_deg``) around the origin. Targets have no ground truth; ``index`` is the
target's position. The scene-only keys (``input_views``, ``target_views``, ``excluded_views``, ``use_masks``,
``flip_world_yz``, ``canonicalize``) are refused here unless left at their defaults, and ``default_fovy_deg`` is
refused in scene mode (``configs/zeronvs_nvs_image.yaml`` is the one-image config).

Images: RGB(A) files; with ``use_masks`` the masks come from ``mask/`` (else from the alpha channel, all
ones for RGB). ``background`` ``"black"``/``"white"`` composites the colour over that background outside the
mask; ``"none"`` leaves it. With ``crop_square`` every image is centre-cropped to a square before resizing to
``height`` × ``width`` (what the NVS model sees; metrics compare against the ground truth cropped the same
way); the crop shifts the principal point. Rays use each camera's real intrinsics scaled to the output
(:func:`threestudio.data.idr_cameras.crop_resize_intrinsics`); ``fov_deg`` is the vertical fov of the output
image (of the crop).

Batches (names of docs/DESIGN.md):

- ``train_dataloader()``: endless random rays across the training views (inputs, plus the generated views of
  ``generated_views_dir``): ``rays_o``, ``rays_d``, ``rgb`` (1, 1, N, 3), ``mask``, ``weight`` (1, 1, N, 1)
  (1 for real views, ``generated_weight`` for generated ones), ``height`` = 1, ``width`` = N =
  ``train_rays_per_batch``.
- ``val_dataloader()`` / ``test_dataloader()``: one target view per batch at ``height`` × ``width``:
  ``rays_o``, ``rays_d`` (1, H, W, 3), ``c2w``, ``canonical_c2w`` (1, 4, 4), ``fov_deg``, ``elevation_deg``,
  ``azimuth_deg``, ``camera_distance``, ``index`` (the dataset view index), ``cond_index`` (position in
  ``input_views`` of the nearest input view) (1,), ``height``, ``width`` (ints), and ``rgb`` (1, H, W, 3),
  ``mask`` (1, H, W, 1) when there is ground truth. Validation uses ``n_val_views`` evenly spaced targets
  (null = all).

Methods: :meth:`MultiviewDataModule.conditioning` — the input views as the diffusion model sees them;
:meth:`MultiviewDataModule.selection` — the nearest input view of every target (``selection`` rule:
``angle`` | ``distance`` | ``mixed``, see :mod:`threestudio.data.view_selection`; centre distances in
normalised units, before ``pose_scale``).

Building the datamodule checks its config; :meth:`MultiviewDataModule.setup` reads the files (once).
Attributes for the systems, after ``setup``: ``inputs`` / ``targets`` (:class:`ViewSet`: ``indices``, ``c2w``,
``intrinsics``, ``fov_deg``, ``rgb``, ``mask``), ``canonical_c2w`` (4, 4), ``cond_index`` (M,), ``near`` / ``far``
(config hints, else estimated from the object's bounding sphere, else None), ``scene_center`` (3,) /
``scene_radius``.

Generated views (``generated_views_dir``): files ``target_{i:03d}.png`` (``i`` = a target's ``index``) at
that target's pose. An image with the output's aspect ratio uses the target's own geometry; a square image
of a non-square camera is taken as the centre square crop (what the NVS step produces), at
``height`` × ``height`` pixels.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset

import threestudio
from threestudio.data.idr_cameras import (
    CAMERAS_FILENAME,
    IDRCamera,
    crop_resize_intrinsics,
    list_images,
    load_idr_cameras,
)
from threestudio.data.view_selection import SELECTION_RULES, select_nearest
from threestudio.utils.base import Configurable
from threestudio.utils.camera import (
    c2w_to_spherical,
    focal_to_fov,
    fov_to_focal,
    get_ray_directions,
    get_rays,
    orbit_c2w,
)
from threestudio.utils.config import config_to_primitive
from threestudio.utils.errors import ConfigError, UserError
from threestudio.utils.image import composite, crop_to_square, load_image, resize_image

logger = logging.getLogger(__name__)

BACKGROUNDS = {"black": 0.0, "white": 1.0, "none": None}
# keys of one mode only: set to anything but their default in the other mode, they are an error
SCENE_ONLY_KEYS = ("input_views", "target_views", "excluded_views", "use_masks", "flip_world_yz", "canonicalize")
NO_SCENE_ONLY_KEYS = ("default_fovy_deg",)
_FLIP_WORLD_YZ = (1.0, -1.0, -1.0, 1.0)


@dataclass
class OrbitSpec:
    """Target cameras on a circle around the origin (no-scene mode)."""

    n_views: int = 8
    elevation_deg: float = 20.0
    distance: float = 1.0
    azimuth_start_deg: Optional[float] = None  # None: data.default_azimuth_deg


@dataclass
class MultiviewDataModuleConfig:
    """Config of ``multiview-datamodule`` (see the module docstring)."""

    scene_dir: Optional[str] = None
    image_path: Optional[str] = None  # no-scene mode
    input_views: List[int] = field(default_factory=lambda: [0])
    target_views: Optional[List[int]] = None  # null: all views that are neither inputs nor excluded
    excluded_views: List[int] = field(default_factory=list)
    height: int = 256
    width: int = 256
    crop_square: bool = True
    use_masks: bool = False
    background: str = "none"  # black | white | none
    canonicalize: bool = True
    flip_world_yz: bool = True
    pose_scale: float = 1.0
    default_elevation_deg: float = 20.0
    default_azimuth_deg: float = 0.0
    default_camera_distance: float = 1.0
    default_fovy_deg: float = 49.1  # no-scene mode: vertical fov of the processed input image
    target_c2w_path: Optional[str] = None
    orbit: Optional[OrbitSpec] = None
    selection: str = "angle"  # angle | distance | mixed
    selection_distance_weight: float = 10.0  # mixed: degrees per normalised unit of centre distance
    train_rays_per_batch: int = 1024
    generated_views_dir: Optional[str] = None
    generated_weight: float = 0.5
    n_val_views: Optional[int] = None
    near: Optional[float] = None  # hints for the renderer; null: estimated from the object's bounding sphere
    far: Optional[float] = None
    seed: int = 0  # random ray sampling


@dataclass
class ViewSet:
    """A set of views in the pipeline frame. ``rgb``/``mask`` are None for views without ground truth."""

    indices: Tensor  # (N,) long: dataset view index (no-scene targets: position)
    c2w: Tensor  # (N, 4, 4) OpenGL camera-to-world, pipeline frame
    intrinsics: Tensor  # (N, 4) fx, fy, cx, cy in output pixels (pixel centres at i + 0.5)
    fov_deg: Tensor  # (N,) vertical fov of the output image
    selection_c2w: Tensor  # (N, 4, 4) poses for view selection (normalised world, before pose_scale)
    raw_K: Tensor  # (N, 3, 3) intrinsics of the source image (OpenCV pixels)
    raw_size: Tuple[int, int]  # (W, H) of the source images
    rgb: Optional[Tensor] = None  # (N, H, W, 3) in [0, 1]
    mask: Optional[Tensor] = None  # (N, H, W, 1) in {0, 1}

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def subset(self, positions: Sequence[int]) -> "ViewSet":
        """The views at ``positions`` (indices into this set)."""
        pos = torch.as_tensor(list(positions), dtype=torch.long)
        per_view = {
            f.name: getattr(self, f.name)[pos]
            for f in dataclasses.fields(self)
            if f.name != "raw_size" and getattr(self, f.name) is not None
        }
        return dataclasses.replace(self, **per_view)


def view_rays(c2w: Tensor, intrinsics: Tensor, height: int, width: int) -> Tuple[Tensor, Tensor]:
    """World rays (N, H, W, 3) of cameras ``c2w`` (N, 4, 4) with ``intrinsics`` (N, 4) = fx, fy, cx, cy."""
    rays_o, rays_d = [], []
    for cam, (fx, fy, cx, cy) in zip(c2w, intrinsics.tolist()):
        dirs = get_ray_directions(height, width, (fx, fy), (cx, cy))
        o, d = get_rays(dirs, cam[None].float())
        rays_o.append(o)
        rays_d.append(d)
    return torch.cat(rays_o), torch.cat(rays_d)


def prepare_image(
    rgba: Tensor, mask: Optional[Tensor], height: int, width: int, crop_square: bool, background: Optional[float]
) -> Tuple[Tensor, Tensor]:
    """(H0, W0, 4) RGBA and optional (H0, W0) mask → ``rgb`` (H, W, 3), ``mask`` (H, W, 1) in {0, 1}.

    The mask defaults to alpha > 0.5; ``background`` (a grey level, or None) replaces colour outside it (before
    resizing, so edges blend with the background, and again outside the resized, binarised mask).
    """
    if mask is None:
        mask = (rgba[..., 3] > 0.5).float()
    rgb = rgba[..., :3]
    if background is not None:
        rgb = composite(torch.cat([rgb, mask[..., None]], dim=-1), background)
    stacked = torch.cat([rgb, mask[..., None]], dim=-1)
    if crop_square:
        stacked = crop_to_square(stacked, "center_crop")
    stacked = resize_image(stacked, height, width).clamp(0.0, 1.0)
    rgb, mask = stacked[..., :3], (stacked[..., 3:] > 0.5).float()
    if background is not None:  # exactly the background outside the binarised mask
        rgb = rgb * mask + background * (1.0 - mask)
    return rgb.contiguous(), mask


MAX_POSE_TRANSLATION = 1e4  # scene units; the input camera is about 1 from the origin


def load_c2w_file(path: str) -> Tensor:
    """Camera-to-world matrices (N, 4, 4) from a ``.npy`` or ``.json`` file; UserError naming file and index."""
    if not os.path.isfile(path):
        raise UserError(f"target_c2w_path not found: {path}")
    try:
        if path.lower().endswith(".json"):
            with open(path) as f:
                data = json.load(f)
            if isinstance(data, dict):
                if "c2w" not in data:
                    raise ValueError('a JSON object must have a "c2w" key holding the N×4×4 list')
                data = data["c2w"]
            arr = np.asarray(data, dtype=np.float64)
        else:
            arr = np.asarray(np.load(path, allow_pickle=False), dtype=np.float64)
    except Exception as e:
        raise UserError(f"cannot read camera poses {path}: {str(e).splitlines()[0] or type(e).__name__}") from None
    if arr.shape == (4, 4):
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != (4, 4) or arr.shape[0] == 0:
        raise UserError(f"{path}: expected N×4×4 camera-to-world matrices, got shape {arr.shape}")
    for i, m in enumerate(arr):
        if not np.all(np.isfinite(m)):
            raise UserError(f"{path}: camera {i} has non-finite entries")
        if abs(np.linalg.det(m[:3, :3])) < 1e-6 or not np.allclose(m[3], [0, 0, 0, 1], atol=1e-6):
            raise UserError(f"{path}: camera {i} is not a rigid camera-to-world matrix (singular or bad last row)")
        if np.abs(m[:3, :3]).max() > 1e3 or np.abs(m[:3, 3]).max() > MAX_POSE_TRANSLATION:
            raise UserError(
                f"{path}: camera {i} has entries of {np.abs(m[:3]).max():.3g}; poses are relative to the input "
                f"camera in scene units (translations within ±{MAX_POSE_TRANSLATION:g})"
            )
    return torch.from_numpy(arr)


def _scale_translation(c2w: Tensor, scale: float) -> Tensor:
    out = c2w.clone()
    out[..., :3, 3] *= scale
    return out


def _spherical(c2w: Tensor) -> Dict[str, Tensor]:
    elevation, azimuth, distance = c2w_to_spherical(c2w.float())
    return {"elevation_deg": elevation, "azimuth_deg": azimuth, "camera_distance": distance}


class MultiviewRayDataset(IterableDataset):
    """Endless batches of random rays across the training views (uniform over all their pixels)."""

    def __init__(self, views: List[Tuple[ViewSet, int, int, float]], rays_per_batch: int, seed: int = 0) -> None:
        """``views``: (view set with ground truth, height, width, loss weight) groups."""
        super().__init__()
        parts: Dict[str, List[Tensor]] = {k: [] for k in ("rays_o", "rays_d", "rgb", "mask", "weight")}
        for vs, h, w, weight in views:
            rays_o, rays_d = view_rays(vs.c2w, vs.intrinsics, h, w)
            parts["rays_o"].append(rays_o.reshape(-1, 3))
            parts["rays_d"].append(rays_d.reshape(-1, 3))
            parts["rgb"].append(vs.rgb.reshape(-1, 3))
            parts["mask"].append(vs.mask.reshape(-1, 1))
            parts["weight"].append(torch.full((rays_o.shape[0] * h * w, 1), float(weight)))
        self.rays = {k: torch.cat(v).float().contiguous() for k, v in parts.items()}
        self.rays_per_batch = rays_per_batch
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:  # rays available (the iterator itself is endless)
        return int(self.rays["rays_o"].shape[0])

    def sample(self) -> Dict[str, Any]:
        idx = torch.randint(0, len(self), (self.rays_per_batch,), generator=self.generator)
        batch: Dict[str, Any] = {k: v[idx][None, None] for k, v in self.rays.items()}
        batch.update(height=1, width=self.rays_per_batch)
        return batch

    def __iter__(self):
        while True:
            yield self.sample()

    def collate(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        return batch


class MultiviewEvalDataset(Dataset):
    """One target view per item, at the output resolution (see the module docstring for the keys)."""

    def __init__(self, targets: ViewSet, cond_index: Tensor, canonical_c2w: Tensor, height: int, width: int) -> None:
        super().__init__()
        self.targets, self.cond_index = targets, cond_index
        self.canonical_c2w, self.height, self.width = canonical_c2w, height, width

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, k: int) -> Dict[str, Any]:
        t = self.targets
        c2w = t.c2w[k : k + 1].float()
        rays_o, rays_d = view_rays(c2w, t.intrinsics[k : k + 1], self.height, self.width)
        batch: Dict[str, Any] = {
            "rays_o": rays_o,
            "rays_d": rays_d,
            "c2w": c2w,
            "canonical_c2w": self.canonical_c2w[None].float(),
            "fov_deg": t.fov_deg[k : k + 1].float(),
            **_spherical(c2w),
            "height": self.height,
            "width": self.width,
            "index": t.indices[k : k + 1],
            "cond_index": self.cond_index[k : k + 1],
        }
        if t.rgb is not None:
            batch["rgb"] = t.rgb[k : k + 1]
            batch["mask"] = t.mask[k : k + 1]
        return batch

    def collate(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        return batch


@threestudio.register("multiview-datamodule")
class MultiviewDataModule(LightningDataModule, Configurable):
    """Posed multi-view scene (or one image + target poses): input views, held-out targets, random rays.

    Building it checks the config; :meth:`setup` reads the files (once) and makes ``inputs``, ``targets`` and the
    other attributes of the module docstring available.
    """

    Config = MultiviewDataModuleConfig
    cfg: MultiviewDataModuleConfig

    def __init__(self, cfg: Optional[Any] = None) -> None:
        super().__init__()
        self._configure_from(cfg)

    def configure(self) -> None:
        self._check_config()
        self._loaded = False
        self.background = BACKGROUNDS[self.cfg.background]
        # the canonical camera of the pipeline: the input view's pose when canonicalising / in no-scene mode
        self.orbit_canonical_c2w = orbit_c2w(
            torch.tensor([float(self.cfg.default_elevation_deg)], dtype=torch.float64),
            torch.tensor([float(self.cfg.default_azimuth_deg)], dtype=torch.float64),
            torch.tensor([float(self.cfg.default_camera_distance)], dtype=torch.float64),
        )[0]

    def _load(self) -> None:
        """Read the scene (or the image and target poses) and choose each target's conditioning view, once."""
        if self._loaded:
            return
        # object bounding sphere in the pipeline frame (None when unknown)
        self.scene_center: Optional[Tensor] = None
        self.scene_radius: Optional[float] = None
        if self.cfg.scene_dir:
            self.inputs, self.targets = self._load_scene()
        else:
            self.inputs, self.targets = self._load_single_image()
        self.canonical_c2w: Tensor = self.inputs.c2w[0].float()
        if len(self.targets):
            cond, angles, distances = select_nearest(
                self.inputs.selection_c2w,
                self.targets.selection_c2w,
                self.cfg.selection,
                self.cfg.selection_distance_weight,
            )
        else:
            cond, angles, distances = torch.zeros(0, dtype=torch.long), torch.zeros(0), torch.zeros(0)
        # per target: position in input_views of its conditioning view, and that pair's angle / centre distance
        self.cond_index, self._angles, self._distances = cond, angles, distances
        self.near, self.far = self._near_far()
        logger.info(
            "multiview data: %d input view(s) %s, %d target view(s), %dx%d%s",
            len(self.inputs),
            self.inputs.indices.tolist(),
            len(self.targets),
            self.cfg.width,
            self.cfg.height,
            " (centre square crop)" if self.cfg.crop_square else "",
        )
        self._loaded = True

    # ------------------------------------------------------------------ config
    def _check_config(self) -> None:
        cfg = self.cfg
        if bool(cfg.scene_dir) == bool(cfg.image_path):
            raise ConfigError(
                "set exactly one of data.scene_dir (a posed IDR/NeuS scene folder) or data.image_path (one image)"
            )
        if cfg.background not in BACKGROUNDS:
            raise ConfigError(f"config key data.background is {cfg.background!r}; valid: {', '.join(BACKGROUNDS)}")
        if cfg.selection not in SELECTION_RULES:
            raise ConfigError(f"config key data.selection is {cfg.selection!r}; valid: {', '.join(SELECTION_RULES)}")
        for key in ("height", "width", "train_rays_per_batch"):
            if getattr(cfg, key) <= 0:
                raise ConfigError(f"config key data.{key} must be positive, got {getattr(cfg, key)}")
        if cfg.pose_scale <= 0:
            raise ConfigError(f"config key data.pose_scale must be positive, got {cfg.pose_scale}")
        if cfg.n_val_views is not None and cfg.n_val_views < 1:
            raise ConfigError(f"config key data.n_val_views must be null or ≥ 1, got {cfg.n_val_views}")
        if cfg.scene_dir and (cfg.target_c2w_path or cfg.orbit is not None):
            raise ConfigError(
                "data.target_c2w_path and data.orbit are for no-scene mode (data.image_path); with data.scene_dir "
                "choose targets with data.target_views"
            )
        if cfg.image_path and cfg.target_c2w_path and cfg.orbit is not None:
            raise ConfigError("set at most one of data.target_c2w_path and data.orbit")
        defaults = MultiviewDataModuleConfig()
        mode_only = SCENE_ONLY_KEYS if cfg.image_path else NO_SCENE_ONLY_KEYS
        misplaced = [k for k in mode_only if config_to_primitive(getattr(cfg, k)) != getattr(defaults, k)]
        if misplaced:
            keys = ", ".join(f"data.{k}" for k in misplaced)
            if cfg.image_path:
                raise ConfigError(
                    f"{keys} apply to a posed scene (data.scene_dir) only, not to one image (data.image_path); "
                    "remove them (configs/zeronvs_nvs_image.yaml is the one-image config)"
                )
            raise ConfigError(f"{keys} apply to one image (data.image_path) only; a scene's cameras give the fov")
        if not cfg.input_views and cfg.scene_dir:
            raise ConfigError("config key data.input_views is empty; give at least one dataset view index")

    def _check_indices(self, n: int, npz: str) -> Tuple[List[int], List[int]]:
        cfg = self.cfg
        inputs = [int(i) for i in cfg.input_views]
        excluded = {int(i) for i in cfg.excluded_views}
        targets = None if cfg.target_views is None else [int(i) for i in cfg.target_views]
        for key, values in (("input_views", inputs), ("target_views", targets or []), ("excluded_views", excluded)):
            for i in values:
                if not 0 <= i < n:
                    raise UserError(f"data.{key}: camera index {i} is out of range; {npz} has cameras 0..{n - 1}")
        if len(set(inputs)) != len(inputs):
            raise ConfigError(f"config key data.input_views has repeated views: {inputs}")
        # excluded_views only shapes the default targets: views the user names explicitly win, with a warning
        for key, values in (("input_views", inputs), ("target_views", targets or [])):
            named = sorted(set(values) & excluded)
            if named:
                logger.warning("data.%s names camera(s) %s of data.excluded_views: used anyway", key, named)
        if targets is None:
            targets = [i for i in range(n) if i not in excluded and i not in inputs]
        if not targets:
            logger.warning("multiview data: no target views; validation and test have nothing to render")
        return inputs, targets

    # ------------------------------------------------------------------ loading
    def _load_scene(self) -> Tuple[ViewSet, ViewSet]:
        cfg = self.cfg
        scene_dir = str(cfg.scene_dir)
        if not os.path.isdir(scene_dir):
            raise UserError(f"data.scene_dir not found: {scene_dir}")
        npz = os.path.join(scene_dir, CAMERAS_FILENAME)
        image_paths = list_images(os.path.join(scene_dir, "image"))
        if not image_paths:
            raise UserError(f"no images in {os.path.join(scene_dir, 'image')}: expected the IDR/NeuS layout")
        cameras = load_idr_cameras(scene_dir, normalize=True)
        n = len(cameras)
        if len(image_paths) != n:
            raise UserError(
                f"{os.path.join(scene_dir, 'image')} has {len(image_paths)} images but {npz} has {n} cameras; "
                "they must match one to one (sorted file order = camera index)"
            )
        mask_paths: List[str] = []
        if cfg.use_masks:
            mask_paths = list_images(os.path.join(scene_dir, "mask"))
            if len(mask_paths) != n:
                raise UserError(
                    f"{os.path.join(scene_dir, 'mask')} has {len(mask_paths)} masks but {npz} has {n} cameras; "
                    "set data.use_masks=false or provide one mask per camera"
                )
        inputs, targets = self._check_indices(n, npz)
        if not cameras[0].normalized:
            logger.warning("%s has no scale_mat_<i>: poses stay in the raw world's units", npz)

        # normalised world (OpenGL) → world flip → (selection poses) → pose_scale → canonical frame
        c2w = torch.from_numpy(np.stack([cam.c2w_opengl for cam in cameras]))
        if cfg.flip_world_yz:
            c2w = torch.tensor(_FLIP_WORLD_YZ, dtype=c2w.dtype)[:, None] * c2w  # diag(flip) @ c2w
        selection_c2w = c2w.clone()
        c2w = _scale_translation(c2w, cfg.pose_scale)
        world_to_pipeline = torch.eye(4, dtype=c2w.dtype)
        if cfg.canonicalize:
            world_to_pipeline = self.orbit_canonical_c2w @ torch.linalg.inv(c2w[inputs[0]])
            c2w = world_to_pipeline @ c2w
        if cameras[0].normalized:  # the object's unit sphere, in the pipeline frame
            self.scene_center = world_to_pipeline[:3, 3].float()
            self.scene_radius = float(cfg.pose_scale)

        def view_set(indices: List[int]) -> ViewSet:
            intr, fovs, rgbs, masks = [], [], [], []
            for i in indices:
                cam = cameras[i]
                fx, fy, cx, cy = crop_resize_intrinsics(cam.K, cam.image_size, (cfg.width, cfg.height), cfg.crop_square)
                intr.append([fx, fy, cx, cy])
                fovs.append(focal_to_fov(fy, cfg.height))
                rgb, mask = self._load_view(i, image_paths[i], mask_paths[i] if mask_paths else None, cam)
                rgbs.append(rgb)
                masks.append(mask)
            idx = torch.as_tensor(indices, dtype=torch.long)
            return ViewSet(
                indices=idx,
                c2w=c2w[idx],
                intrinsics=torch.tensor(intr, dtype=torch.float64).reshape(-1, 4),
                fov_deg=torch.tensor(fovs, dtype=torch.float32),
                selection_c2w=selection_c2w[idx],
                raw_K=torch.from_numpy(np.stack([cameras[i].K for i in indices])) if indices else torch.zeros(0, 3, 3),
                raw_size=cameras[0].image_size,
                rgb=torch.stack(rgbs) if rgbs else torch.zeros(0, cfg.height, cfg.width, 3),
                mask=torch.stack(masks) if masks else torch.zeros(0, cfg.height, cfg.width, 1),
            )

        return view_set(inputs), view_set(targets)

    def _load_view(self, i: int, image_path: str, mask_path: Optional[str], cam: IDRCamera) -> Tuple[Tensor, Tensor]:
        try:
            rgba = load_image(image_path)
            mask = None if mask_path is None else load_image(mask_path)[..., 0]
        except UserError as e:
            raise UserError(f"camera {i}: {e}") from None
        size = (rgba.shape[1], rgba.shape[0])
        if tuple(cam.image_size) != size:
            raise UserError(
                f"camera {i}: image {image_path} is {size[0]}x{size[1]} but the scene's images are "
                f"{cam.image_size[0]}x{cam.image_size[1]}; all images must have the same size"
            )
        if mask is not None and tuple(mask.shape) != (size[1], size[0]):
            raise UserError(
                f"camera {i}: mask {mask_path} is {mask.shape[1]}x{mask.shape[0]}, image is {size[0]}x{size[1]}"
            )
        return prepare_image(rgba, mask, self.cfg.height, self.cfg.width, self.cfg.crop_square, self.background)

    def _load_single_image(self) -> Tuple[ViewSet, ViewSet]:
        cfg = self.cfg
        rgba = load_image(str(cfg.image_path))
        rgb, mask = prepare_image(rgba, None, cfg.height, cfg.width, cfg.crop_square, self.background)
        focal = float(fov_to_focal(float(cfg.default_fovy_deg), cfg.height))
        intrinsics = torch.tensor([[focal, focal, cfg.width / 2, cfg.height / 2]], dtype=torch.float64)
        raw_K = torch.tensor([[focal, 0, cfg.width / 2 - 0.5], [0, focal, cfg.height / 2 - 0.5], [0, 0, 1]])
        canonical = self.orbit_canonical_c2w
        inputs = ViewSet(
            indices=torch.zeros(1, dtype=torch.long),
            c2w=canonical[None],
            intrinsics=intrinsics,
            fov_deg=torch.tensor([float(cfg.default_fovy_deg)]),
            selection_c2w=canonical[None],
            raw_K=raw_K[None].double(),
            raw_size=(cfg.width, cfg.height),
            rgb=rgb[None],
            mask=mask[None],
        )
        if cfg.target_c2w_path:
            rel = _scale_translation(load_c2w_file(str(cfg.target_c2w_path)), cfg.pose_scale)
            target_c2w = canonical @ rel
        elif cfg.orbit is not None:
            from threestudio.data.random_camera import orbit_cameras

            o = cfg.orbit
            start = cfg.default_azimuth_deg if o.azimuth_start_deg is None else o.azimuth_start_deg
            target_c2w = orbit_cameras(o.n_views, o.elevation_deg, o.distance, cfg.default_fovy_deg, start)["c2w"]
            target_c2w = target_c2w.double()
        else:
            logger.warning("multiview data: no data.target_c2w_path or data.orbit; there are no target views")
            target_c2w = torch.zeros(0, 4, 4, dtype=torch.float64)
        m = target_c2w.shape[0]
        targets = ViewSet(
            indices=torch.arange(m),
            c2w=target_c2w,
            intrinsics=intrinsics.repeat(m, 1),
            fov_deg=torch.full((m,), float(cfg.default_fovy_deg)),
            selection_c2w=target_c2w,
            raw_K=raw_K[None].double().repeat(m, 1, 1),
            raw_size=(cfg.width, cfg.height),
        )
        return inputs, targets

    def _near_far(self) -> Tuple[Optional[float], Optional[float]]:
        near, far = self.cfg.near, self.cfg.far
        if self.scene_center is not None and (near is None or far is None):
            centers = torch.cat([self.inputs.c2w, self.targets.c2w])[:, :3, 3].float()
            dist = (centers - self.scene_center).norm(dim=-1)
            if near is None:
                near = max(float(dist.min()) - self.scene_radius, 0.01 * self.scene_radius)
            if far is None:
                far = float(dist.max()) + self.scene_radius
        return near, far

    def _load_generated(self) -> Optional[Tuple[ViewSet, int, int]]:
        """The NVS step's images of the targets as extra training views, or None when not configured."""
        cfg = self.cfg
        if not cfg.generated_views_dir:
            return None
        folder = str(cfg.generated_views_dir)
        if not os.path.isdir(folder):
            raise UserError(f"data.generated_views_dir not found: {folder}")
        found = [
            (k, os.path.join(folder, f"target_{int(i):03d}.png"))
            for k, i in enumerate(self.targets.indices.tolist())
            if os.path.isfile(os.path.join(folder, f"target_{int(i):03d}.png"))
        ]
        if not found:
            raise UserError(f"no generated views target_<index>.png for the target views in {folder}")
        images = [load_image(path) for _, path in found]
        gh, gw = images[0].shape[:2]
        raw_w, raw_h = self.targets.raw_size
        if abs(gw / gh - cfg.width / cfg.height) < 1e-3:
            crop, out_w, out_h = cfg.crop_square, cfg.width, cfg.height
        elif gw == gh:
            crop, out_w, out_h = True, cfg.height, cfg.height
        else:
            raise UserError(
                f"generated view {found[0][1]} is {gw}x{gh}: expected the output aspect {cfg.width}x{cfg.height} "
                "or a square (centre crop)"
            )
        rgbs, masks, intr = [], [], []
        for (k, path), rgba in zip(found, images):
            if rgba.shape[:2] != (gh, gw):
                raise UserError(f"generated view {path} is {rgba.shape[1]}x{rgba.shape[0]}; all must be {gw}x{gh}")
            rgb, mask = prepare_image(rgba, None, out_h, out_w, False, self.background)
            rgbs.append(rgb)
            masks.append(mask)
            intr.append(crop_resize_intrinsics(self.targets.raw_K[k].numpy(), (raw_w, raw_h), (out_w, out_h), crop))
        views = self.targets.subset([k for k, _ in found])
        views.intrinsics = torch.tensor(intr, dtype=torch.float64)
        views.rgb, views.mask = torch.stack(rgbs), torch.stack(masks)
        logger.info("multiview data: %d generated view(s) from %s at %dx%d", len(found), folder, out_w, out_h)
        return views, out_h, out_w

    # ------------------------------------------------------------------ Lightning API
    def setup(self, stage: Optional[str] = None) -> None:
        """Read the files (first call only) and build the datasets of ``stage`` (None: all)."""
        self._load()
        cfg = self.cfg
        if stage in (None, "fit"):
            groups = [(self.inputs, cfg.height, cfg.width, 1.0)]
            generated = self._load_generated()
            if generated is not None:
                views, h, w = generated
                groups.append((views, h, w, float(cfg.generated_weight)))
            self.train_dataset = MultiviewRayDataset(groups, cfg.train_rays_per_batch, seed=cfg.seed)
        if stage in (None, "fit", "validate"):
            positions = list(range(len(self.targets)))
            if cfg.n_val_views is not None and cfg.n_val_views < len(positions):
                positions = np.linspace(0, len(positions) - 1, cfg.n_val_views).round().astype(int).tolist()
            self.val_dataset = MultiviewEvalDataset(
                self.targets.subset(positions), self.cond_index[positions], self.canonical_c2w, cfg.height, cfg.width
            )
        if stage in (None, "test", "predict"):
            self.test_dataset = MultiviewEvalDataset(
                self.targets, self.cond_index, self.canonical_c2w, cfg.height, cfg.width
            )

    def _loader(self, dataset: Any) -> DataLoader:
        return DataLoader(dataset, batch_size=None, num_workers=0, collate_fn=dataset.collate)

    def train_dataloader(self) -> DataLoader:
        if not hasattr(self, "train_dataset"):
            self.setup("fit")
        return self._loader(self.train_dataset)

    def val_dataloader(self) -> DataLoader:
        if not hasattr(self, "val_dataset"):
            self.setup("validate")
        return self._loader(self.val_dataset)

    def test_dataloader(self) -> DataLoader:
        if not hasattr(self, "test_dataset"):
            self.setup("test")
        return self._loader(self.test_dataset)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    # ------------------------------------------------------------------ for the systems
    def conditioning(self) -> Dict[str, Tensor]:
        """The input views as the diffusion model sees them: ``images`` (N, H, W, 3) in [0, 1] (square with
        ``crop_square``), ``c2w`` (N, 4, 4), ``fov_deg`` (N,), ``indices`` (N,) dataset view indices."""
        return {
            "images": self.inputs.rgb.clone(),
            "c2w": self.inputs.c2w.float().clone(),
            "fov_deg": self.inputs.fov_deg.clone(),
            "indices": self.inputs.indices.clone(),
        }

    def selection(self) -> List[Dict[str, Any]]:
        """For every target: ``{"target", "source"}`` dataset indices, the pair's rotation ``angle_deg`` and
        ``center_distance`` (normalised units, before ``pose_scale``)."""
        return [
            {
                "target": int(t),
                "source": int(self.inputs.indices[c]),
                "angle_deg": float(a),
                "center_distance": float(d),
            }
            for t, c, a, d in zip(
                self.targets.indices.tolist(), self.cond_index.tolist(), self._angles.tolist(), self._distances.tolist()
            )
        ]
