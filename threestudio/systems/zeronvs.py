"""ZeroNVS: SDS distillation of a NeRF from one image (``system_type: zeronvs-system``).

Each step renders the datamodule's random views and scores them with the guidance (SDS), renders the
reference view and compares it with the input image (RGB/mask losses), and adds the geometry
regularisers. All weights are ``system.loss.lambda_*`` and may be schedules.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Dict

import torch.nn.functional as F
from torch import Tensor

import threestudio
from threestudio.systems.base import BaseLift3DSystem
from threestudio.systems.heldout import HeldOutMetricsMixin
from threestudio.utils.errors import ConfigError
from threestudio.utils.loss import normal_smoothness_2d, opaque_loss, orientation_loss, sparsity_loss

logger = logging.getLogger(__name__)


@dataclass
class FreqConfig:
    """``system.freq`` (ZeroNVS's keys): ``ref_only_steps`` = steps with the reference-view loss only."""

    ref_only_steps: int = 0
    guidance_eval: int = 0  # ZeroNVS's guidance evaluation images: not implemented here, so it must stay 0


@threestudio.register("zeronvs-system")
class ZeroNVSSystem(HeldOutMetricsMixin, BaseLift3DSystem):
    """SDS from the guidance plus the reference-view losses; the test pass scores posed test views that carry
    ground truth (``posed-inputs-datamodule``, :mod:`threestudio.systems.heldout`)."""

    LOSS_NAMES = ("sds", "rgb", "mask", "normal_smooth", "orient", "sparsity", "opaque")
    UNSUPPORTED_LOSS_NAMES = ("depth", "depth_rel", "normal", "3d_normal_smooth", "distortion", "clip")

    @dataclass
    class Config(BaseLift3DSystem.Config):
        guidance_type: str = "zeronvs-guidance"
        freq: FreqConfig = field(default_factory=FreqConfig)

    cfg: Config

    def configure(self) -> None:
        super().configure()
        if self.cfg.freq.guidance_eval:
            raise ConfigError("system.freq.guidance_eval is not supported; set it to 0")

    def prepare(self, mode: str, datamodule: Any) -> None:
        if mode == "train":
            self.load_guidance(datamodule.conditioning())

    def on_fit_start(self) -> None:
        if self._guidance is None:
            raise RuntimeError("prepare('train', datamodule) must run before fitting")
        super().on_fit_start()

    def _regularisers(self, out: Dict[str, Tensor], terms: Dict[str, Tensor], is_reference: bool) -> None:
        if self.loss_enabled("normal_smooth"):
            if "comp_normal" not in out:
                raise ConfigError("system.loss.lambda_normal_smooth needs system.renderer.return_comp_normal=true")
            self.weighted("normal_smooth", normal_smoothness_2d(out["comp_normal"]), terms)
        if self.loss_enabled("orient"):
            if "normal" not in out:
                raise ConfigError("system.loss.lambda_orient needs normals: set system.geometry.normal_type")
            self.weighted(
                "orient", orientation_loss(out["weights"], out["normal"], out["t_dirs"], out["opacity"]), terms
            )
        if not is_reference and self.loss_enabled("sparsity"):
            self.weighted("sparsity", sparsity_loss(out["opacity"]), terms)
        if self.loss_enabled("opaque"):
            self.weighted("opaque", opaque_loss(out["opacity"]), terms)
        if "loss_proposal" in out:
            terms["loss_proposal"] = terms.get("loss_proposal", 0.0) + out["loss_proposal"]

    def training_losses(self, batch: Dict[str, Any]) -> Dict[str, Tensor]:
        terms: Dict[str, Tensor] = {}
        if self.true_global_step >= self.cfg.freq.ref_only_steps:
            out = self.sds_step(batch["random_camera"], terms)
            self._regularisers(out, terms, is_reference=False)

        out = self(batch)
        mask = batch["mask"].float()
        gt_rgb = batch["rgb"] * mask + out["comp_rgb_bg"] * (1 - mask)
        self.weighted("rgb", F.mse_loss(out["comp_rgb"], gt_rgb), terms)
        self.weighted("mask", F.mse_loss(out["opacity"], mask), terms)
        self._regularisers(out, terms, is_reference=True)
        return terms
