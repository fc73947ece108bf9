"""PSNR/SSIM/LPIPS and metrics.json (threestudio/utils/metrics.py)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from threestudio.utils import metrics
from threestudio.utils.metrics import compute_metrics, psnr, ssim, write_metrics_json


def checker(h: int, w: int) -> np.ndarray:
    """±1 checkerboard (H, W, 1)."""
    return np.where((np.arange(h)[:, None] + np.arange(w)[None]) % 2 == 0, 1.0, -1.0)[..., None]


@pytest.fixture
def no_lpips(monkeypatch, tmp_path):
    """LPIPS weight folder without the files: lpips is None with a note."""
    monkeypatch.setenv("THREESTUDIO_LPIPS_DIR", str(tmp_path))
    monkeypatch.setattr(metrics, "_lpips_cache", {})


def test_identical_images_give_inf_psnr_and_ssim_one(no_lpips):
    img = np.random.default_rng(0).uniform(size=(24, 32, 3))
    m = compute_metrics(img, img.copy())
    assert m["psnr"] == math.inf and m["ssim"] == pytest.approx(1.0) and m["lpips"] is None


def test_known_noise_level_gives_expected_psnr():
    gt = np.full((32, 32, 3), 0.5)
    pred = gt + 0.01 * checker(32, 32)  # every pixel off by exactly 0.01 → mse 1e-4 → 40 dB
    assert psnr(pred, gt) == pytest.approx(40.0, abs=1e-6)
    pred = gt + 0.1 * checker(32, 32)
    assert psnr(torch.from_numpy(pred).float(), torch.from_numpy(gt).float()) == pytest.approx(20.0, abs=1e-4)


def test_matches_skimage_on_random_images():
    rng = np.random.default_rng(1)
    gt = rng.uniform(size=(40, 30, 3))
    pred = np.clip(gt + rng.normal(0, 0.05, gt.shape), 0, 1)
    assert psnr(pred, gt) == pytest.approx(peak_signal_noise_ratio(gt, pred, data_range=1.0))
    assert ssim(pred, gt) == pytest.approx(structural_similarity(gt, pred, data_range=1.0, channel_axis=-1))
    assert 0.0 < ssim(pred, gt) < 1.0


def test_masked_metrics_ignore_the_background():
    rng = np.random.default_rng(2)
    gt = rng.uniform(size=(32, 32, 3))
    mask = np.zeros((32, 32, 1))
    mask[8:24, 8:24] = 1.0
    pred = gt.copy()
    pred[mask[..., 0] == 0] = rng.uniform(size=(int((mask == 0).sum()), 3))  # wrong only outside the mask
    assert psnr(pred, gt, mask) == math.inf
    assert ssim(pred, gt, mask) == pytest.approx(1.0)
    assert psnr(pred, gt) < 20  # unmasked, the background counts
    inside = pred.copy()
    inside[8:24, 8:24] += 0.01 * checker(16, 16)
    assert psnr(inside, gt, mask[..., 0]) == pytest.approx(40.0, abs=1e-6)  # mse over the mask's pixels only
    assert math.isnan(psnr(pred, gt, np.zeros((32, 32))))


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        psnr(np.zeros((8, 8, 3)), np.zeros((8, 9, 3)))
    with pytest.raises(ValueError, match="mask"):
        psnr(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)), np.ones((4, 4)))


def test_lpips_is_none_with_a_reason_without_the_weights(no_lpips, tmp_path):
    assert metrics.lpips_distance(np.zeros((40, 40, 3)), np.zeros((40, 40, 3))) is None
    m = compute_metrics(np.zeros((40, 40, 3)), np.ones((40, 40, 3)))
    assert m["lpips"] is None and "alexnet-owt-7be5be79.pth and alex.pth not found" in m["lpips_note"]
    path = tmp_path / "metrics.json"
    write_metrics_json(str(path), [{"target": 0, **m}])
    data = json.loads(path.read_text())
    assert data["lpips"] is None and "not found in" in data["lpips_note"]
    assert data["per_view"] == [{"target": 0, "psnr": m["psnr"], "ssim": m["ssim"], "lpips": None}]


def test_lpips_is_numeric_with_the_weights_and_zero_for_identical_images():
    # conftest points THREESTUDIO_LPIPS_DIR at seeded random weight files
    rng = np.random.default_rng(3)
    gt = rng.uniform(size=(40, 48, 3))
    m = compute_metrics(np.clip(gt + rng.normal(0, 0.2, gt.shape), 0, 1), gt)
    assert isinstance(m["lpips"], float) and m["lpips"] > 0 and "lpips_note" not in m
    assert metrics.lpips_distance(gt, gt.copy()) == pytest.approx(0.0, abs=1e-7)


def test_lpips_is_none_for_images_alexnet_cannot_take():
    m = compute_metrics(np.zeros((8, 40, 3)), np.ones((8, 40, 3)))
    assert m["lpips"] is None and "smaller than LPIPS (AlexNet) accepts (31 px)" in m["lpips_note"]


def test_write_metrics_json_atomic_strict_json(tmp_path):
    per_view = [
        {"target": 3, "psnr": 20.0, "ssim": 0.5, "lpips": None},
        {"target": 9, "psnr": 30.0, "ssim": 0.7, "lpips": None},
    ]
    path = tmp_path / "save" / "metrics.json"
    write_metrics_json(str(path), per_view)
    data = json.loads(path.read_text())
    assert data["psnr"] == pytest.approx(25.0) and data["ssim"] == pytest.approx(0.6) and data["lpips"] is None
    assert data["per_view"] == [
        {"target": 3, "psnr": 20.0, "ssim": 0.5, "lpips": None},
        {"target": 9, "psnr": 30.0, "ssim": 0.7, "lpips": None},
    ]
    assert os.listdir(path.parent) == ["metrics.json"]  # no temporary file left behind

    # an identical view has psnr inf: JSON has no infinity, so it is written as null (and so is the mean)
    write_metrics_json(str(path), per_view + [{"target": 12, "psnr": math.inf, "ssim": 1.0, "lpips": 0.1}])
    text = path.read_text()
    assert "Infinity" not in text and "NaN" not in text
    data = json.loads(text)
    assert data["psnr"] is None and data["per_view"][2]["psnr"] is None and data["per_view"][2]["lpips"] == 0.1
    assert data["ssim"] == pytest.approx(0.7333333, abs=1e-6)


def test_masked_metrics_follow_regnerf():
    """PSNR over the object's pixels only; SSIM of both images over white outside the object; a summary carries the
    masked means when every view has them."""
    from threestudio.utils.metrics import masked_metrics, ssim, summarize_metrics

    rng = np.random.default_rng(0)
    gt = rng.random((40, 40, 3))
    pred = gt.copy()
    mask = np.zeros((40, 40, 1))
    mask[10:30, 10:30] = 1.0
    pred[:5] = 0.0  # wrong only outside the object: the masked PSNR does not see it
    pred[15, 15] += 0.1  # one object pixel off by 0.1 in all channels: mse = 0.01 / 400
    out = masked_metrics(pred, gt, mask, use_lpips=False)
    assert out["psnr_masked"] == pytest.approx(10 * np.log10(400 / 0.01))
    white_pred = np.where(mask > 0.5, pred, 1.0)
    white_gt = np.where(mask > 0.5, gt, 1.0)
    assert out["ssim_masked"] == pytest.approx(ssim(white_pred, white_gt))
    assert out["lpips_masked"] is None
    views = [{"target": 1, "psnr": 20.0, "ssim": 0.5, "lpips": None, **out}]
    summary = summarize_metrics(views)
    assert summary["psnr_masked"] == pytest.approx(out["psnr_masked"]) and summary["lpips_masked"] is None
    assert "psnr_masked" not in summarize_metrics([{"target": 1, "psnr": 20.0, "ssim": 0.5, "lpips": None}])
