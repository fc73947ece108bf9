"""The posed-view datamodules: a posed scene (threestudio/data/multiview.py), one image with target poses
(threestudio/data/image_target_poses.py), their shared loading (threestudio/data/posed_views.py), and nearest-view
selection."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict

import imageio.v3 as iio
import numpy as np
import pytest
import torch

import threestudio
from threestudio.data.idr_cameras import load_idr_cameras
from threestudio.data.image_target_poses import ImageTargetPosesDataModule
from threestudio.data.multiview import MultiviewDataModule
from threestudio.data.view_selection import pairwise_view_distances, select_nearest
from threestudio.utils.camera import c2w_to_spherical, opengl_to_opencv, orbit_c2w
from threestudio.utils.errors import ConfigError, UserError
from threestudio.utils.image import crop_to_square, load_image, resize_image

EVAL_KEYS = {
    "rays_o", "rays_d", "c2w", "canonical_c2w", "fov_deg", "elevation_deg", "azimuth_deg", "camera_distance",
    "height", "width", "index", "cond_index", "light_positions", "rgb", "mask",
}  # fmt: skip


def loaded(cfg: Dict[str, Any]):
    """The datamodule of ``cfg`` (a posed scene, or with ``image_path`` one image) with its files read."""
    dm = ImageTargetPosesDataModule(cfg) if "image_path" in cfg else MultiviewDataModule(cfg)
    dm.setup("test")
    return dm


def first_batch(loader) -> Dict[str, Any]:
    return next(iter(loader))


def dtu_cfg(scene: Path, **overrides) -> Dict[str, Any]:
    cfg = dict(scene_dir=str(scene), input_views=[25], target_views=[31, 13, 0], height=75, width=100,
               crop_square=False, train_rays_per_batch=256)  # fmt: skip
    cfg.update(overrides)
    return cfg


def dtu_c2w_opengl(scene: Path) -> torch.Tensor:
    return torch.from_numpy(np.stack([c.c2w_opengl for c in load_idr_cameras(str(scene))]))


# ---------------------------------------------------------------------------------------------- DTU scan 24
@pytest.fixture(scope="module")
def dtu_dm(dtu_scan24):
    dm = threestudio.find("multiview-datamodule")(
        dtu_cfg(dtu_scan24, use_masks=True, background="white", pose_scale=0.5)
    )
    dm.setup()
    return dm


def test_train_batch_is_random_rays_of_the_input_views(dtu_dm):
    batch = first_batch(dtu_dm.train_dataloader())
    assert set(batch) == {"rays_o", "rays_d", "rgb", "mask", "weight", "height", "width"}
    for key, c in (("rays_o", 3), ("rays_d", 3), ("rgb", 3), ("mask", 1), ("weight", 1)):
        assert batch[key].shape == (1, 1, 256, c), key
    assert batch["height"] == 1 and batch["width"] == 256
    assert torch.all(batch["weight"] == 1.0)
    torch.testing.assert_close(batch["rays_d"].norm(dim=-1), torch.ones(1, 1, 256))
    # every ray starts at the (only) input camera, the canonical one
    torch.testing.assert_close(batch["rays_o"][0, 0], dtu_dm.canonical_c2w[:3, 3].expand(256, 3))
    # background "white": colour outside the mask is white
    outside = batch["mask"][0, 0, :, 0] == 0
    assert outside.any() and torch.all(batch["rgb"][0, 0][outside] == 1.0)


def test_eval_batches_one_target_each_with_ground_truth(dtu_dm):
    batches = list(dtu_dm.test_dataloader())
    assert [int(b["index"]) for b in batches] == [31, 13, 0]
    b = batches[0]
    assert set(b) == EVAL_KEYS
    assert b["rays_o"].shape == b["rays_d"].shape == (1, 75, 100, 3)
    assert b["rgb"].shape == (1, 75, 100, 3) and b["mask"].shape == (1, 75, 100, 1)
    assert b["c2w"].shape == b["canonical_c2w"].shape == (1, 4, 4)
    for key in ("fov_deg", "elevation_deg", "azimuth_deg", "camera_distance", "index", "cond_index"):
        assert b[key].shape == (1,), key
    assert b["height"] == 75 and b["width"] == 100
    assert int(b["cond_index"]) == 0
    assert float(b["fov_deg"]) == pytest.approx(23.51, abs=0.01)
    elevation, azimuth, distance = c2w_to_spherical(b["c2w"])
    assert float(b["elevation_deg"]) == pytest.approx(float(elevation))
    assert float(b["camera_distance"]) == pytest.approx(float(distance))
    assert 0.0 <= float(b["rgb"].min()) and float(b["rgb"].max()) <= 1.0
    assert 0.05 < float(b["mask"].mean()) < 0.95  # a real object mask


def test_canonical_input_camera_at_distance_one_and_configured_elevation(dtu_dm, dtu_scan24):
    elevation, azimuth, distance = c2w_to_spherical(dtu_dm.canonical_c2w[None])
    assert float(distance) == pytest.approx(1.0, abs=1e-5)
    assert float(elevation) == pytest.approx(20.0, abs=1e-4) and float(azimuth) == pytest.approx(0.0, abs=1e-4)
    # it looks at the origin
    forward = -dtu_dm.canonical_c2w[:3, 2]
    torch.testing.assert_close(forward, -dtu_dm.canonical_c2w[:3, 3] / distance, atol=1e-5, rtol=0)
    # relative poses are kept, translations multiplied by pose_scale (0.5)
    raw = dtu_c2w_opengl(dtu_scan24)
    for k, view in enumerate([31, 13, 0]):
        expected = torch.linalg.inv(raw[25]) @ raw[view]
        expected[:3, 3] *= 0.5
        got = torch.linalg.inv(dtu_dm.canonical_c2w.double()) @ dtu_dm.targets.c2w[k]
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    cond = dtu_dm.conditioning()
    torch.testing.assert_close(cond["c2w"][0], dtu_dm.canonical_c2w)
    assert cond["indices"].tolist() == [25] and cond["images"].shape == (1, 75, 100, 3)
    dm = loaded(
        dtu_cfg(dtu_scan24, default_elevation_deg=35.0, default_azimuth_deg=40.0, target_views=[31])
    )
    elevation, azimuth, distance = c2w_to_spherical(dm.canonical_c2w[None])
    assert (float(elevation), float(azimuth), float(distance)) == pytest.approx((35.0, 40.0, 1.0), abs=1e-4)


def test_without_canonicalize_poses_stay_in_the_normalised_world(dtu_scan24):
    raw = dtu_c2w_opengl(dtu_scan24)
    dm = loaded(dtu_cfg(dtu_scan24, canonicalize=False, flip_world_yz=False))
    torch.testing.assert_close(dm.canonical_c2w.double(), raw[25], atol=1e-6, rtol=0)
    torch.testing.assert_close(dm.targets.c2w, raw[[31, 13, 0]])
    assert dm.scene_center.abs().max() == 0 and dm.scene_radius == 1.0
    flipped = loaded(dtu_cfg(dtu_scan24, canonicalize=False, pose_scale=2.0))
    expected = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64)) @ raw[25]
    expected[:3, 3] *= 2.0
    torch.testing.assert_close(flipped.canonical_c2w.double(), expected, atol=1e-5, rtol=0)
    assert flipped.scene_radius == 2.0


def test_rays_follow_the_real_intrinsics_through_the_square_crop(dtu_scan24):
    """A point on the ray of output pixel (i, j) projects (with the scene's P) to that pixel's source position."""
    size = 48
    dm = loaded(
        dtu_cfg(dtu_scan24, canonicalize=False, flip_world_yz=False, crop_square=True, height=size, width=size)
    )
    b = first_batch(dm.test_dataloader())  # view 31
    data = np.load(dtu_scan24 / "cameras.npz")
    P = (data["world_mat_31"] @ data["scale_mat_31"])[:3]
    step = 300 / size
    for j, i in [(0, 0), (10, 40), (47, 47), (24, 5)]:
        point = (b["rays_o"][0, j, i] + 2.7 * b["rays_d"][0, j, i]).double().numpy()
        uvw = P @ np.append(point, 1.0)
        u, v = uvw[:2] / uvw[2]
        # output pixel centre (i + 0.5)·step in the 300×300 crop = OpenCV pixel (i + 0.5)·step − 0.5 + 50
        assert u == pytest.approx((i + 0.5) * step - 0.5 + 50, abs=1e-3)
        assert v == pytest.approx((j + 0.5) * step - 0.5, abs=1e-3)


def test_crop_square_images_and_fov(dtu_scan24):
    dm = loaded(dtu_cfg(dtu_scan24, crop_square=True, height=32, width=32, input_views=[25, 31]))
    cond = dm.conditioning()
    assert cond["images"].shape == (2, 32, 32, 3) and cond["indices"].tolist() == [25, 31]
    expected = resize_image(crop_to_square(load_image(str(dtu_scan24 / "image" / "000031.png"))[..., :3]), 32, 32)
    torch.testing.assert_close(cond["images"][1], expected.clamp(0, 1))
    # fov of the 300×300 crop is the full vertical fov: 2·atan(150 / fy)
    fov = 2 * math.degrees(math.atan(150 / 720.7939))
    torch.testing.assert_close(cond["fov_deg"], torch.full((2,), fov), atol=1e-3, rtol=0)
    b = first_batch(dm.test_dataloader())
    assert b["rgb"].shape == (1, 32, 32, 3) and torch.all(b["mask"] == 1)  # no masks: all ones


def test_default_targets_skip_inputs_and_excluded_views(dtu_scan24):
    excluded = [3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 36, 37, 38, 39]  # the ZeroNVS DTU protocol
    dm = loaded(
        dtu_cfg(
            dtu_scan24, target_views=None, excluded_views=excluded, height=8, width=8, crop_square=True, n_val_views=3
        )
    )
    expected = [i for i in range(49) if i not in excluded and i != 25]
    assert dm.targets.indices.tolist() == expected and len(expected) == 33
    dm.setup("validate")
    assert len(dm.val_dataset) == 3
    assert [int(b["index"]) for b in dm.val_dataloader()] == [expected[0], expected[16], expected[32]]


# ---------------------------------------------------------------------------------------------- view selection
def test_nearest_view_by_rotation_angle_on_dtu(dtu_scan24):
    c2w = dtu_c2w_opengl(dtu_scan24)
    others = [i for i in range(49) if i != 25]
    indices, angles, distances = select_nearest(c2w[others], c2w[[25]])
    assert others[int(indices[0])] == 31 and float(angles[0]) == pytest.approx(11.62, abs=0.01)
    all_angles, all_distances = pairwise_view_distances(c2w[others], c2w[[25]])
    assert [others[i] for i in all_angles[0].argsort()[:4].tolist()] == [31, 13, 26, 24]
    assert float(distances[0]) == pytest.approx(float(all_distances[0, others.index(31)]))
    # distance rule and the mixed rule's two limits
    by_distance = others[int(select_nearest(c2w[others], c2w[[25]], "distance")[0][0])]
    assert by_distance == others[int(all_distances[0].argmin())]
    assert int(select_nearest(c2w[others], c2w[[25]], "mixed", 0.0)[0][0]) == int(indices[0])
    assert others[int(select_nearest(c2w[others], c2w[[25]], "mixed", 1e6)[0][0])] == by_distance
    # invariant under the OpenCV/OpenGL convention
    assert int(select_nearest(opengl_to_opencv(c2w[others]), opengl_to_opencv(c2w[[25]]))[0][0]) == int(indices[0])


def test_datamodule_selection_and_cond_index(dtu_scan24):
    dm = loaded(dtu_cfg(dtu_scan24, input_views=[0, 31], target_views=[25, 1], height=8, width=8))
    sel = dm.selection()
    assert [s["target"] for s in sel] == [25, 1] and sel[0]["source"] == 31 and sel[1]["source"] == 0
    assert sel[0]["angle_deg"] == pytest.approx(11.62, abs=0.01)
    assert set(sel[0]) == {"target", "source", "angle_deg", "center_distance"}
    assert [int(b["cond_index"]) for b in dm.test_dataloader()] == [1, 0]
    with pytest.raises(ConfigError, match="selection"):
        MultiviewDataModule(dtu_cfg(dtu_scan24, selection="nearest"))


# ---------------------------------------------------------------------------------------------- no-scene mode
@pytest.fixture
def rgba_image(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(30, 40, 4), dtype=np.uint8)
    img[..., 3] = 255
    img[:5, :, 3] = 0  # a transparent band
    path = tmp_path / "input.png"
    iio.imwrite(path, img)
    return path


def test_no_scene_targets_from_npy_relative_to_the_input_camera(rgba_image, tmp_path):
    rel = np.stack([np.eye(4), np.eye(4)])
    rel[1, :3, 3] = [0.3, 0.0, 0.0]  # the second target: 0.3 to the input camera's right
    np.save(tmp_path / "targets.npy", rel)
    cfg = dict(image_path=str(rgba_image), target_c2w_path=str(tmp_path / "targets.npy"), height=16, width=16,
               default_fovy_deg=40.0, default_elevation_deg=15.0, pose_scale=2.0)  # fmt: skip
    dm = loaded(cfg)
    dm.setup()
    canonical = orbit_c2w(torch.tensor([15.0]), torch.tensor([0.0]), torch.tensor([1.0]))[0]
    torch.testing.assert_close(dm.canonical_c2w, canonical)
    batches = list(dm.test_dataloader())
    assert [int(b["index"]) for b in batches] == [0, 1]
    assert "rgb" not in batches[0] and "mask" not in batches[0]
    assert set(batches[0]) == EVAL_KEYS - {"rgb", "mask"}
    torch.testing.assert_close(batches[0]["c2w"][0], canonical)
    torch.testing.assert_close(batches[1]["c2w"][0, :3, 3], canonical[:3, 3] + 0.6 * canonical[:3, 0])  # × pose_scale
    assert float(batches[1]["fov_deg"]) == pytest.approx(40.0)
    cond = dm.conditioning()
    assert cond["images"].shape == (1, 16, 16, 3) and cond["fov_deg"].tolist() == [40.0]
    train = first_batch(dm.train_dataloader())
    assert train["rgb"].shape == (1, 1, 1024, 3) and 0 < float(train["mask"].mean()) < 1  # alpha → mask


def test_no_scene_targets_from_json_and_orbit(rgba_image, tmp_path):
    path = tmp_path / "targets.json"
    path.write_text(json.dumps({"c2w": np.eye(4)[None].tolist()}))
    dm = loaded(dict(image_path=str(rgba_image), target_c2w_path=str(path), height=8, width=8))
    assert len(dm.targets) == 1 and torch.allclose(dm.targets.c2w[0].float(), dm.canonical_c2w)
    dm = loaded(
        dict(image_path=str(rgba_image), height=8, width=8, orbit=dict(n_views=4, elevation_deg=30.0, distance=1.5))
    )
    dm.setup("test")
    batches = list(dm.test_dataloader())
    assert len(batches) == 4
    azimuths = [float(b["azimuth_deg"]) % 360.0 for b in batches]
    assert azimuths == pytest.approx([0.0, 90.0, 180.0, 270.0], abs=1e-3)
    for b in batches:
        assert float(b["elevation_deg"]) == pytest.approx(30.0, abs=1e-4)
        assert float(b["camera_distance"]) == pytest.approx(1.5, abs=1e-5)
        assert b["rays_o"].shape == (1, 8, 8, 3)


def test_generated_views_join_training_with_their_weight(rgba_image, tmp_path):
    np.save(tmp_path / "targets.npy", np.stack([np.eye(4)] * 3))
    gen = tmp_path / "nvs"
    gen.mkdir()
    for i in (0, 2):  # target 1 was not generated
        iio.imwrite(gen / f"target_{i:03d}.png", np.full((12, 12, 3), 200, dtype=np.uint8))
    cfg = dict(image_path=str(rgba_image), target_c2w_path=str(tmp_path / "targets.npy"), height=12, width=12,
               generated_views_dir=str(gen), generated_weight=0.25, train_rays_per_batch=4096)  # fmt: skip
    dm = loaded(cfg)
    dm.setup("fit")
    assert len(dm.train_dataset) == 3 * 12 * 12
    weights = dm.train_dataset.rays["weight"][:, 0]
    assert (weights == 1.0).sum() == 144 and (weights == 0.25).sum() == 288
    torch.testing.assert_close(dm.train_dataset.rays["rgb"][weights == 0.25], torch.full((288, 3), 200 / 255))
    batch = first_batch(dm.train_dataloader())
    assert set(batch["weight"].unique().tolist()) == {0.25, 1.0}
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no generated views"):
        loaded(dict(cfg, generated_views_dir=str(empty))).setup("fit")


# ---------------------------------------------------------------------------------------------- bad input
def make_scene(root: Path, n: int = 3, size=(16, 12), masks: bool = True) -> Path:
    """A tiny synthetic IDR scene: n cameras on an orbit looking at the origin, with a scale_mat."""
    (root / "image").mkdir(parents=True)
    (root / "mask").mkdir()
    c2w_cv = opengl_to_opencv(
        orbit_c2w(torch.full((n,), 20.0), torch.linspace(0, 60, n), torch.full((n,), 3.0)).double()
    ).numpy()
    K = np.array([[20.0, 0, size[0] / 2], [0, 20.0, size[1] / 2], [0, 0, 1]])
    scale_mat = np.diag([2.0, 2.0, 2.0, 1.0])
    scale_mat[:3, 3] = [0.1, 0.2, 0.3]
    arrays = {}
    for i in range(n):
        P = np.eye(4)
        P[:3] = K @ np.linalg.inv(c2w_cv[i])[:3]
        arrays[f"world_mat_{i}"] = P @ np.linalg.inv(scale_mat)
        arrays[f"scale_mat_{i}"] = scale_mat
        iio.imwrite(root / "image" / f"{i:06d}.png", np.full((size[1], size[0], 3), 40 * i, dtype=np.uint8))
        if masks:
            iio.imwrite(root / "mask" / f"{i:03d}.png", np.full((size[1], size[0]), 255, dtype=np.uint8))
    np.savez(root / "cameras.npz", **arrays)
    return root


def scene_cfg(scene: Path, **overrides) -> Dict[str, Any]:
    cfg = dict(scene_dir=str(scene), input_views=[0], height=6, width=8, crop_square=False, use_masks=True)
    cfg.update(overrides)
    return cfg


def test_synthetic_scene_loads(tmp_path):
    dm = loaded(scene_cfg(make_scene(tmp_path / "s"), canonicalize=False, flip_world_yz=False))
    assert dm.targets.indices.tolist() == [1, 2]
    expected = orbit_c2w(torch.full((3,), 20.0), torch.linspace(0, 60, 3), torch.full((3,), 3.0)).double()
    torch.testing.assert_close(dm.inputs.c2w[0], expected[0], atol=1e-6, rtol=0)  # scale_mat undone
    torch.testing.assert_close(dm.targets.rgb[1], torch.full((6, 8, 3), 80 / 255), atol=1e-6, rtol=0)


def test_index_out_of_range_names_file_and_index(tmp_path):
    scene = make_scene(tmp_path / "s")
    for key in ("input_views", "target_views", "excluded_views"):
        with pytest.raises(UserError, match=rf"data\.{key}: camera index 7 .*cameras\.npz has cameras 0\.\.2"):
            loaded(scene_cfg(scene, **{key: [7]}))


def test_missing_world_mat_and_bad_matrices(tmp_path):
    scene = make_scene(tmp_path / "s")
    arrays = dict(np.load(scene / "cameras.npz"))
    del arrays["world_mat_1"]
    np.savez(scene / "cameras.npz", **arrays)
    with pytest.raises(UserError, match=r"cameras\.npz: camera 1 has no world_mat_1"):
        loaded(scene_cfg(scene))
    arrays["world_mat_1"] = np.zeros((4, 4))
    np.savez(scene / "cameras.npz", **arrays)
    with pytest.raises(UserError, match=r"cameras\.npz: camera 1: .*singular"):
        loaded(scene_cfg(scene))
    arrays["world_mat_1"] = np.full((4, 4), np.nan)
    np.savez(scene / "cameras.npz", **arrays)
    with pytest.raises(UserError, match=r"cameras\.npz: camera 1: .*non-finite"):
        loaded(scene_cfg(scene))


def test_image_and_mask_count_mismatch(tmp_path):
    scene = make_scene(tmp_path / "s")
    (scene / "mask" / "002.png").unlink()
    with pytest.raises(UserError, match=r"mask has 2 masks but .*cameras\.npz has 3 cameras"):
        loaded(scene_cfg(scene))
    (scene / "image" / "000002.png").unlink()
    with pytest.raises(UserError, match=r"image has 2 images but .*cameras\.npz has 3 cameras"):
        loaded(scene_cfg(scene, use_masks=False))


def test_unreadable_image_names_file_and_camera(tmp_path):
    scene = make_scene(tmp_path / "s")
    (scene / "image" / "000001.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"camera 1: cannot read image .*000001\.png"):
        loaded(scene_cfg(scene))
    iio.imwrite(scene / "image" / "000001.png", np.zeros((5, 5, 3), dtype=np.uint8))
    with pytest.raises(UserError, match=r"camera 1: image .*000001\.png is 5x5"):
        loaded(scene_cfg(scene))


def test_config_errors(tmp_path, rgba_image):
    scene = make_scene(tmp_path / "s")
    with pytest.raises(ConfigError, match="data.image_path is for one image .*image-target-poses-datamodule"):
        MultiviewDataModule(dict(scene_dir=str(scene), image_path=str(rgba_image)))
    with pytest.raises(ConfigError, match="data.scene_dir is empty"):
        MultiviewDataModule(dict(input_views=[0]))
    with pytest.raises(ConfigError, match="data.image_path is empty"):
        ImageTargetPosesDataModule(dict(orbit=dict(n_views=2)))
    for key in ("near", "far"):  # once accepted and never read
        with pytest.raises(ConfigError, match=rf"data\.{key} is not read by anything.*near_plane"):
            MultiviewDataModule(scene_cfg(scene, **{key: 1.0}))
    with pytest.raises(ConfigError, match="unknown config key 'data.scene'"):
        MultiviewDataModule(dict(scene=str(scene)))
    with pytest.raises(ConfigError, match="no-scene mode"):
        MultiviewDataModule(scene_cfg(scene, orbit=dict(n_views=2)))
    with pytest.raises(ConfigError, match="background"):
        MultiviewDataModule(scene_cfg(scene, background="grey"))
    nowhere = MultiviewDataModule(scene_cfg(tmp_path / "nowhere"))  # building reads no file; setup does
    with pytest.raises(UserError, match="scene_dir not found"):
        nowhere.setup()


@pytest.mark.parametrize(
    "key, value",
    [("input_views", [3]), ("target_views", [1]), ("excluded_views", [2]), ("use_masks", True),
     ("flip_world_yz", False), ("canonicalize", False)],
)
def test_one_image_mode_refuses_scene_keys(rgba_image, key, value):
    with pytest.raises(ConfigError, match=rf"data\.{key} apply to a posed scene"):
        ImageTargetPosesDataModule(dict(image_path=str(rgba_image), **{key: value}))


def test_scene_mode_refuses_the_one_image_fov(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.default_fovy_deg apply to one image"):
        MultiviewDataModule(scene_cfg(make_scene(tmp_path / "s"), default_fovy_deg=30.0))


def test_bad_target_pose_files(tmp_path, rgba_image):
    def dm_for(path: Path) -> ImageTargetPosesDataModule:
        return loaded(dict(image_path=str(rgba_image), target_c2w_path=str(path), height=8, width=8))

    np.save(tmp_path / "shape.npy", np.zeros((2, 3, 4)))
    with pytest.raises(UserError, match=r"shape\.npy: expected N×4×4"):
        dm_for(tmp_path / "shape.npy")
    bad = np.stack([np.eye(4)] * 3)
    bad[2, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(UserError, match=r"nan\.npy: camera 2 has non-finite"):
        dm_for(tmp_path / "nan.npy")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(UserError, match=r"cannot read camera poses .*broken\.json"):
        dm_for(tmp_path / "broken.json")
    with pytest.raises(UserError, match="target_c2w_path not found"):
        dm_for(tmp_path / "missing.npy")


def test_pose_scale_is_refused_with_an_orbit(rgba_image):
    """pose_scale scales target files' translations; with an orbit it used to be accepted and ignored."""
    with pytest.raises(ConfigError, match=r"data\.pose_scale .*data\.orbit\.distance"):
        ImageTargetPosesDataModule(dict(image_path=str(rgba_image), orbit=dict(n_views=2), pose_scale=0.5))
