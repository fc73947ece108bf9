"""Camera sampling and evaluation orbits (threestudio/data/random_camera.py, threestudio/data/utils.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from threestudio.data.random_camera import (
    CAMERA_KEYS,
    OrbitCameraDataset,
    RandomCameraConfig,
    RandomCameraSampler,
    ReferenceCamera,
    camera_rays,
    orbit_cameras,
    sample_light_positions,
    sample_random_cameras,
    wrap_azimuth,
)
from threestudio.data.utils import StagedResolution
from threestudio.utils.camera import c2w_to_spherical, orbit_c2w, spherical_to_cartesian
from threestudio.utils.config import parse_structured
from threestudio.utils.errors import ConfigError


def _angle_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    cos = (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1).clamp(-1, 1)
    return torch.rad2deg(torch.arccos(cos))


def _assert_looks_at_origin(c2w: torch.Tensor, atol: float = 1e-5) -> None:
    """The camera's −z axis points from its centre to the origin, and its rotation is proper."""
    forward = -c2w[:, :3, 2]
    to_origin = F.normalize(-c2w[:, :3, 3], dim=-1)
    torch.testing.assert_close(forward, to_origin, atol=atol, rtol=0)
    rot = c2w[:, :3, :3]
    torch.testing.assert_close(rot.transpose(1, 2) @ rot, torch.eye(3).expand_as(rot), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(c2w.shape[0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(c2w[:, 3], torch.tensor([0.0, 0.0, 0.0, 1.0]).expand(c2w.shape[0], 4))


def test_orbit_cameras_look_at_origin_with_requested_pose():
    cams = orbit_cameras(5, elevation_deg=31.0, distance=1.3, fovy_deg=50.0, azimuth_start_deg=170.0)
    assert set(cams) == set(CAMERA_KEYS)
    assert cams["c2w"].shape == (5, 4, 4) and cams["light_positions"].shape == (5, 3)
    for key in ("fov_deg", "elevation_deg", "azimuth_deg", "camera_distance"):
        assert cams[key].shape == (5,)
    _assert_looks_at_origin(cams["c2w"])
    elev, azim, dist = c2w_to_spherical(cams["c2w"])
    torch.testing.assert_close(elev, torch.full((5,), 31.0), atol=1e-4, rtol=0)
    torch.testing.assert_close(dist, torch.full((5,), 1.3), atol=1e-5, rtol=0)
    # evenly spaced over 360° from the start, wrapped into [-180, 180)
    expected = wrap_azimuth(torch.tensor([170.0, 242.0, 314.0, 386.0, 458.0]))
    torch.testing.assert_close(cams["azimuth_deg"], expected)
    assert (cams["azimuth_deg"] >= -180).all() and (cams["azimuth_deg"] < 180).all()
    torch.testing.assert_close(wrap_azimuth(azim - expected), torch.zeros(5), atol=1e-3, rtol=0)
    torch.testing.assert_close(cams["fov_deg"], torch.full((5,), 50.0))
    # the camera's up vector points upwards (z-up world)
    assert (cams["c2w"][:, 2, 1] > 0).all()


def test_centre_ray_hits_origin_and_edge_rays_span_the_fov():
    fov = 52.55
    cams = orbit_cameras(3, elevation_deg=20.0, distance=1.7, fovy_deg=fov, azimuth_start_deg=-30.0)
    h, w = 9, 15  # odd sizes: a pixel centre lies exactly on the optical axis
    rays = camera_rays(cams, h, w)
    assert rays["rays_o"].shape == (3, h, w, 3) and rays["rays_d"].shape == (3, h, w, 3)
    torch.testing.assert_close(rays["rays_d"].norm(dim=-1), torch.ones(3, h, w), atol=1e-5, rtol=0)
    o, d = rays["rays_o"][:, h // 2, w // 2], rays["rays_d"][:, h // 2, w // 2]
    closest = o - (o * d).sum(-1, keepdim=True) * d  # point of the ray nearest to the origin
    assert closest.norm(dim=-1).max() < 1e-5
    torch.testing.assert_close(d, -cams["c2w"][:, :3, 2], atol=1e-6, rtol=0)
    # rays through the centres of the top and bottom rows are (H-1)/H of the way to the image edges
    top, bottom = rays["rays_d"][:, 0, w // 2], rays["rays_d"][:, -1, w // 2]
    expected = 2 * math.degrees(math.atan((h - 1) / h * math.tan(math.radians(fov / 2))))
    torch.testing.assert_close(_angle_deg(top, bottom), torch.full((3,), expected), atol=1e-3, rtol=0)
    # square pixels: the horizontal extent follows the aspect ratio
    left, right = rays["rays_d"][:, h // 2, 0], rays["rays_d"][:, h // 2, -1]
    expected_h = 2 * math.degrees(math.atan((w - 1) / h * math.tan(math.radians(fov / 2))))
    torch.testing.assert_close(_angle_deg(left, right), torch.full((3,), expected_h), atol=1e-3, rtol=0)
    # top of the image is up in the world
    assert (top[:, 2] > bottom[:, 2]).all()


def test_unnormalised_rays_have_unit_depth_along_the_optical_axis():
    cams = orbit_cameras(2, elevation_deg=45.0, distance=2.0, fovy_deg=60.0)
    unit = camera_rays(cams, 8, 6, normalize=True)["rays_d"]
    raw = camera_rays(cams, 8, 6, normalize=False)["rays_d"]
    forward = -cams["c2w"][:, None, None, :3, 2]
    torch.testing.assert_close((raw * forward).sum(-1), torch.ones(2, 8, 6), atol=1e-5, rtol=0)
    torch.testing.assert_close(F.normalize(raw, dim=-1), unit, atol=1e-5, rtol=0)
    assert (raw.norm(dim=-1) > 1.0 + 1e-3).any()  # off-axis rays are longer than 1


def test_random_cameras_within_ranges():
    torch.manual_seed(1)
    cams = sample_random_cameras(
        256,
        elevation_range=(5.0, 80.0),
        azimuth_range=(-30.0, 60.0),
        distance_range=(0.8, 1.8),
        fovy_range=(40.0, 55.0),
        azimuth_offset_deg=150.0,
        batch_uniform_azimuth=False,
        elevation_sampling="uniform_area",  # threestudio's formula leaves the range (tests/test_paper_sampler.py)
    )
    assert set(cams) == set(CAMERA_KEYS)
    e, a, d, f = cams["elevation_deg"], cams["azimuth_deg"], cams["camera_distance"], cams["fov_deg"]
    assert e.min() >= 5.0 and e.max() <= 80.0 and e.max() - e.min() > 50
    assert d.min() >= 0.8 and d.max() <= 1.8
    assert f.min() >= 40.0 and f.max() <= 55.0
    # azimuths are the offset plus [-30, 60], wrapped: 120 .. 210 → [120, 180) ∪ [-180, -150]
    assert (a >= -180).all() and (a < 180).all()
    rel = wrap_azimuth(a - 150.0)
    assert rel.min() >= -30.0 - 1e-4 and rel.max() <= 60.0 + 1e-4
    assert (a < 0).any() and (a > 0).any()  # the range crosses ±180
    # without perturbations the cameras sit exactly at the sampled pose and look at the origin
    _assert_looks_at_origin(cams["c2w"], atol=1e-4)
    torch.testing.assert_close(cams["c2w"][:, :3, 3], spherical_to_cartesian(e, a, d), atol=1e-5, rtol=0)


def test_batch_uniform_azimuth_covers_the_range():
    torch.manual_seed(2)
    cams = sample_random_cameras(
        8, (10.0, 20.0), (-180.0, 180.0), (1.0, 1.0), (50.0, 50.0), batch_uniform_azimuth=True
    )
    a = cams["azimuth_deg"]
    slices = torch.floor((a + 180.0) / 45.0)
    assert torch.equal(slices, torch.arange(8, dtype=torch.float32))


def test_perturbations_stay_within_bounds():
    torch.manual_seed(3)
    cams = sample_random_cameras(
        64, (0.0, 60.0), (-180.0, 180.0), (1.0, 1.5), (50.0, 50.0), camera_perturb=0.1, center_perturb=0.2
    )
    nominal = spherical_to_cartesian(cams["elevation_deg"], cams["azimuth_deg"], cams["camera_distance"])
    shift = cams["c2w"][:, :3, 3] - nominal
    assert shift.abs().max() <= 0.1 + 1e-6 and shift.abs().max() > 0.01
    # the look-at point moved: not every camera looks exactly at the origin any more
    forward = -cams["c2w"][:, :3, 2]
    assert _angle_deg(forward, -cams["c2w"][:, :3, 3]).max() > 0.5


@pytest.mark.parametrize("strategy", ["dreamfusion", "magic3d"])
def test_light_positions(strategy):
    torch.manual_seed(4)
    eye = orbit_c2w(torch.full((32,), 30.0), torch.linspace(-180, 170, 32), torch.full((32,), 1.2))[:, :3, 3]
    lights = sample_light_positions(eye, (7.5, 10.0), light_position_perturb=1.0, strategy=strategy)
    assert lights.shape == (32, 3)
    dist = lights.norm(dim=-1)
    assert dist.min() >= 7.5 - 1e-4 and dist.max() <= 10.0 + 1e-4
    if strategy == "magic3d":  # 30°..90° above the plane facing the camera: within 60° of its direction
        assert _angle_deg(lights, eye).max() <= 60.0 + 1e-3


def test_unknown_light_strategy_is_a_config_error():
    with pytest.raises(ConfigError, match="light_sample_strategy"):
        sample_light_positions(torch.ones(2, 3), (1.0, 2.0), strategy="sun")
    cfg = parse_structured(RandomCameraConfig, {"light_sample_strategy": "sun"})
    with pytest.raises(ConfigError, match="data.random_camera.light_sample_strategy"):
        RandomCameraSampler(cfg, ReferenceCamera(0.0, 0.0, 1.0, 50.0))


def _sampler(**overrides) -> RandomCameraSampler:
    cfg = {
        "height": 8,
        "width": 8,
        "batch_size": 64,
        "elevation_range": [5, 80],
        "azimuth_range": [-180, 180],
        "camera_distance_range": [0.8, 1.8],
        "camera_perturb": 0.0,
        "center_perturb": 0.0,
        "up_perturb": 0.0,
        "progressive_until": 99,
    }
    cfg.update(overrides)
    return RandomCameraSampler(parse_structured(RandomCameraConfig, cfg), ReferenceCamera(31.0, 40.0, 1.0, 52.55))


def test_progressive_widening_from_the_reference_view():
    torch.manual_seed(5)
    # uniform_area keeps a collapsed range exact (threestudio's formula maps [31, 31] to asin(31/90) half the time)
    sampler = _sampler(elevation_sampling="uniform_area")
    batch = sampler.sample()  # step 0: collapsed onto the reference view's elevation and azimuth
    torch.testing.assert_close(batch["elevation_deg"], torch.full((64,), 31.0), atol=1e-4, rtol=0)
    torch.testing.assert_close(batch["azimuth_deg"], torch.full((64,), 40.0))
    torch.testing.assert_close(batch["fov_deg"], torch.full((64,), 52.55))  # fovy_range None → input fov

    sampler.update_step(0, 50)  # half way: r = 50 / (99 + 1), ZeroNVS's step / (progressive_until + 1)
    assert sampler.elevation_range == pytest.approx((18.0, 55.5))
    assert sampler.azimuth_range == pytest.approx((-90.0, 90.0))
    batch = sampler.sample()
    assert batch["elevation_deg"].min() >= 18.0 - 1e-4 and batch["elevation_deg"].max() <= 55.5 + 1e-4
    rel = wrap_azimuth(batch["azimuth_deg"] - 40.0)
    assert rel.abs().max() <= 90.0 + 1e-4 and rel.abs().max() > 45.0

    sampler.update_step(0, 99)  # not yet full at progressive_until itself
    assert sampler.elevation_range[0] == pytest.approx(31.0 - 26.0 * 99 / 100)
    for step in (100, 5000):
        sampler.update_step(0, step)
        assert sampler.elevation_range == pytest.approx((5.0, 80.0))
        assert sampler.azimuth_range == pytest.approx((-180.0, 180.0))
    batch = sampler.sample()
    assert batch["elevation_deg"].min() < 18.0 or batch["elevation_deg"].max() > 55.5

    no_progress = _sampler(progressive_until=0)
    assert no_progress.elevation_range == pytest.approx((5.0, 80.0))


def test_stage_switch_of_resolution_and_batch_size_at_the_milestone():
    sampler = _sampler(height=[8, 16], width=[6, 12], batch_size=[4, 1], resolution_milestones=[3])
    expected = {0: (4, 8, 6), 2: (4, 8, 6), 3: (1, 16, 12), 10: (1, 16, 12)}
    for step, (b, h, w) in expected.items():
        sampler.update_step(0, step)
        batch = sampler.sample()
        assert (batch["height"], batch["width"]) == (h, w)
        assert isinstance(batch["height"], int) and isinstance(batch["width"], int)
        assert batch["rays_o"].shape == (b, h, w, 3) and batch["rays_d"].shape == (b, h, w, 3)
        assert batch["c2w"].shape == (b, 4, 4) and batch["light_positions"].shape == (b, 3)
        for key in ("fov_deg", "elevation_deg", "azimuth_deg", "camera_distance"):
            assert batch[key].shape == (b,)
        torch.testing.assert_close(batch["canonical_c2w"], orbit_c2w(*(torch.tensor([v]) for v in (31.0, 40.0, 1.0))))


def test_staged_resolution_errors_name_the_key():
    with pytest.raises(ConfigError, match="data.resolution_milestones"):
        StagedResolution([64, 128], [64, 128], [])
    with pytest.raises(ConfigError, match="data.width"):
        StagedResolution([64, 128], [64, 128, 256], [10])
    with pytest.raises(ConfigError, match="data.height"):
        StagedResolution(0, 64)
    with pytest.raises(ConfigError, match="must increase"):
        StagedResolution([8, 16, 32], 8, [10, 5])
    stages = StagedResolution([8, 16], 12, [100], batch_size=[3, 1])
    assert [stages.index_at(s) for s in (0, 99, 100, 101)] == [0, 0, 1, 1]
    assert stages.at(100).width == 12 and stages.at(0).batch_size == 3


@pytest.mark.parametrize(
    "key,value",
    [("elevation_range", [80, 5]), ("camera_distance_range", [1.0]), ("fovy_range", [0, 50]), ("n_test_views", 0),
     ("elevation_sampling", "gauss")],
)
def test_bad_random_camera_config_is_a_config_error(key, value):
    cfg = parse_structured(RandomCameraConfig, {key: value})
    with pytest.raises(ConfigError, match=f"data.random_camera.{key}"):
        RandomCameraSampler(cfg, ReferenceCamera(0.0, 0.0, 1.0, 50.0))


def test_eval_orbits_follow_the_reference_unless_set():
    sampler = _sampler(n_val_views=4, n_test_views=6, eval_height=5, eval_width=7)
    val = sampler.eval_cameras("val")
    torch.testing.assert_close(val["azimuth_deg"], torch.tensor([40.0, 130.0, -140.0, -50.0]))
    torch.testing.assert_close(val["elevation_deg"], torch.full((4,), 31.0))
    torch.testing.assert_close(val["camera_distance"], torch.full((4,), 1.0))
    torch.testing.assert_close(val["fov_deg"], torch.full((4,), 52.55))
    assert sampler.eval_cameras("test")["c2w"].shape == (6, 4, 4)

    explicit = _sampler(eval_elevation_deg=10.0, eval_camera_distance=2.5, eval_fovy_deg=30.0, n_test_views=3)
    test = explicit.eval_cameras("test")
    elev, _, dist = c2w_to_spherical(test["c2w"])
    torch.testing.assert_close(elev, torch.full((3,), 10.0), atol=1e-4, rtol=0)
    torch.testing.assert_close(dist, torch.full((3,), 2.5), atol=1e-5, rtol=0)
    torch.testing.assert_close(test["fov_deg"], torch.full((3,), 30.0))

    dataset = sampler.eval_dataset("val")
    assert isinstance(dataset, OrbitCameraDataset) and len(dataset) == 4
    batch = dataset.collate([dataset[1], dataset[2]])
    assert batch["index"].dtype == torch.long and batch["index"].tolist() == [1, 2]
    assert batch["rays_d"].shape == (2, 5, 7, 3) and (batch["height"], batch["width"]) == (5, 7)
    torch.testing.assert_close(batch["c2w"], val["c2w"][1:3])
    assert batch["canonical_c2w"].shape == (1, 4, 4)
