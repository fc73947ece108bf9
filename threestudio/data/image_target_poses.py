"""One image plus target poses (``image-target-poses-datamodule``): novel views of a single photo.

The input view is ``image_path`` at the canonical camera (the orbit camera at ``default_elevation_deg`` /
``default_azimuth_deg`` / ``default_camera_distance``, looking at the origin) with vertical fov
``default_fovy_deg`` of the processed image (after the optional centre square crop, ``crop_square``). Target poses
come from ``target_c2w_path`` — an N×4×4 OpenGL camera-to-world ``.npy`` or ``.json`` (a list of 4×4 lists, or
``{"c2w": [...]}``) giving each target's pose *in the input camera's frame* (the input camera at the identity);
translations are multiplied by ``pose_scale`` (refused with an orbit) and mapped by ``canonical_c2w · rel`` — or from
``orbit``
(``n_views``, ``elevation_deg``, ``distance``, ``azimuth_start_deg``) around the origin. Targets have no ground
truth; ``index`` is the target's position. Batches and methods are those of
:class:`threestudio.data.posed_views.PosedViewsDataModule` (training rays: the input view, plus generated views).
A posed scene is ``multiview-datamodule``; ``configs/zeronvs_nvs_image.yaml`` is the one-image NVS config.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar, Dict, Optional

import torch

import threestudio
from threestudio.data.posed_views import (
    BACKGROUNDS,
    PosedScene,
    PosedViewsDataModule,
    PosedViewsTrainingConfig,
    ViewSet,
    load_c2w_file,
    prepare_image,
    scale_translation,
)
from threestudio.utils.camera import fov_to_focal
from threestudio.utils.errors import ConfigError
from threestudio.utils.image import load_image

logger = logging.getLogger(__name__)

_SCENE_ONLY = (
    "apply to a posed scene (data_type: multiview-datamodule, data.scene_dir) only, not to one image; remove it"
)


@dataclass
class OrbitSpec:
    """Target cameras on a circle around the origin."""

    n_views: int = 8
    elevation_deg: float = 20.0
    distance: float = 1.0
    azimuth_start_deg: Optional[float] = None  # None: data.default_azimuth_deg


@dataclass
class ImageTargetPosesConfig(PosedViewsTrainingConfig):
    """Config of ``image-target-poses-datamodule`` (see the module docstring)."""

    KEY_HINTS: ClassVar[Dict[str, str]] = {
        key: _SCENE_ONLY
        for key in ("scene_dir", "format", "input_views", "target_views", "excluded_views", "use_masks",
                    "flip_world_yz", "canonicalize")
    }

    image_path: str = ""
    height: int = 256
    width: int = 256
    crop_square: bool = True
    background: str = "none"  # black | white | none
    pose_scale: float = 1.0
    default_elevation_deg: float = 20.0
    default_azimuth_deg: float = 0.0
    default_camera_distance: float = 1.0
    default_fovy_deg: float = 49.1  # vertical fov of the processed input image
    target_c2w_path: Optional[str] = None
    orbit: Optional[OrbitSpec] = None


@threestudio.register("image-target-poses-datamodule")
class ImageTargetPosesDataModule(PosedViewsDataModule):
    """One input image at the canonical camera and target poses without ground truth."""

    Config = ImageTargetPosesConfig
    cfg: ImageTargetPosesConfig

    def check_config(self) -> None:
        cfg = self.cfg
        if not cfg.image_path:
            raise ConfigError("config key data.image_path is empty; set it to the input image")
        if cfg.background not in BACKGROUNDS:
            raise ConfigError(f"config key data.background is {cfg.background!r}; valid: {', '.join(BACKGROUNDS)}")
        for key in ("height", "width"):
            if getattr(cfg, key) <= 0:
                raise ConfigError(f"config key data.{key} must be positive, got {getattr(cfg, key)}")
        if cfg.pose_scale <= 0:
            raise ConfigError(f"config key data.pose_scale must be positive, got {cfg.pose_scale}")
        if cfg.target_c2w_path and cfg.orbit is not None:
            raise ConfigError("set at most one of data.target_c2w_path and data.orbit")
        if cfg.orbit is not None and cfg.pose_scale != 1.0:
            raise ConfigError(
                "data.pose_scale scales the translations of data.target_c2w_path's poses; an orbit is placed by "
                "data.orbit.distance: remove data.pose_scale"
            )

    def load_views(self) -> PosedScene:
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
        target_c2w = self._target_c2w(canonical)
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
        return PosedScene(inputs=inputs, targets=targets)

    def _target_c2w(self, canonical: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if cfg.target_c2w_path:
            rel = scale_translation(load_c2w_file(str(cfg.target_c2w_path)), cfg.pose_scale)
            return canonical @ rel
        if cfg.orbit is not None:
            from threestudio.data.random_camera import orbit_cameras

            o = cfg.orbit
            start = cfg.default_azimuth_deg if o.azimuth_start_deg is None else o.azimuth_start_deg
            return orbit_cameras(o.n_views, o.elevation_deg, o.distance, cfg.default_fovy_deg, start)["c2w"].double()
        logger.warning("image-target-poses data: no data.target_c2w_path or data.orbit; there are no target views")
        return torch.zeros(0, 4, 4, dtype=torch.float64)
