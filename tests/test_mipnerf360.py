"""Mip-NeRF 360 scenes as ZeroNVS evaluates them (threestudio/data/mipnerf360.py), end to end on a scene in the
release layout rendered from a procedural world with known poses (tests/mipnerf360_scene.py)."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from mipnerf360_scene import (
    FOCUS,
    FOVY_DEG,
    HEIGHT,
    N_VIEWS,
    RING_RADIUS,
    ROLLS_DEG,
    SOURCE_FROM_WORLD,
    WORLD,
    source_c2w,
    world_c2w,
    write_scene,
)

from threestudio.data import mipnerf360 as m360
from threestudio.utils.errors import UserError


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    return write_scene(tmp_path_factory.mktemp("mipnerf360") / "tabletop")


def test_protocol_table_is_launch_eval_mipnerf360():
    assert m360.SCENES == ("bicycle", "bonsai", "counter", "garden", "kitchen", "room", "stump")
    assert [m360.PROTOCOL[s].view_idx for s in m360.SCENES] == [2, 0, 20, 0, 0, 0, 11]
    assert [m360.PROTOCOL[s].precomputed_scale for s in m360.SCENES] == [0.9, 0.9, 0.9, 0.9, 0.9, 2.0, 0.9]
    assert [m360.PROTOCOL[s].manual_gt_to_pred_scale for s in m360.SCENES] == [1.0, 1.0, 0.9, 1.0, 0.9, 0.9, 1.1]
    means = np.mean([m360.PAPER_RESULTS[s] for s in m360.SCENES], axis=0)
    assert means == pytest.approx([13.15, 0.240, 0.625], abs=6e-3)  # the README's table means


def test_llff_round_trip_and_release_poses(scene_dir):
    rng = np.random.default_rng(0)
    c2w = world_c2w()
    hwf, bounds = rng.uniform(1, 100, (N_VIEWS, 3)), rng.uniform(0.1, 9, (N_VIEWS, 2))
    back, hwf_back = m360.llff_to_opengl(m360.opengl_to_llff(c2w, hwf, bounds))
    assert np.allclose(back, c2w, atol=1e-12) and np.allclose(hwf_back, hwf)
    frames = m360.read_release_scene(str(scene_dir), size=40)
    assert np.allclose(frames.c2w, source_c2w(), atol=1e-5)  # the poses as written, in the source world
    assert frames.names == [f"IMG_{k:03d}" for k in range(N_VIEWS)] and frames.images.shape == (N_VIEWS, 40, 40, 3)
    assert frames.fovy_deg == pytest.approx(FOVY_DEG, abs=1e-6)  # the centred square of the short side


def test_normalisation_undoes_the_source_world_and_picks_the_view_by_angle(scene_dir):
    frames = m360.read_release_scene(str(scene_dir), size=40)
    poses = m360.normalize_poses(frames.c2w, view_idx=2)
    # angle order = roll order (each camera aims at the focus point, rolled about its axis)
    assert np.degrees(poses.angles) == pytest.approx(ROLLS_DEG, abs=1e-6)
    assert poses.order.tolist() == list(np.argsort(ROLLS_DEG))
    assert poses.input_index == 0  # rank 2 of rolls [7, 0, 19, 3, ...] → roll 7°, view 0
    assert [m360.normalize_poses(frames.c2w, r).input_index for r in (0, 7)] == [1, 5]
    # the focus point, mapped back to the oracle world, is the known one
    to_source = np.linalg.inv(poses.world_to_normalized)
    focus_source = to_source @ np.array([0.0, 0.0, 0.0, 1.0])
    focus_world = np.linalg.inv(SOURCE_FROM_WORLD) @ focus_source
    assert focus_world[:3] == pytest.approx(FOCUS, abs=1e-6)
    # unit radius, cameras on a horizontal ring at the known elevation, z up (PCA + up flip)
    assert np.linalg.norm(poses.c2w[:, :3, 3], axis=1) == pytest.approx(np.ones(N_VIEWS), abs=1e-6)
    elevation = math.degrees(math.atan2(HEIGHT, RING_RADIUS))
    assert poses.elevation_deg == pytest.approx(elevation, abs=1e-6)
    assert poses.c2w[:, 2, 3] == pytest.approx(np.full(N_VIEWS, math.sin(math.radians(elevation))), abs=1e-6)
    # poses round-trip: normalised = world_to_normalized · source (rotations orthonormal, translations scaled)
    mapped = poses.world_to_normalized @ frames.c2w
    scale = np.cbrt(np.linalg.det(poses.world_to_normalized[:3, :3]))
    mapped[:, :3, :3] /= scale
    assert np.allclose(mapped, poses.c2w, atol=1e-5)
    # relative poses (what the test views use) equal the oracle world's, translations / the ring's distance
    rel = np.linalg.inv(poses.c2w[0]) @ poses.c2w
    truth = np.linalg.inv(world_c2w()[0]) @ world_c2w()
    truth[:, :3, 3] /= math.hypot(RING_RADIUS, HEIGHT)
    assert np.allclose(rel, truth, atol=1e-5)
    assert m360.elevation_range(poses.elevation_deg) == (5.0, 71.04)


def test_protocol_is_invariant_to_the_source_world(scene_dir):
    frames = m360.read_release_scene(str(scene_dir), size=40)
    rot = np.eye(4)
    rot[:3, :3] = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))[0]
    rot[:3, :3] *= np.sign(np.linalg.det(rot[:3, :3]))
    rot[:3, 3] = [-3.0, 7.0, 0.5]
    other = rot @ frames.c2w
    a, b = m360.normalize_poses(frames.c2w, 2), m360.normalize_poses(other, 2)
    assert a.input_index == b.input_index and a.elevation_deg == pytest.approx(b.elevation_deg, abs=1e-9)
    rel_a = np.linalg.inv(a.c2w[a.input_index]) @ a.c2w
    rel_b = np.linalg.inv(b.c2w[b.input_index]) @ b.c2w
    assert np.allclose(rel_a, rel_b, atol=1e-8)


def test_elevation_range_is_zeronvs_formula():
    assert m360.elevation_range(20.0) == (5.0, 70.0)
    assert m360.elevation_range(3.0) == (3.0, 53.0)  # low bound min(5, e) when e < 5
    assert m360.elevation_range(-10.0) == (-10.0, 40.0)
    assert m360.elevation_range(60.0) == (30.0, 80.0)
    assert m360.elevation_range(12.3456) == (5.0, 62.35)


def test_frames_are_the_worlds_centre_squares(scene_dir):
    """The loaded 40² frames equal the oracle world rendered directly with square cameras of the same fov."""
    from zeronvs_diffusion.oracle.scene import load_scene, render

    scene = m360.load_scene(str(scene_dir), view_idx=2, size=40)
    direct, _ = render(load_scene(str(WORLD)), torch.from_numpy(world_c2w()), torch.full((N_VIEWS,), FOVY_DEG), 40, 40)
    mse = float(((scene.images - direct.float()) ** 2).mean())
    assert 10 * math.log10(1 / mse) > 24
    assert scene.intrinsics[0].tolist() == pytest.approx([42.89, 42.89, 20.0, 20.0], abs=0.01)
    assert scene.target_indices == [1, 2, 3, 4, 5, 6, 7] and scene.input_index == 0
    assert scene.image_paths[0].endswith("images_2/IMG_000.png")


def test_pickle_only_through_the_explicit_converter(tmp_path, scene_dir):
    frames = m360.read_release_scene(str(scene_dir), size=32)
    focal = 0.5 * 256 / math.tan(math.radians(FOVY_DEG) / 2)
    pixtocam = np.linalg.inv(np.array([[focal, 0, 128], [0, focal, 128], [0, 0, 1.0]]))
    data = {"tabletop": {"images": frames.images.numpy(), "extrinsics": frames.c2w[:, :3],
                         "intrinsics": np.stack([pixtocam] * N_VIEWS), "depths": np.zeros((N_VIEWS, 32, 32, 1))}}
    pkl = tmp_path / "mipnerf360.pkl"
    pkl.write_bytes(pickle.dumps(data))
    with pytest.raises(UserError, match="--trust-pickle"):
        m360.convert_pickle(str(pkl), str(tmp_path / "npz"), trust_pickle=False)
    assert m360.main([str(pkl), "--out", str(tmp_path / "npz")]) == 2 and not (tmp_path / "npz").exists()
    assert m360.main([str(pkl), "--out", str(tmp_path / "npz"), "--trust-pickle"]) == 0
    npz = tmp_path / "npz" / "tabletop.npz"
    with np.load(npz, allow_pickle=False) as arrays:  # numbers only
        assert arrays["images"].dtype == np.uint8 and arrays["c2w"].shape == (N_VIEWS, 4, 4)
    from_npz = m360.load_scene(str(npz), view_idx=2, size=32)
    from_release = m360.load_scene(str(scene_dir), view_idx=2, size=32)
    assert from_npz.fovy_deg == pytest.approx(FOVY_DEG, abs=1e-9)
    assert from_npz.input_index == from_release.input_index
    assert torch.allclose(from_npz.c2w, from_release.c2w, atol=1e-9)
    assert (from_npz.images - from_release.images).abs().max() <= 0.5 / 255 + 1e-6


def test_bad_scenes_are_one_line_errors(tmp_path, scene_dir):
    with pytest.raises(UserError, match="not found"):
        m360.load_scene(str(tmp_path / "missing"), 0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="poses_bounds.npy not found"):
        m360.load_scene(str(tmp_path / "empty"), 0)
    with pytest.raises(UserError, match="out of range: the scene has 8 views"):
        m360.load_scene(str(scene_dir), 8, size=32)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(UserError, match="--trust-pickle"):
        m360.load_scene(str(bad), 0)


def _datamodule(scene_dir, **scene):
    from threestudio.data.posed_inputs import PosedInputsDataModule

    cfg = {"scene_format": "mipnerf360", "height": 32, "width": 32, "default_elevation_deg": "auto",
           "scene": {"scene_dir": str(scene_dir), "view_idx": 2, "resolution": 32, **scene},
           "random_camera": {"elevation_range": "auto", "eval_elevation_deg": "auto", "eval_height": 32,
                             "eval_width": 32}}
    return PosedInputsDataModule(cfg)


def test_posed_inputs_datamodule_takes_the_scene_from_the_loader(scene_dir):
    dm = _datamodule(scene_dir, manual_gt_to_pred_scale=0.9)
    assert dm.cfg.default_elevation_deg == pytest.approx(math.degrees(math.atan2(HEIGHT, RING_RADIUS)), abs=1e-3)
    assert list(dm.cfg.random_camera.elevation_range) == [5.0, 71.04]
    assert dm.cfg.default_fovy_deg == pytest.approx(FOVY_DEG) and dm.cfg.image_path.endswith("IMG_000.png")
    dm.setup("test")
    assert dm.targets.indices.tolist() == [1, 2, 3, 4, 5, 6, 7] and len(dm.test_dataset) == 7
    batch = dm.test_dataset[0]
    assert batch["rgb"].shape == (1, 32, 32, 3) and batch["index"].item() == 1
    # test poses: canonical input camera · the oracle world's relative pose, translation / ring distance / 0.9
    truth = np.linalg.inv(world_c2w()[0]) @ world_c2w()[1]
    truth[:3, 3] /= math.hypot(RING_RADIUS, HEIGHT) * 0.9
    rel = torch.linalg.inv(dm.mipnerf360.canonical_c2w.double()) @ batch["c2w"][0].double()
    assert np.allclose(rel.numpy(), truth, atol=1e-5)
    assert torch.allclose(dm.mipnerf360.canonical_c2w, dm.reference.c2w()[0].float(), atol=1e-5)
    # the reference view is the input's frame, the same pixels as its test-view ground truth would be
    assert torch.equal(dm.mipnerf360.input_rgba()[..., :3], dm.mipnerf360.loaded.images[0])


def test_posed_inputs_datamodule_refuses_unknown_keys(scene_dir):
    from threestudio.utils.errors import ConfigError

    with pytest.raises(ConfigError, match="data.scene.input_views is not a key of scene_format mipnerf360"):
        _datamodule(scene_dir, input_views=[0])
