"""The test pass over posed views with ground truth, shared by the systems that render a NeRF.

:class:`HeldOutMetricsMixin` (before :class:`~threestudio.systems.base.BaseLift3DSystem` in the bases) renders every
test batch to ``save/it{step}-test/{index:04d}.png`` (rgb | depth | opacity) and, for batches that carry ``rgb``
(posed target views), records PSNR/SSIM/LPIPS (:mod:`threestudio.utils.metrics`; with the datamodule's
``object_masks`` also RegNeRF's masked metrics over the views' object masks); at the end it writes the video
and ``save/metrics.json``. Several processes split the batches as the NVS system does
(:mod:`threestudio.utils.distributed`; set ``trainer.use_distributed_sampler: false``). Batches without ground truth
(an orbit) are only rendered.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional

from torch import Tensor

from threestudio.systems.base import visual_row
from threestudio.utils.distributed import (
    check_every_target_once,
    check_unsharded_test_loader,
    gather_records,
    owns_batch,
)

logger = logging.getLogger(__name__)


class HeldOutMetricsMixin:
    """Test frames, video and ``metrics.json`` against the ground truth of posed test views."""

    _records: List[Dict[str, Any]]

    def metrics_mask(self, batch: Dict[str, Any], k: int) -> Optional[Tensor]:
        """The mask (H, W, 1) PSNR is restricted to for view ``k`` of ``batch``; None = every pixel."""
        return None

    def on_test_start(self) -> None:
        check_unsharded_test_loader(self.trainer)
        self._records = []

    def test_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        if not owns_batch(self.trainer, batch_idx):
            return
        from threestudio.utils.image import save_image
        from threestudio.utils.metrics import compute_metrics, masked_metrics

        object_masks = bool(getattr(getattr(self.trainer, "datamodule", None), "object_masks", False))
        out = self(batch)
        for k in range(out["comp_rgb"].shape[0]):
            index = int(batch["index"][k]) if "index" in batch else batch_idx
            save_image(self.save_path(f"it{self.true_global_step}-test/{index:04d}.png"), visual_row(out, k))
            if "rgb" in batch:
                rgb = out["comp_rgb"][k].clamp(0, 1)
                metrics = compute_metrics(rgb, batch["rgb"][k], self.metrics_mask(batch, k))
                if object_masks:
                    metrics.update(masked_metrics(rgb, batch["rgb"][k], batch["mask"][k]))
                self._records.append({"target": index, **metrics})

    def on_test_epoch_end(self) -> None:
        records = gather_records(self, "test", getattr(self, "_records", []))
        self._records = []
        if records is None:
            return
        super().on_test_epoch_end()  # the test video (rank 0)
        if records:
            from threestudio.utils.metrics import write_metrics_json

            targets = getattr(self.trainer.datamodule, "targets", None)
            if targets is not None:
                check_every_target_once(records, [int(i) for i in targets.indices.tolist()])
            payload = write_metrics_json(self.save_path("metrics.json"), records)
            logger.info(
                "held-out views (%d): PSNR %s, SSIM %s, LPIPS %s",
                len(records),
                payload["psnr"],
                payload["ssim"],
                payload["lpips"] if payload["lpips"] is not None else payload["lpips_note"],
            )
