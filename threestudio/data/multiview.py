"""The posed-scene datamodule (``multiview-datamodule``): input views and held-out targets of a posed scene.

The scene (``scene_dir``, its ``format``), the choice of input/target views, the poses (world flip,
``pose_scale``, the canonical frame) and the image preparation are those of
:mod:`threestudio.data.posed_views` (:class:`~threestudio.data.posed_views.PosedSceneConfig` keys); the canonical
camera is the orbit camera at ``default_elevation_deg`` / ``default_azimuth_deg`` / ``default_camera_distance``.
One image with target poses is ``image-target-poses-datamodule`` (:mod:`threestudio.data.image_target_poses`).

Batches: ``train_dataloader()`` — endless random rays across the training views (inputs, plus the generated views
of ``generated_views_dir`` with loss weight ``generated_weight``), ``train_rays_per_batch`` rays a batch;
``val_dataloader()`` / ``test_dataloader()`` — one target view per batch at ``height`` × ``width`` with its ground
truth (validation: ``n_val_views`` evenly spaced targets, null = all). Keys: :mod:`threestudio.data.posed_views`.

Methods for the systems: ``conditioning()`` (the input views as the diffusion model sees them) and ``selection()``
(the nearest input view of every target by the ``selection`` rule: ``angle`` | ``distance`` | ``mixed``,
:mod:`threestudio.data.view_selection`; centre distances in scene units, before ``pose_scale``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Dict

import threestudio
from threestudio.data.posed_views import (
    PosedScene,
    PosedSceneConfig,
    PosedViewDataset,
    PosedViewsDataModule,
    PosedViewsTrainingConfig,
    ViewSet,
    check_posed_scene_config,
    load_posed_scene,
)

__all__ = ["MultiviewDataModule", "MultiviewDataModuleConfig", "PosedViewDataset", "ViewSet"]

_ONE_IMAGE = "is for one image with target poses: use data_type: image-target-poses-datamodule (no-scene mode, "
_NEAR_FAR = "is not read by anything; the renderer's ray bounds are system.renderer.near_plane / far_plane: remove it"


@dataclass
class MultiviewDataModuleConfig(PosedSceneConfig, PosedViewsTrainingConfig):
    """Config of ``multiview-datamodule`` (see the module docstring)."""

    KEY_HINTS: ClassVar[Dict[str, str]] = {
        "image_path": _ONE_IMAGE + "configs/zeronvs_nvs_image.yaml)",
        "target_c2w_path": _ONE_IMAGE + "configs/zeronvs_nvs_image.yaml); with data.scene_dir choose targets "
        "with data.target_views",
        "orbit": _ONE_IMAGE + "configs/zeronvs_nvs_image.yaml); with data.scene_dir choose targets with "
        "data.target_views",
        "default_fovy_deg": "apply to one image (data_type: image-target-poses-datamodule) only; a scene's cameras "
        "give the fov",
        "near": _NEAR_FAR,
        "far": _NEAR_FAR,
    }

    default_elevation_deg: float = 20.0
    default_azimuth_deg: float = 0.0
    default_camera_distance: float = 1.0


@threestudio.register("multiview-datamodule")
class MultiviewDataModule(PosedViewsDataModule):
    """A posed scene: input views, held-out targets with ground truth, random rays for training."""

    Config = MultiviewDataModuleConfig
    cfg: MultiviewDataModuleConfig

    def check_config(self) -> None:
        check_posed_scene_config(self.cfg)

    def load_views(self) -> PosedScene:
        return load_posed_scene(self.cfg, self.orbit_canonical_c2w)
