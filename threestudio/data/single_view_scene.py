"""Single-image SDS from one view of a posed scene, tested on the scene's other views (ZeroNVS's DTU protocol).

``single-view-scene-datamodule`` is the single-image datamodule (:mod:`threestudio.data.single_image`: the same
training batches, random cameras, validation orbit and conditioning) whose input is the first of
``scene.input_views`` of the posed scene ``scene`` (a :class:`SceneSectionConfig`: the scene keys of
:class:`threestudio.data.posed_views.PosedSceneConfig`, read with the shared posed-view loading), and whose test
split is that scene's target views with their ground truth, posed in the canonical frame of the input camera
(``data.default_elevation_deg`` / ``default_azimuth_deg`` / ``default_camera_distance``; ``scene.canonicalize``
must be true). This is what ZeroNVS's ``data.view_synthesis`` does for DTU (kylesargent/ZeroNVS
``threestudio/data/image.py``).

- The reference view (RGB loss) is the whole input frame at ``data.height`` × ``data.width`` (same aspect as the
  image); the guidance is conditioned on its ``crop_mode`` square (``center_crop``: ZeroNVS's central crop).
- ``image_path`` and (when ``auto``) ``default_fovy_deg`` are filled in from the scene by :meth:`resolve_config`
  (which reads the scene's cameras), so the trial's parsed config records them.
- ``scene_intrinsics``: ``zeronvs`` (ZeroNVS's DTU evaluation) renders the reference and every test view with a
  centred pinhole camera whose vertical fov is ``2·atan(cy / fy)`` of the input camera; ``calibrated`` uses each
  test view's own intrinsics (principal point included) and the input's fov ``2·atan(H / 2fy)``.

``scene_format: mipnerf360`` takes the scene from :mod:`threestudio.data.mipnerf360` instead (a Mip-NeRF 360 release
folder or converted ``.npz``; ``scene`` keys: ``scene_dir``, ``view_idx``, ``resolution``,
``manual_gt_to_pred_scale``; see :class:`MipNeRF360SceneConfig`): the input is the ``view_idx``-th view in the angle
order, its ``resolution``² frame is the reference image, the test views are all the other views at that size, and
``default_fovy_deg: auto`` is the frames' fov. ``auto`` in ``default_elevation_deg``,
``random_camera.eval_elevation_deg`` and ``random_camera.elevation_range`` (ZeroNVS's Mip-NeRF 360 evaluation) is the
input camera's elevation ``e`` and ZeroNVS's range around it (:func:`threestudio.data.mipnerf360.elevation_range`);
all are recorded in the parsed config. ``data.scene`` is checked against the format's own typed config when the
datamodule is built.

Test batches are the posed-view batches (``rgb``, ``mask``, ``index``, ...; :mod:`threestudio.data.posed_views`)
at ``scene.height`` × ``scene.width``; the test loader yields one view per batch.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torch.utils.data import DataLoader

import threestudio
from threestudio.data.posed_views import (
    SCENE_FORMATS,
    PosedScene,
    PosedSceneConfig,
    PosedViewDataset,
    ViewSet,
    canonical_camera,
    check_posed_scene_config,
    load_posed_scene,
)
from threestudio.data.random_camera import RandomCameraConfig
from threestudio.data.single_image import SingleImageDataModule, SingleImageDataModuleConfig, resolve_auto_fovy
from threestudio.data.view_selection import select_nearest
from threestudio.utils.camera import focal_to_fov, orbit_c2w
from threestudio.utils.config import config_to_primitive, in_section, parse_structured
from threestudio.utils.errors import ConfigError, UserError
from threestudio.utils.image import load_image

logger = logging.getLogger(__name__)

SCENE_INTRINSICS = ("zeronvs", "calibrated")
SCENE_SOURCES = ("idr", "mipnerf360")  # data.scene_format


_CANONICAL = "is not a scene key: the input camera of the single-image pipeline is data.{0}; remove it"


@dataclass
class SceneSectionConfig(PosedSceneConfig):
    """``data.scene``: the posed scene's files and views (:class:`~threestudio.data.posed_views.PosedSceneConfig`)."""

    KEY_HINTS: ClassVar[Dict[str, str]] = {
        **{key: _CANONICAL.format(key)
           for key in ("default_elevation_deg", "default_azimuth_deg", "default_camera_distance")},
        # canonicalize (required here) re-expresses every pose relative to the input camera: a world rotation cancels
        "flip_world_yz": "has no effect here: the poses are re-expressed relative to the input camera "
                         "(canonicalize), which undoes any rotation of the world; remove it",
    }


@dataclass
class SceneRandomCameraConfig(RandomCameraConfig):
    """``data.random_camera``: the SDS views and the validation orbit; the test views are the scene's."""

    KEY_HINTS: ClassVar[Dict[str, str]] = {
        "n_test_views": "is not used: the test pass renders the scene's target views (data.scene); remove it",
    }


@dataclass
class SingleViewSceneConfig(SingleImageDataModuleConfig):
    """``single-image-datamodule`` keys plus the posed scene (see the module docstring)."""

    random_camera: SceneRandomCameraConfig = field(default_factory=SceneRandomCameraConfig)

    default_fovy_deg: Any = "auto"  # auto: from the scene's input camera (see scene_intrinsics); a number wins
    # scene_format idr: a SceneSectionConfig; mipnerf360: a MipNeRF360SceneConfig (checked when built)
    scene: Any = field(default_factory=dict)
    scene_intrinsics: str = "zeronvs"  # zeronvs | calibrated
    scene_format: str = "idr"  # idr (threestudio.data.posed_views) | mipnerf360 (threestudio.data.mipnerf360)


@dataclass
class MipNeRF360SceneConfig:
    """``data.scene`` of ``scene_format: mipnerf360`` (ZeroNVS's ``data.view_synthesis`` for Mip-NeRF 360)."""

    scene_dir: str = ""  # release folder (poses_bounds.npy, images_N/) or a converted SCENE.npz
    view_idx: int = 0  # rank of the input view in the angle order (launch_eval_mipnerf360.sh's view_idxs)
    resolution: int = 256  # square frames of every view (ZeroNVS: 256)
    manual_gt_to_pred_scale: float = 1.0  # test-pose translations (relative to the input) are divided by it
    # filled from data.default_* (the canonical input camera): not scene keys
    default_elevation_deg: float = 0.0
    default_azimuth_deg: float = 0.0
    default_camera_distance: float = 1.0
    canonicalize: bool = True

    @property
    def height(self) -> int:
        return self.resolution

    @property
    def width(self) -> int:
        return self.resolution


@functools.lru_cache(maxsize=1)
def _mipnerf360_scene(scene_dir: str, view_idx: int, resolution: int):
    from threestudio.data.mipnerf360 import load_scene

    return load_scene(scene_dir, view_idx, resolution)


def _mipnerf360_config(cfg: Any) -> MipNeRF360SceneConfig:
    scene = dict(config_to_primitive(cfg.get("scene") or {}))
    allowed = {"scene_dir", "view_idx", "resolution", "manual_gt_to_pred_scale"}
    unknown = sorted(set(scene) - allowed)
    if unknown:
        raise ConfigError(f"data.scene.{unknown[0]} is not a key of scene_format mipnerf360; valid: "
                          f"{', '.join(sorted(allowed))}")
    if not scene.get("scene_dir") or scene.get("scene_dir") == "???":
        raise ConfigError("config key data.scene.scene_dir is empty; set it to the Mip-NeRF 360 scene folder or .npz")
    try:
        out = MipNeRF360SceneConfig(**scene)
        out.view_idx, out.resolution = int(out.view_idx), int(out.resolution)
        out.manual_gt_to_pred_scale = float(out.manual_gt_to_pred_scale)
    except (TypeError, ValueError):
        raise ConfigError(f"data.scene: view_idx and resolution must be integers, manual_gt_to_pred_scale a number; "
                          f"got {scene}") from None
    if out.resolution < 1 or out.manual_gt_to_pred_scale <= 0:
        raise ConfigError("data.scene.resolution and data.scene.manual_gt_to_pred_scale must be positive")
    for key in ("default_elevation_deg", "default_azimuth_deg", "default_camera_distance"):
        value = cfg.get(key, getattr(SingleViewSceneConfig, key))
        if str(value) != "auto":  # auto: not resolved yet (resolve_config reads the scene first)
            setattr(out, key, float(value))
    return out


class MipNeRF360SceneViews:
    """The scene side of the datamodule for ``scene_format: mipnerf360``: ``targets``, ``cond_index`` and
    ``canonical_c2w`` of the test pass, from :mod:`threestudio.data.mipnerf360`."""

    def __init__(self, cfg: MipNeRF360SceneConfig) -> None:
        self.cfg = cfg
        self.loaded = None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.loaded is not None:
            return
        cfg = self.cfg
        scene = self.loaded = _mipnerf360_scene(cfg.scene_dir, cfg.view_idx, cfg.resolution)
        canonical = orbit_c2w(*(torch.tensor([v], dtype=torch.float64) for v in (
            cfg.default_elevation_deg, cfg.default_azimuth_deg, cfg.default_camera_distance)))[0]
        # ZeroNVS: c2w_k ← canonical · (inv(c2w_input) · c2w_k with its translation / manual_gt_to_pred_scale)
        relative = torch.linalg.inv(scene.c2w[scene.input_index]) @ scene.c2w
        relative[:, :3, 3] /= cfg.manual_gt_to_pred_scale
        c2w = canonical @ relative
        idx = torch.as_tensor(scene.target_indices, dtype=torch.long)
        n, size = len(idx), cfg.resolution
        focal = float(scene.intrinsics[0, 0])
        K = torch.tensor([[focal, 0.0, size / 2 - 0.5], [0.0, focal, size / 2 - 0.5], [0.0, 0.0, 1.0]])
        self.targets = ViewSet(
            indices=idx, c2w=c2w[idx], intrinsics=scene.intrinsics[idx], fov_deg=torch.full((n,), scene.fovy_deg),
            selection_c2w=scene.c2w[idx], raw_K=K.double().expand(n, 3, 3).clone(), raw_size=(size, size),
            rgb=scene.images[idx], mask=torch.ones(n, size, size, 1),
        )
        self.cond_index = torch.zeros(n, dtype=torch.long)
        self.canonical_c2w = c2w[scene.input_index].float()

    def input_rgba(self) -> Tensor:
        """The input view's frame as RGBA (S, S, 4)."""
        self.setup()
        rgb = self.loaded.images[self.loaded.input_index]
        return torch.cat([rgb, torch.ones_like(rgb[..., :1])], dim=-1)


def _resolve_mipnerf360(cfg: DictConfig) -> DictConfig:
    """``image_path`` and the ``auto`` fov and elevations from the scene (ZeroNVS's ``SingleImageDataModule.__init__``
    for Mip-NeRF 360)."""
    scene_cfg = _mipnerf360_config(cfg)
    scene = _mipnerf360_scene(scene_cfg.scene_dir, scene_cfg.view_idx, scene_cfg.resolution)
    source = scene.image_paths[scene.input_index] if scene.image_paths else scene_cfg.scene_dir
    if cfg.get("image_path") and os.path.abspath(cfg.image_path) != os.path.abspath(source):
        raise ConfigError("data.image_path comes from data.scene (its input view); remove the key")
    cfg.image_path = source
    if str(cfg.get("default_fovy_deg", "auto")) == "auto":
        cfg.default_fovy_deg = round(scene.fovy_deg, 4)
    resolve_auto_fovy(cfg)  # "auto" in the random camera's fov keys
    elevation = round(scene.elevation_deg, 4)
    if str(cfg.get("default_elevation_deg")) == "auto":
        cfg.default_elevation_deg = elevation
    camera = cfg.get("random_camera") or {}
    if str(camera.get("eval_elevation_deg")) == "auto":
        cfg.random_camera.eval_elevation_deg = elevation
    if str(camera.get("elevation_range")) == "auto":
        cfg.random_camera.elevation_range = list(scene.elevation_range)
    logger.info("Mip-NeRF 360 scene %s: input view %d (%s), fovy %.3f°, elevation %.2f° (ZeroNVS range %s)",
                scene_cfg.scene_dir, scene.input_index, scene.names[scene.input_index], scene.fovy_deg,
                scene.elevation_deg, list(scene.elevation_range))
    return cfg


def centred_intrinsics(fovy_deg: float, height: int, width: int, n: int) -> Tensor:
    """(n, 4) fx, fy, cx, cy of a centred pinhole camera with square pixels and vertical fov ``fovy_deg``."""
    focal = 0.5 * height / math.tan(math.radians(fovy_deg) / 2)
    return torch.tensor([[focal, focal, width / 2.0, height / 2.0]] * n, dtype=torch.float64).reshape(n, 4)


@threestudio.register("single-view-scene-datamodule")
class SingleViewSceneDataModule(SingleImageDataModule):
    """SDS from one scene view (the single-image pipeline); test on the scene's targets with ground truth."""

    Config = SingleViewSceneConfig
    cfg: SingleViewSceneConfig

    @staticmethod
    def resolve_config(cfg: Optional[Any]) -> DictConfig:
        """``cfg`` with ``image_path`` (the first input view's file) and, when ``auto``, ``default_fovy_deg`` (its
        camera's, see ``scene_intrinsics``) filled in from the scene, whose cameras it reads. The runner calls this
        before it saves the trial's parsed config, so both are recorded there."""
        cfg = OmegaConf.create(config_to_primitive(cfg) if cfg is not None else {})
        if cfg.get("scene_format", "idr") == "mipnerf360":
            return _resolve_mipnerf360(cfg)
        scene = cfg.get("scene") or {}
        scene_dir = scene.get("scene_dir")
        if not scene_dir or OmegaConf.is_missing(scene, "scene_dir"):
            raise ConfigError("config key data.scene.scene_dir is empty; set it to the posed scene folder")
        fmt = str(scene.get("format", PosedSceneConfig.format))
        if fmt not in SCENE_FORMATS:
            raise ConfigError(f"config key data.scene.format is {fmt!r}; valid: {', '.join(SCENE_FORMATS)}")
        cameras = SCENE_FORMATS[fmt](str(scene_dir), False)
        index = int((scene.get("input_views") or [0])[0])
        if not 0 <= index < len(cameras):
            raise UserError(f"data.scene.input_views: view {index} has no image in {scene_dir}")
        image = cameras.image_paths[index]
        if cfg.get("image_path") and os.path.abspath(cfg.image_path) != os.path.abspath(image):
            raise ConfigError("data.image_path comes from data.scene (its first input view); remove the key")
        cfg.image_path = image
        if str(cfg.get("default_fovy_deg", "auto")) == "auto":
            K = cameras.K[index].numpy()
            mode = cfg.get("scene_intrinsics", SingleViewSceneConfig.scene_intrinsics)
            height = load_image(image).shape[0]
            cfg.default_fovy_deg = (
                math.degrees(2 * math.atan2(float(K[1, 2]), float(K[1, 1])))
                if mode == "zeronvs"
                else float(focal_to_fov(float(K[1, 1]), height))
            )
            logger.info("data.default_fovy_deg = %.3f (camera %d of %s, %s)", cfg.default_fovy_deg, index, scene_dir,
                        mode)
        return cfg

    def configure(self) -> None:
        cfg = self.cfg
        if cfg.scene_intrinsics not in SCENE_INTRINSICS:
            raise ConfigError(
                f"config key data.scene_intrinsics is {cfg.scene_intrinsics!r}; valid: {', '.join(SCENE_INTRINSICS)}"
            )
        if cfg.scene_format not in SCENE_SOURCES:
            valid = ", ".join(SCENE_SOURCES)
            raise ConfigError(f"config key data.scene_format is {cfg.scene_format!r}; valid: {valid}")
        self.scene: Optional[PosedScene] = None  # read by setup (idr)
        self.mipnerf360: Optional[MipNeRF360SceneViews] = None
        if cfg.scene_format == "mipnerf360":
            self.mipnerf360 = MipNeRF360SceneViews(_mipnerf360_config(cfg))
        else:
            self.scene_cfg = parse_structured(SceneSectionConfig, in_section(cfg.scene, "data.scene"))
            if not self.scene_cfg.canonicalize:
                raise ConfigError("data.scene.canonicalize must be true: test poses are relative to the input camera")
            check_posed_scene_config(self.scene_cfg, prefix="data.scene")
        super().configure()

    def _load_image(self) -> Tensor:
        """The whole input frame as straight-alpha RGBA (H, W, 4): the reference view is not cropped."""
        if self.mipnerf360 is not None:
            rgba = self.mipnerf360.input_rgba()  # the scene's square frame of the input view, as the test views
        else:
            rgba = load_image(self.cfg.image_path)
        aspect = rgba.shape[1] / rgba.shape[0]
        for s in self.stages.stages:
            if abs(s.width / s.height - aspect) > 0.01 * aspect:
                raise ConfigError(
                    f"data.height × data.width ({s.height}×{s.width}) must keep the input frame's aspect "
                    f"({rgba.shape[0]}×{rgba.shape[1]})"
                )
        return rgba

    def setup(self, stage: Optional[str] = None) -> None:
        """Read the input frame and the scene (first call only) and build the datasets of ``stage``."""
        if self.mipnerf360 is not None:
            self.mipnerf360.setup()
        elif self.scene is None:
            cfg = self.cfg
            canonical = canonical_camera(
                cfg.default_elevation_deg, cfg.default_azimuth_deg, cfg.default_camera_distance
            )
            self.scene = load_posed_scene(self.scene_cfg, canonical, prefix="data.scene")
        super().setup(stage)
        if stage in (None, "test", "predict"):
            self.test_dataset = self._test_dataset()

    def _test_dataset(self) -> PosedViewDataset:
        if self.mipnerf360 is not None:
            m360 = self.mipnerf360
            size = m360.cfg.resolution
            return PosedViewDataset(m360.targets, m360.cond_index, m360.canonical_c2w, size, size)
        scene, targets = self.scene, self.scene.targets
        height, width = int(self.scene_cfg.height), int(self.scene_cfg.width)
        if self.cfg.scene_intrinsics == "zeronvs":
            fovy = float(self.cfg.default_fovy_deg)
            targets = dataclasses.replace(
                targets,
                intrinsics=centred_intrinsics(fovy, height, width, len(targets)),
                fov_deg=torch.full((len(targets),), fovy),
            )
        if len(targets):
            cond_index = select_nearest(scene.inputs.selection_c2w, scene.targets.selection_c2w)[0]
        else:
            cond_index = torch.zeros(0, dtype=torch.long)
        return PosedViewDataset(targets, cond_index, scene.inputs.c2w[0].float(), height, width)

    @property
    def targets(self) -> ViewSet:
        """The scene's test views (for the systems' metrics)."""
        return self.mipnerf360.targets if self.mipnerf360 is not None else self.scene.targets

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_dataset, batch_size=None, num_workers=0, collate_fn=self.test_dataset.collate)
