"""Diffusion-only novel view synthesis (``system_type: nvs-system``): ZeroNVS sampled directly, no SDS, no NeRF.

Run with ``--test`` (there is nothing to train) on ``multiview-datamodule`` (a posed scene) or
``image-target-poses-datamodule`` (one image). For every target view the datamodule names the nearest input view
(``cond_index``, :meth:`~threestudio.data.posed_views.PosedViewsDataModule.selection`); the diffusion
model is conditioned on that single image with the camera embedding of (source → target) and sampled with DDIM
and classifier-free guidance. Several targets go through one forward pass (``system.sampling.targets_per_batch``):
the system collects the datamodule's one-target test batches and samples them together.

Reproducibility: the initial latent of target ``i`` is drawn from ``seed + i`` alone, so it does not depend on
the batching or on the number of processes; with ``eta > 0`` DDIM also draws noise at every step, from a
generator seeded with ``seed`` + the first target index of the batch, so bit-identical results need the same
``targets_per_batch`` and device count (or ``eta: 0``).

Many processes (``trainer.devices=N trainer.strategy=ddp``): target ``k`` of the test loader belongs to rank
``k mod world_size`` (no padding, so every target is written exactly once). The config sets
``trainer.use_distributed_sampler: false`` so that Lightning does not shard (and pad) the loader itself; a
sharded loader is refused. Each rank writes its results to ``save/.partial/``; after a barrier rank 0 merges them.
The contact sheet is built from the generated images kept in memory; with several processes rank 0 reads the
other ranks' images back from ``nvs/`` (each rank has written its own there before the barrier).

Outputs in ``save/``: ``nvs/target_{i:03d}.png`` (``i`` = the dataset view index; the image at the datamodule's
``height`` × ``width``), ``selection.json``, ``metrics.json`` (when the targets have ground truth) and
``contact_sheet.png`` (one row per target: source | generated | ground truth when present). Every file is
written atomically (temporary name, then rename).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional

import torch
from torch import Tensor

import threestudio
from threestudio.systems.base import BaseSystem
from threestudio.utils.distributed import (
    check_every_target_once,
    check_unsharded_test_loader,
    gather_records,
    owns_batch,
)
from threestudio.utils.errors import ConfigError, UserError
from threestudio.utils.io import write_json_atomic
from zeronvs_diffusion.model_config import DiffusionModelConfig, check_model_config, resolve_weights_dtype
from zeronvs_diffusion.prior import DiffusionPrior

logger = logging.getLogger(__name__)


@dataclass
class NVSModelConfig(DiffusionModelConfig):
    """``system.diffusion_model``: the diffusion model that is sampled, the keys of ``zeronvs-guidance``'s model
    (their defaults for direct sampling: guidance scale 3, half-precision weights on CUDA)."""

    guidance_scale: float = 3.0
    half_precision_weights: bool = True


@dataclass
class NVSSamplingConfig:
    """``system.sampling``: DDIM settings (ZeroNVS's direct sampling: 50 steps, eta 1) and batching."""

    steps: int = 50
    eta: float = 1.0
    seed: int = 0
    targets_per_batch: int = 4


@threestudio.register("nvs-system")
class NVSSystem(BaseSystem):
    """Sample each target view from the ZeroNVS diffusion model conditioned on its nearest input view."""

    @dataclass
    class Config(BaseSystem.Config):
        KEY_HINTS: ClassVar[Dict[str, str]] = {
            "guidance": "was renamed: nvs-system samples a diffusion model and has no guidance; use "
                        "system.diffusion_model (same keys)",
        }
        diffusion_model: NVSModelConfig = field(default_factory=NVSModelConfig)
        sampling: NVSSamplingConfig = field(default_factory=NVSSamplingConfig)
        metrics_use_mask: bool = False  # PSNR over the object mask only (the ZeroNVS DTU protocol uses full images)
        contact_sheet: bool = True

    cfg: Config

    def configure(self) -> None:
        self.model_cfg: NVSModelConfig = self.cfg.diffusion_model
        self.sampling_cfg: NVSSamplingConfig = self.cfg.sampling
        m, s = self.model_cfg, self.sampling_cfg
        check_model_config(m, "system.diffusion_model")
        if s.steps < 1 or s.targets_per_batch < 1:
            raise ConfigError("system.sampling.steps and system.sampling.targets_per_batch must be >= 1")
        if not 0.0 <= s.eta <= 1.0:
            raise ConfigError(f"system.sampling.eta must be in [0, 1], got {s.eta}")
        self._model: Optional[DiffusionPrior] = None  # not an nn.Module child: never saved, never moved by Lightning
        self._pending: List[Dict[str, Any]] = []
        self._records: List[Dict[str, Any]] = []
        self._generated: Dict[int, Tensor] = {}  # target index → its image as written (uint8), for the contact sheet

    def prepare(self, mode: str, datamodule: Any) -> None:
        if mode != "test":
            raise UserError(f"nvs-system only samples views: run launch.py with --test (not --{mode})")
        if not hasattr(datamodule, "conditioning") or not hasattr(datamodule, "selection"):
            raise ConfigError(
                "nvs-system needs input views and target poses: data_type multiview-datamodule (a posed scene) or "
                "image-target-poses-datamodule (one image)"
            )
        height, width = datamodule.cfg.height, datamodule.cfg.width
        if height != width:
            raise ConfigError(
                f"nvs-system samples square views but data.height × data.width is {height}×{width}; set both to the "
                "model's resolution (256 for the released model) with data.crop_square=true"
            )
        from zeronvs_diffusion.sources import load_configured_model

        self._model = load_configured_model(self.model_cfg)
        self._conditioning = datamodule.conditioning()
        self._selection = datamodule.selection()
        self._target_indices = [int(i) for i in datamodule.targets.indices.tolist()]

    # ------------------------------------------------------------------ sampling
    def on_test_start(self) -> None:
        if self._model is None:
            raise RuntimeError("prepare('test', datamodule) must run before testing")
        check_unsharded_test_loader(self.trainer)
        m = self.model_cfg
        dtype = resolve_weights_dtype(m.dtype, m.half_precision_weights, torch.device(self.device))
        self._model.to(device=self.device, dtype=dtype)
        self._pending, self._records, self._generated = [], [], {}

    def test_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        if not owns_batch(self.trainer, batch_idx):
            return
        for k in range(batch["index"].shape[0]):
            item = {
                "index": int(batch["index"][k]),
                "cond_index": int(batch["cond_index"][k]),
                "c2w": batch["c2w"][k].float().cpu(),
                "height": int(batch["height"]),
                "width": int(batch["width"]),
            }
            if "rgb" in batch:
                item["rgb"] = batch["rgb"][k].float().cpu()
                item["mask"] = batch["mask"][k].float().cpu()
            self._pending.append(item)
        if len(self._pending) >= self.sampling_cfg.targets_per_batch:
            self._sample_pending()

    def _initial_latents(self, indices: List[int]) -> Tensor:
        """(N, C, h, w) initial noise, target ``i`` drawn from ``seed + i`` (independent of batching)."""
        shape = (self._model.latent_channels, *self._model.latent_size)
        seed = self.sampling_cfg.seed
        return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed + i)) for i in indices])

    @torch.no_grad()
    def sample(self, items: List[Dict[str, Any]]) -> Tensor:
        """Sample the views of ``items`` (dicts with ``index``, ``cond_index``, ``c2w`` (4, 4)) in one batch.

        Returns (N, R, R, 3) in [0, 1] at the model's resolution. The camera embedding uses the source view's
        vertical field of view.
        """
        import zeronvs_diffusion
        from threestudio.utils.progress import progress

        cond = self._conditioning
        src = torch.tensor([it["cond_index"] for it in items], dtype=torch.long)
        indices = [it["index"] for it in items]
        device = self.device
        generator = torch.Generator().manual_seed(self.sampling_cfg.seed + indices[0])
        bar = progress(total=self.sampling_cfg.steps, desc=f"DDIM, {len(items)} view(s)", unit="step", leave=False)
        images = zeronvs_diffusion.sample_views(
            self._model,
            cond["images"][src].to(device),
            cond["c2w"][src].to(device),
            torch.stack([it["c2w"] for it in items]).to(device),
            cond["fov_deg"][src].to(device),
            self.model_cfg.precomputed_scale,
            steps=self.sampling_cfg.steps,
            eta=self.sampling_cfg.eta,
            guidance_scale=self.model_cfg.guidance_scale,
            generator=generator,
            x_T=self._initial_latents(indices),
            on_step=lambda _: bar.update(),
        )
        bar.close()
        return images.float().permute(0, 2, 3, 1).cpu()

    def _sample_pending(self) -> None:
        if not self._pending:
            return
        from threestudio.utils.image import resize_image, save_image, to_uint8
        from threestudio.utils.metrics import compute_metrics

        items, self._pending = self._pending, []
        images = self.sample(items)
        for item, image in zip(items, images):
            h, w = item["height"], item["width"]
            if image.shape[:2] != (h, w):
                image = resize_image(image, h, w).clamp(0.0, 1.0)
            save_image(self.save_path(f"nvs/target_{item['index']:03d}.png"), image)
            if self.cfg.contact_sheet:
                self._generated[item["index"]] = torch.from_numpy(to_uint8(image))
            record: Dict[str, Any] = {"target": item["index"], "source_position": item["cond_index"]}
            if "rgb" in item:
                mask = item["mask"] if self.cfg.metrics_use_mask else None
                record.update(compute_metrics(image, item["rgb"], mask))
            self._records.append(record)
        logger.info("sampled target view(s) %s", [it["index"] for it in items])

    def on_test_epoch_end(self) -> None:
        self._sample_pending()
        records = gather_records(self, "nvs", self._records)
        self._records = []
        if records is None:
            self._generated = {}
            return
        check_every_target_once(records, self._target_indices)
        write_json_atomic(self.save_path("selection.json"), self._selection)
        has_gt = bool(records) and "psnr" in records[0]
        if has_gt:
            from threestudio.utils.metrics import write_metrics_json

            payload = write_metrics_json(self.save_path("metrics.json"), records)
            logger.info("NVS metrics over %d targets: PSNR %s, SSIM %s, LPIPS %s", len(records), payload["psnr"],
                        payload["ssim"], payload["lpips"] if payload["lpips"] is not None else payload["lpips_note"])
        if self.cfg.contact_sheet and records:
            self._write_contact_sheet(records)
        self._generated = {}

    def _generated_image(self, target: int) -> Tensor:
        """The generated view of ``target`` (H, W, 3) in [0, 1], as written: from memory, or, for a target of
        another process (several processes only), read back from ``nvs/``."""
        from threestudio.utils.image import load_image

        if target in self._generated:
            return self._generated[target].float() / 255.0
        if self.trainer.world_size <= 1:
            raise RuntimeError(f"target {target} was not sampled by this process")
        return load_image(self.save_path(f"nvs/target_{target:03d}.png"))[..., :3]

    def _write_contact_sheet(self, records: List[Dict[str, Any]]) -> None:
        """``contact_sheet.png``: one row per target, source | generated | ground truth (when present)."""
        from threestudio.utils.image import resize_image, save_image

        datamodule = self.trainer.datamodule
        targets = datamodule.targets
        position = {int(i): k for k, i in enumerate(targets.indices.tolist())}
        rows = []
        for rec in records:
            generated = self._generated_image(rec["target"])
            h, w = generated.shape[:2]
            source = resize_image(self._conditioning["images"][rec["source_position"]], h, w).clamp(0, 1)
            panels = [source, generated]
            if targets.rgb is not None:
                panels.append(targets.rgb[position[rec["target"]]].float())
            rows.append(torch.cat(panels, dim=1))
        save_image(self.save_path("contact_sheet.png"), torch.cat(rows, dim=0))
