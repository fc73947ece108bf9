"""The paper config's random SDS cameras follow ZeroNVS's sampler (kylesargent/ZeroNVS ``threestudio/data/uncond.py``
with ``configs/zero123_scene.yaml``), checked on a few thousand draws against distributions derived from its formulas.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from threestudio.data.random_camera import RandomCameraSampler, ReferenceCamera, sample_elevations, wrap_azimuth
from threestudio.data.single_image import SingleImageDataModuleConfig
from threestudio.utils.camera import spherical_to_cartesian
from threestudio.utils.config import load_config, parse_structured

ROOT = Path(__file__).resolve().parents[1]
N_DRAWS = 4000
KS_99 = 1.63  # Kolmogorov–Smirnov: sup|F_n − F| < 1.63/√n with probability 0.99


def paper_sampler(config: str = "configs/zeronvs.yaml") -> RandomCameraSampler:
    # 8×8 rays: the resolution does not change where the cameras are; a fixed fov (no EXIF look-up of the image)
    cli = ["data.random_camera.height=8", "data.random_camera.width=8", "data.default_fovy_deg=52.55"]
    cfg = load_config(str(ROOT / config), cli_args=cli)
    data = parse_structured(SingleImageDataModuleConfig, cfg.data)
    reference = ReferenceCamera(
        data.default_elevation_deg, data.default_azimuth_deg, data.default_camera_distance, data.default_fovy_deg
    )
    return RandomCameraSampler(data.random_camera, reference)


def threestudio_elevation_cdf(x_deg: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """CDF of ZeroNVS's elevation: ½ U(low, high) in degrees + ½ asin(U(low/90, high/90))."""
    uniform = ((x_deg - low) / (high - low)).clamp(0, 1)
    sin_x = torch.sin(torch.deg2rad(x_deg))
    asin_part = ((sin_x - low / 90.0) / ((high - low) / 90.0)).clamp(0, 1)
    return 0.5 * uniform + 0.5 * asin_part


def ks_distance(samples: torch.Tensor, cdf) -> float:
    x, _ = torch.sort(samples.double())
    n = x.numel()
    f = cdf(x)
    upper = torch.arange(1, n + 1, dtype=torch.float64) / n
    return float(torch.maximum(upper - f, f - (upper - 1.0 / n)).abs().max())


def draw(sampler: RandomCameraSampler, step: int, n_batches: int):
    sampler.update_step(0, step)
    batches = [sampler.sample() for _ in range(n_batches)]
    return {key: torch.stack([b[key] for b in batches]) for key in ("c2w", "elevation_deg", "azimuth_deg",
                                                                    "camera_distance", "light_positions")}


@pytest.fixture(scope="module")
def stage2_draws():
    torch.manual_seed(0)
    sampler = paper_sampler()
    assert sampler.stages.at(3000).batch_size == 1
    return draw(sampler, 3000, N_DRAWS)


@pytest.mark.slow  # 4000 sampled batches (the shared fixture): a statistical test
def test_paper_elevations_follow_zeronvs_formula(stage2_draws):
    elevation = stage2_draws["elevation_deg"].flatten()
    cdf = lambda x: threestudio_elevation_cdf(x, 5.0, 80.0)  # noqa: E731
    assert ks_distance(elevation, cdf) < KS_99 / math.sqrt(elevation.numel())
    # threestudio's asin branch spans asin(5/90) = 3.18° .. asin(80/90) = 62.73°: ~1.9 % of views lie below 5°
    assert math.degrees(math.asin(5 / 90)) - 0.01 <= float(elevation.min()) < 5.0
    below_5 = float((elevation < 5.0).float().mean())
    assert below_5 == pytest.approx(float(cdf(torch.tensor(5.0, dtype=torch.float64))), abs=0.01)
    # and the median is the original's (≈ 34.3°), not that of the coin with the area-uniform formula (≈ 37.0°)
    median = float(torch.quantile(elevation, 0.5))
    grid = torch.linspace(3.0, 80.0, 77001, dtype=torch.float64)
    expected_median = float(grid[torch.searchsorted(cdf(grid), torch.tensor([0.5], dtype=torch.float64))])
    assert median == pytest.approx(expected_median, abs=1.5)


@pytest.mark.slow  # the same 4000 batches
def test_paper_cameras_look_at_the_origin_with_z_up(stage2_draws):
    c2w = stage2_draws["c2w"].reshape(-1, 4, 4)
    eye, forward, right = c2w[:, :3, 3], -c2w[:, :3, 2], c2w[:, :3, 0]
    torch.testing.assert_close(forward, -eye / eye.norm(dim=-1, keepdim=True), atol=1e-5, rtol=0)
    assert right[:, 2].abs().max() < 1e-5  # no roll: the image's x axis stays horizontal (up = +z)
    assert (c2w[:, 2, 1] > 0).all()  # the image's up points upwards
    sampled = spherical_to_cartesian(
        stage2_draws["elevation_deg"].flatten(), stage2_draws["azimuth_deg"].flatten(),
        stage2_draws["camera_distance"].flatten(),
    )
    torch.testing.assert_close(eye, sampled, atol=1e-5, rtol=0)  # no camera_perturb
    distance = stage2_draws["camera_distance"].flatten()
    assert ks_distance(distance, lambda x: ((x - 0.8) / 1.0).clamp(0, 1)) < KS_99 / math.sqrt(distance.numel())
    lights = stage2_draws["light_positions"].reshape(-1, 3).norm(dim=-1)
    assert lights.min() >= 7.5 - 1e-4 and lights.max() <= 10.0 + 1e-4


@pytest.mark.slow  # a statistical test over many batches
def test_paper_azimuths_are_independent_within_a_batch():
    torch.manual_seed(1)
    sampler = paper_sampler()
    draws = draw(sampler, 1500, N_DRAWS // 6)  # stage 1: batches of 6
    azimuth = draws["azimuth_deg"]
    assert azimuth.shape == (N_DRAWS // 6, 6)
    n = azimuth.shape[0]
    uniform = lambda x: ((x + 180.0) / 360.0).clamp(0, 1)  # noqa: E731
    for k in range(6):  # each position of the batch is uniform over the whole circle (not one stratum of it)
        assert ks_distance(azimuth[:, k], uniform) < KS_99 / math.sqrt(n)
    corr = torch.corrcoef(azimuth.T.double())
    assert (corr - torch.eye(6, dtype=torch.float64)).abs().max() < 4.0 / math.sqrt(n)
    # elevations: one coin per batch picks the formula, as the original
    assert ks_distance(draws["elevation_deg"].flatten(), lambda x: threestudio_elevation_cdf(x, 5.0, 80.0)) < 0.05


def test_paper_progressive_widening_uses_zeronvs_formula():
    sampler = paper_sampler()
    for step, r in ((0, 0.0), (500, 500 / 1001), (1000, 1000 / 1001), (1001, 1.0)):
        sampler.update_step(0, step)
        assert sampler.elevation_range == pytest.approx(((1 - r) * 31.0 + r * 5.0, (1 - r) * 31.0 + r * 80.0))
        assert sampler.azimuth_range == pytest.approx((-180.0 * r, 180.0 * r))
    torch.manual_seed(2)
    sampler.update_step(0, 500)
    rel = wrap_azimuth(draw(sampler, 500, 100)["azimuth_deg"] - 0.0)
    assert rel.abs().max() <= 180.0 * 500 / 1001 + 1e-3


def test_uniform_area_mode_is_uniform_on_the_sphere():
    torch.manual_seed(3)
    elevation = torch.cat([sample_elevations(8, (5.0, 80.0), "uniform_area") for _ in range(500)])
    sin5, sin80 = math.sin(math.radians(5)), math.sin(math.radians(80))
    cdf = lambda x: ((torch.sin(torch.deg2rad(x)) - sin5) / (sin80 - sin5)).clamp(0, 1)  # noqa: E731
    assert ks_distance(elevation, cdf) < KS_99 / math.sqrt(elevation.numel())
    assert elevation.min() >= 5.0 - 1e-4 and elevation.max() <= 80.0 + 1e-4
