"""Image metrics as in the DTU novel-view protocol: PSNR, SSIM (scikit-image) and optional LPIPS.

- PSNR: ``skimage.metrics.peak_signal_noise_ratio(gt, pred, data_range=1)``. With a mask, the mean squared
  error is taken over the mask's pixels only (all three channels): ``10·log10(1 / mse)``.
- SSIM: ``skimage.metrics.structural_similarity(gt, pred, data_range=1, channel_axis=-1)`` with its default
  7×7 uniform window. With a mask, both images get a constant background (``mask_background``, default 0)
  outside the mask and SSIM is computed on the whole image (SSIM cannot be restricted to a pixel set
  without changing its windows).
- LPIPS: ``lpips.LPIPS(net="alex")`` (v0.1, images mapped to [-1, 1]), the metric ZeroNVS reports, computed by
  :mod:`threestudio.utils.lpips_alex` in plain PyTorch (no torchvision, no lpips package). Its two weight files come
  from ``--lpips-weights DIR`` / ``THREESTUDIO_LPIPS_DIR``, else the torch hub cache, else one download into it.
  When they cannot be had (or an image is under 31 px) ``lpips`` is ``None`` (JSON ``null``) and metrics.json says
  why in ``lpips_note``; nothing fails.
- Identical images: PSNR is ``inf`` (no noise) and SSIM is 1.0. JSON has no infinity, so
  :func:`write_metrics_json` writes any non-finite number as ``null``; a mean over views that includes an
  ``inf`` is ``inf`` and therefore ``null`` too.

Masks are binarised at 0.5.

Masked metrics of the DTU few-view protocol (:func:`masked_metrics`; RegNeRF's evaluation, google-research
``regnerf/eval.py`` lines 172-184, which ReconFusion and CAT3D follow): with the scan's object mask m,
``psnr_masked`` is the PSNR over the object's pixels only, ``ssim_masked`` and ``lpips_masked`` compare both images
composited over white outside the object (``rgb·m + (1 − m)``).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from threestudio.utils.io import write_json_atomic

logger = logging.getLogger(__name__)

ArrayLike = Union[np.ndarray, "torch.Tensor"]  # noqa: F821 (torch is optional here)

# LPIPS weights per weight folder setting (THREESTUDIO_LPIPS_DIR, hub dir): LpipsWeights, or the reason they are missing
_lpips_cache: Dict[Tuple[str, str], Any] = {}


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


def lpips_weights() -> Tuple[Any, Optional[str]]:
    """``(LpipsWeights, None)``, or ``(None, reason)`` when the weight files cannot be had (read once per setting)."""
    import torch

    from threestudio.utils import lpips_alex

    key = (os.environ.get(lpips_alex.ENV_DIR, ""), torch.hub.get_dir())
    if key not in _lpips_cache:
        try:
            _lpips_cache[key] = lpips_alex.load_weights(*lpips_alex.find_weight_files())
        except lpips_alex.LpipsUnavailable as e:
            logger.warning("LPIPS unavailable, reporting null: %s", e)
            _lpips_cache[key] = str(e)
    value = _lpips_cache[key]
    return (None, value) if isinstance(value, str) else (value, None)


def lpips_distance_and_note(pred: ArrayLike, gt: ArrayLike) -> Tuple[Optional[float], Optional[str]]:
    """``(LPIPS (AlexNet, v0.1) of pred against gt (H, W, 3) in [0, 1], None)`` or ``(None, why not)``."""
    import torch

    from threestudio.utils import lpips_alex

    weights, note = lpips_weights()
    if weights is None:
        return None, note
    height, width = _to_numpy(pred).shape[:2]
    if min(height, width) < lpips_alex.MIN_SIZE:
        return None, f"{height}×{width} px images are smaller than LPIPS (AlexNet) accepts ({lpips_alex.MIN_SIZE} px)"

    def prep(img: ArrayLike) -> "torch.Tensor":
        x = torch.as_tensor(_to_numpy(img), dtype=torch.float32)
        return x.permute(2, 0, 1)[None] * 2.0 - 1.0

    with torch.no_grad():
        return float(lpips_alex.lpips_alex(prep(pred), prep(gt), weights)[0]), None


def lpips_distance(pred: ArrayLike, gt: ArrayLike) -> Optional[float]:
    """LPIPS (AlexNet, v0.1) between ``pred`` and ``gt`` (H, W, 3) in [0, 1], or None when unavailable."""
    return lpips_distance_and_note(pred, gt)[0]


def compute_metrics(
    pred: ArrayLike, gt: ArrayLike, mask: Optional[ArrayLike] = None, use_lpips: bool = True
) -> Dict[str, Optional[float]]:
    """``{"psnr", "ssim", "lpips"}`` for one view; ``pred``, ``gt`` (H, W, 3) in [0, 1], ``mask`` (H, W[, 1]).

    LPIPS ignores the mask. When ``lpips`` is None (weights unavailable, images too small, ``use_lpips`` False) the
    dict also has ``lpips_note`` saying why.
    """
    out: Dict[str, Any] = {"psnr": psnr(pred, gt, mask), "ssim": ssim(pred, gt, mask)}
    out["lpips"], note = lpips_distance_and_note(pred, gt) if use_lpips else (None, "not computed (use_lpips=False)")
    if out["lpips"] is None:
        out["lpips_note"] = note
    return out


def masked_metrics(pred: ArrayLike, gt: ArrayLike, mask: ArrayLike, use_lpips: bool = True) -> Dict[str, Any]:
    """``{"psnr_masked", "ssim_masked", "lpips_masked"}`` of one view (module docstring, RegNeRF's DTU rule):
    ``pred``, ``gt`` (H, W, 3) in [0, 1], the object mask (H, W[, 1])."""
    pred_np, gt_np = _to_numpy(pred), _to_numpy(gt)
    keep = _check_images(pred_np, gt_np, _to_numpy(mask))[..., None]
    pred_fg, gt_fg = np.where(keep, pred_np, 1.0), np.where(keep, gt_np, 1.0)
    lpips_value = lpips_distance_and_note(pred_fg, gt_fg)[0] if use_lpips else None
    return {"psnr_masked": psnr(pred_np, gt_np, keep[..., 0]), "ssim_masked": ssim(pred_fg, gt_fg),
            "lpips_masked": lpips_value}


MASKED_KEYS = ("psnr_masked", "ssim_masked", "lpips_masked")


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
    """The metrics.json payload: means of psnr/ssim/lpips (and of :data:`MASKED_KEYS` when every view has them)
    over ``per_view`` and the per-view list.

    Each per-view dict has ``target`` (the dataset view index) and ``psnr``, ``ssim``, ``lpips`` (and ``lpips_note``
    when ``lpips`` is None); a mean is None when any view lacks the value. Non-finite numbers become None (JSON
    null). When the mean LPIPS is None, ``lpips_note`` says why (the views' notes).
    """
    keys = ("psnr", "ssim", "lpips")
    if per_view and all("psnr_masked" in v for v in per_view):  # object masks: RegNeRF's masked metrics too
        keys += MASKED_KEYS
    summary: Dict[str, Any] = {k: _json_number(_mean([v.get(k) for v in per_view])) for k in keys}
    if summary["lpips"] is None:
        notes = sorted({v["lpips_note"] for v in per_view if v.get("lpips_note")})
        missing = sum(_json_number(v.get("lpips")) is None for v in per_view)
        which = "all" if missing == len(per_view) else f"{missing} of {len(per_view)}"
        summary["lpips_note"] = "; ".join(notes) or f"LPIPS is missing (or not finite) for {which} views"
    summary["per_view"] = [
        {"target": v.get("target"), **{k: _json_number(v.get(k)) for k in keys}} for v in per_view
    ]
    return summary


def write_metrics_json(path: str, per_view: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Write ``{"psnr", "ssim", "lpips", ["lpips_note",] "per_view": [{"target", "psnr", "ssim", "lpips"}]}``
    atomically (``lpips_note`` only when ``lpips`` is null).

    Returns the written payload (see :func:`summarize_metrics`).
    """
    payload = summarize_metrics(per_view)
    write_json_atomic(path, payload)
    return payload
