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

Test batches are the posed-view batches (``rgb``, ``mask``, ``index``, ...; :mod:`threestudio.data.posed_views`)
at ``scene.height`` × ``scene.width``; the test loader yields one view per batch.
"""

from __future__ import annotations

import dataclasses
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
from threestudio.data.single_image import SingleImageDataModule, SingleImageDataModuleConfig
from threestudio.data.view_selection import select_nearest
from threestudio.utils.camera import focal_to_fov
from threestudio.utils.config import config_to_primitive
from threestudio.utils.errors import ConfigError, UserError
from threestudio.utils.image import load_image

logger = logging.getLogger(__name__)

SCENE_INTRINSICS = ("zeronvs", "calibrated")


_CANONICAL = "is not a scene key: the input camera of the single-image pipeline is data.{0}; remove it"


@dataclass
class SceneSectionConfig(PosedSceneConfig):
    """``data.scene``: the posed scene's files and views (:class:`~threestudio.data.posed_views.PosedSceneConfig`)."""

    KEY_HINTS: ClassVar[Dict[str, str]] = {
        key: _CANONICAL.format(key)
        for key in ("default_elevation_deg", "default_azimuth_deg", "default_camera_distance")
    }


@dataclass
class SingleViewSceneConfig(SingleImageDataModuleConfig):
    """``single-image-datamodule`` keys plus the posed scene (see the module docstring)."""

    default_fovy_deg: Any = "auto"  # auto: from the scene's input camera (see scene_intrinsics); a number wins
    scene: SceneSectionConfig = field(default_factory=SceneSectionConfig)
    scene_intrinsics: str = "zeronvs"  # zeronvs | calibrated


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
        if not cfg.scene.canonicalize:
            raise ConfigError("data.scene.canonicalize must be true: test poses are relative to the input camera")
        check_posed_scene_config(cfg.scene, prefix="data.scene")
        self.scene: Optional[PosedScene] = None  # read by setup
        super().configure()

    def _load_image(self) -> Tensor:
        """The whole input frame as straight-alpha RGBA (H, W, 4): the reference view is not cropped."""
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
        if self.scene is None:
            cfg = self.cfg
            canonical = canonical_camera(
                cfg.default_elevation_deg, cfg.default_azimuth_deg, cfg.default_camera_distance
            )
            self.scene = load_posed_scene(cfg.scene, canonical, prefix="data.scene")
        super().setup(stage)
        if stage in (None, "test", "predict"):
            self.test_dataset = self._test_dataset()

    def _test_dataset(self) -> PosedViewDataset:
        scene, targets = self.scene, self.scene.targets
        height, width = int(self.cfg.scene.height), int(self.cfg.scene.width)
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
        return self.scene.targets

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_dataset, batch_size=None, num_workers=0, collate_fn=self.test_dataset.collate)
