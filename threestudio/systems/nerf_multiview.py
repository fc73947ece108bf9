"""A NeRF fitted to posed views (``system_type: nerf-multiview-system``), on the ``multiview-datamodule``.

Training batches are random rays across the training views (the input views, plus the NVS step's generated
views when ``data.generated_views_dir`` is set): the photometric loss is the per-ray-weighted squared error
``Σ wᵣ‖ĉᵣ − cᵣ‖² / (3 Σ wᵣ)`` (``weight`` = 1 for real views, ``data.generated_weight`` for generated ones),
``system.loss.lambda_rgb``. Optional terms: ``lambda_mask`` (opacity against the mask, for masked scenes),
``lambda_sparsity``, ``lambda_opaque``, ``lambda_distortion`` (mip-NeRF 360's distortion loss in the renderer's
normalised ray spacing: pulls each ray's weights together, removes floaters), the proposal network's interlevel
loss, and ``lambda_sds``: score distillation from the ZeroNVS guidance on random views (``system.random_camera``,
the keys of :class:`threestudio.data.random_camera.RandomCameraConfig`, around the canonical input camera; needs
``data.canonicalize: true`` so the frame matches the diffusion model's).

``--test`` renders every held-out target view, writes ``save/it{step}-test/{index:04d}.png`` (rgb | depth |
opacity), the test video, and ``save/metrics.json`` (PSNR/SSIM/LPIPS against the ground truth, see
:mod:`threestudio.utils.metrics`). With several processes the targets are split as in the NVS system
(:mod:`threestudio.systems.nvs`): set ``trainer.use_distributed_sampler: false``. ``--export`` is
:class:`~threestudio.systems.base.BaseLift3DSystem`'s.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Optional, Sequence

from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import Tensor

import threestudio
from threestudio.data.random_camera import RandomCameraConfig, check_random_camera_config
from threestudio.systems.base import BaseLift3DSystem
from threestudio.systems.heldout import HeldOutMetricsMixin
from threestudio.utils.base import Updateable
from threestudio.utils.config import parse_structured
from threestudio.utils.errors import ConfigError, UserError
from threestudio.utils.loss import distortion_loss, normalized_spacing, opaque_loss, sparsity_loss, weighted_mse

logger = logging.getLogger(__name__)


_NOT_SAMPLED = (
    "is not used by nerf-multiview-system: system.random_camera only samples the SDS views; validation and test "
    "render the datamodule's targets. Remove it"
)


@dataclass
class SDSCameraConfig(RandomCameraConfig):
    """``system.random_camera``: the SDS views' sampler (the sampling keys of
    :class:`~threestudio.data.random_camera.RandomCameraConfig`; its evaluation-orbit keys are refused)."""

    KEY_HINTS: ClassVar[Dict[str, str]] = {
        key: _NOT_SAMPLED
        for key in ("eval_height", "eval_width", "eval_batch_size", "n_val_views", "n_test_views",
                    "eval_elevation_deg", "eval_camera_distance", "eval_fovy_deg")
    }


@threestudio.register("nerf-multiview-system")
class NeRFMultiviewSystem(HeldOutMetricsMixin, BaseLift3DSystem):
    LOSS_NAMES = ("rgb", "mask", "sparsity", "opaque", "distortion", "sds")

    @dataclass
    class Config(BaseLift3DSystem.Config):
        # used only when system.loss.lambda_sds > 0 (else a non-empty guidance or random_camera is an error)
        guidance_type: str = "zeronvs-guidance"
        random_camera: Optional[SDSCameraConfig] = None  # SDS views; null: the defaults
        metrics_use_mask: bool = False  # PSNR over the object mask only

    cfg: Config

    def configure(self) -> None:
        super().configure()
        self._random_cameras = None
        self._random_camera_cfg = None
        self._records: List[Dict[str, Any]] = []
        if self._sds_enabled():
            self._random_camera_cfg = self.cfg.random_camera or parse_structured(SDSCameraConfig, {})
            check_random_camera_config(self._random_camera_cfg, prefix="system.random_camera")
        elif self.cfg.random_camera is not None:
            raise ConfigError(f"system.random_camera is used only with SDS; {self.guidance_hint()}")

    def _sds_enabled(self) -> bool:
        return self._max_weight(self.cfg.loss.get("lambda_sds", 0.0)) > 0

    def uses_guidance(self) -> bool:
        return self._sds_enabled()

    def guidance_hint(self) -> str:
        return "set system.loss.lambda_sds > 0 for score distillation, or remove the section"

    def prepare(self, mode: str, datamodule: Any) -> None:
        if not hasattr(datamodule, "targets") or not hasattr(datamodule, "conditioning"):
            raise ConfigError(
                "nerf-multiview-system needs posed views: data_type multiview-datamodule or "
                "image-target-poses-datamodule"
            )
        if mode == "train" and datamodule.inputs.rgb is None:
            raise UserError("nerf-multiview-system trains on posed images; the input views have none")
        if mode == "train" and self._sds_enabled():
            self._prepare_sds(datamodule)

    def _prepare_sds(self, datamodule: Any) -> None:
        from threestudio.data.random_camera import RandomCameraSampler, ReferenceCamera
        from threestudio.utils.camera import c2w_to_spherical

        if not getattr(datamodule.cfg, "canonicalize", True):  # one image is always at the canonical camera
            raise ConfigError("system.loss.lambda_sds > 0 needs data.canonicalize=true (the diffusion model's frame)")
        cond = datamodule.conditioning()
        elevation, azimuth, distance = (float(v) for v in c2w_to_spherical(cond["c2w"][:1]))
        reference = ReferenceCamera(elevation, azimuth, distance, float(cond["fov_deg"][0]))
        self._random_cameras = RandomCameraSampler(self._random_camera_cfg, reference, prefix="system.random_camera")
        self.load_guidance(cond)

    # ------------------------------------------------------------------ training
    def updateable_children(self) -> Sequence[Updateable]:
        """The NeRF's parts and guidance, and the SDS views' sampler when SDS is on."""
        extra = [self._random_cameras] if self._random_cameras is not None else []
        return [*super().updateable_children(), *extra]

    def training_losses(self, batch: Dict[str, Any]) -> Dict[str, Tensor]:
        terms: Dict[str, Tensor] = {}
        out = self(batch)
        weight = batch.get("weight")
        self.weighted("rgb", weighted_mse(out["comp_rgb"], batch["rgb"], weight), terms)
        if self.loss_enabled("mask"):
            self.weighted("mask", weighted_mse(out["opacity"], batch["mask"].float(), weight), terms)
        if self.loss_enabled("sparsity"):
            self.weighted("sparsity", sparsity_loss(out["opacity"]), terms)
        if self.loss_enabled("opaque"):
            self.weighted("opaque", opaque_loss(out["opacity"]), terms)
        if self.loss_enabled("distortion"):
            self.weighted("distortion", self._distortion(out), terms)
        if "loss_proposal" in out:
            terms["loss_proposal"] = out["loss_proposal"]
        if self._guidance is not None and self.loss_enabled("sds"):
            sds_out = self.sds_step(move_data_to_device(self._random_cameras.sample(), self.device), terms)
            if "loss_proposal" in sds_out:
                terms["loss_proposal"] = terms["loss_proposal"] + sds_out["loss_proposal"]
        return terms

    def _distortion(self, out: Dict[str, Tensor]) -> Tensor:
        n_rays = out["opacity"].numel()
        rcfg = self.renderer.cfg
        s_mid, s_delta = normalized_spacing(
            out["t_points"].reshape(n_rays, -1),
            out["t_intervals"].reshape(n_rays, -1),
            rcfg.near_plane,
            rcfg.far_plane,
            rcfg.sampling_type,
        )
        return distortion_loss(out["weights"].reshape(n_rays, -1), s_mid, s_delta)

    # ------------------------------------------------------------------ test (HeldOutMetricsMixin)
    def metrics_mask(self, batch: Dict[str, Any], k: int) -> Optional[Tensor]:
        return batch["mask"][k] if self.cfg.metrics_use_mask else None
