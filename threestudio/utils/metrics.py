"""Image metrics as in the DTU novel-view protocol: PSNR, SSIM (scikit-image) and optional LPIPS.

- PSNR: ``skimage.metrics.peak_signal_noise_ratio(gt, pred, data_range=1)``. With a mask, the mean squared
  error is taken over the mask's pixels only (all three channels): ``10·log10(1 / mse)``.
- SSIM: ``skimage.metrics.structural_similarity(gt, pred, data_range=1, channel_axis=-1)`` with its default
  7×7 uniform window. With a mask, both images get a constant background (``mask_background``, default 0)
  outside the mask and SSIM is computed on the whole image (SSIM cannot be restricted to a pixel set
  without changing its windows).
- LPIPS (AlexNet, inputs in [-1, 1]) only when the optional ``lpips`` package is importable and the
  AlexNet backbone weights are already in the torch hub cache (nothing is downloaded); otherwise ``None``
  (JSON ``null``).
- Identical images: PSNR is ``inf`` (no noise) and SSIM is 1.0. JSON has no infinity, so
  :func:`write_metrics_json` writes any non-finite number as ``null``; a mean over views that includes an
  ``inf`` is ``inf`` and therefore ``null`` too.

Masks are binarised at 0.5.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from threestudio.utils.io import write_json_atomic

logger = logging.getLogger(__name__)

ArrayLike = Union[np.ndarray, "torch.Tensor"]  # noqa: F821 (torch is optional here)

_LPIPS_UNAVAILABLE = object()
_ALEXNET_WEIGHTS = "alexnet-owt-7be5be79.pth"  # torchvision's AlexNet, the backbone lpips loads
_lpips_model: Any = None


def _to_numpy(img: ArrayLike) -> np.ndarray:
    if hasattr(img, "detach"):
        img = img.detach().float().cpu().numpy()
    return np.asarray(img, dtype=np.float64)


def _check_images(pred: np.ndarray, gt: np.ndarray, mask: Optional[np.ndarray]) -> Optional[np.ndarray]:
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[-1] != 3:
        raise ValueError(f"pred and gt must both be (H, W, 3); got {pred.shape} and {gt.shape}")
    if mask is None:
        return None
    if mask.ndim == 3:
        mask = mask[..., 0]
    if mask.shape != pred.shape[:2]:
        raise ValueError(f"mask must be (H, W) or (H, W, 1) matching the images {pred.shape[:2]}; got {mask.shape}")
    return mask > 0.5


def psnr(pred: ArrayLike, gt: ArrayLike, mask: Optional[ArrayLike] = None) -> float:
    """PSNR in dB of ``pred`` against ``gt`` (H, W, 3) in [0, 1], over ``mask`` (H, W[, 1]) when given.

    ``inf`` for identical images; ``nan`` for an empty mask.
    """
    from skimage.metrics import peak_signal_noise_ratio

    pred_np, gt_np = _to_numpy(pred), _to_numpy(gt)
    mask_np = _check_images(pred_np, gt_np, None if mask is None else _to_numpy(mask))
    if mask_np is None:
        if np.array_equal(pred_np, gt_np):
            return math.inf
        return float(peak_signal_noise_ratio(gt_np, pred_np, data_range=1.0))
    if not mask_np.any():
        return math.nan
    mse = float(np.mean((pred_np[mask_np] - gt_np[mask_np]) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def ssim(pred: ArrayLike, gt: ArrayLike, mask: Optional[ArrayLike] = None, mask_background: float = 0.0) -> float:
    """SSIM of ``pred`` against ``gt`` (H, W, 3) in [0, 1] (skimage defaults: 7×7 uniform window).

    With ``mask``, pixels outside it are set to ``mask_background`` in both images first.
    """
    from skimage.metrics import structural_similarity

    pred_np, gt_np = _to_numpy(pred), _to_numpy(gt)
    mask_np = _check_images(pred_np, gt_np, None if mask is None else _to_numpy(mask))
    if mask_np is not None:
        keep = mask_np[..., None]
        pred_np = np.where(keep, pred_np, mask_background)
        gt_np = np.where(keep, gt_np, mask_background)
    return float(structural_similarity(gt_np, pred_np, data_range=1.0, channel_axis=-1))


def _get_lpips_model() -> Any:
    """The LPIPS(AlexNet) model, or None when the optional package or its weights are unavailable."""
    global _lpips_model
    if _lpips_model is None:
        try:
            import lpips  # optional dependency
            import torch

            backbone = os.path.join(torch.hub.get_dir(), "checkpoints", _ALEXNET_WEIGHTS)
            if not os.path.isfile(backbone):
                raise FileNotFoundError(f"AlexNet weights {backbone} are not cached and nothing is downloaded")
            _lpips_model = lpips.LPIPS(net="alex", verbose=False).eval()
        except Exception as e:  # not installed, or weights would need a download
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            logger.info("LPIPS unavailable (%s); reporting null", reason)
            _lpips_model = _LPIPS_UNAVAILABLE
    return None if _lpips_model is _LPIPS_UNAVAILABLE else _lpips_model


def lpips_distance(pred: ArrayLike, gt: ArrayLike) -> Optional[float]:
    """LPIPS (AlexNet) between ``pred`` and ``gt`` (H, W, 3) in [0, 1], or None when unavailable."""
    model = _get_lpips_model()
    if model is None:
        return None
    import torch

    def prep(img: ArrayLike) -> "torch.Tensor":
        x = torch.as_tensor(_to_numpy(img), dtype=torch.float32)
        return (x.permute(2, 0, 1)[None] * 2.0 - 1.0).to(next(model.parameters()).device)

    with torch.no_grad():
        return float(model(prep(pred), prep(gt)).item())


def compute_metrics(
    pred: ArrayLike, gt: ArrayLike, mask: Optional[ArrayLike] = None, use_lpips: bool = True
) -> Dict[str, Optional[float]]:
    """``{"psnr", "ssim", "lpips"}`` for one view; ``pred``, ``gt`` (H, W, 3) in [0, 1], ``mask`` (H, W[, 1]).

    ``lpips`` is None when the package is missing or ``use_lpips`` is False (LPIPS ignores the mask).
    """
    return {
        "psnr": psnr(pred, gt, mask),
        "ssim": ssim(pred, gt, mask),
        "lpips": lpips_distance(pred, gt) if use_lpips else None,
    }


def _json_number(value: Optional[float]) -> Optional[float]:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    if not values or any(v is None for v in values):
        return None
    return float(np.mean(np.asarray(values, dtype=np.float64)))


def summarize_metrics(per_view: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The metrics.json payload: means of psnr/ssim/lpips over ``per_view`` and the per-view list.

    Each per-view dict has ``target`` (the dataset view index) and ``psnr``, ``ssim``, ``lpips``; a mean is
    None when any view lacks the value. Non-finite numbers become None (JSON null).
    """
    keys = ("psnr", "ssim", "lpips")
    summary: Dict[str, Any] = {k: _json_number(_mean([v.get(k) for v in per_view])) for k in keys}
    summary["per_view"] = [
        {"target": v.get("target"), **{k: _json_number(v.get(k)) for k in keys}} for v in per_view
    ]
    return summary


def write_metrics_json(path: str, per_view: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Write ``{"psnr", "ssim", "lpips", "per_view": [{"target", "psnr", "ssim", "lpips"}]}`` atomically.

    Returns the written payload (see :func:`summarize_metrics`).
    """
    payload = summarize_metrics(per_view)
    write_json_atomic(path, payload)
    return payload
