"""posed-inputs-datamodule on a real DTU scan: ZeroNVS's DTU protocol (kylesargent/ZeroNVS
``threestudio/data/image.py`` ``view_synthesis`` with ``launch_eval_dtu.sh``'s settings), at small sizes."""

from __future__ import annotations

import logging
import math

import pytest
import torch

import threestudio
from threestudio.data.idr_cameras import list_images, load_idr_cameras
from threestudio.data.multiview import MultiviewDataModule
from threestudio.data.posed_inputs import PosedInputsDataModule
from threestudio.utils.camera import orbit_c2w
from threestudio.utils.errors import ConfigError
from threestudio.utils.image import load_image, resize_image

EXCLUDED = [3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 36, 37, 38, 39]
POSE_SCALE = 1 / (2.02 * 1.3)


def config(scene_dir, **overrides):
    cfg = {
        "height": [15, 30],
        "width": [20, 40],
        "resolution_milestones": [10],
        "default_elevation_deg": 20.0,
        "random_camera": {"height": 8, "width": 8, "batch_size": 2, "eval_height": 30, "eval_width": 40},
        "scene": {
            "scene_dir": str(scene_dir), "input_views": [25], "excluded_views": EXCLUDED, "height": 30, "width": 40,
            "crop_square": False, "canonicalize": True, "pose_scale": POSE_SCALE,
        },
    }
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        (cfg[section] if section else cfg)[name] = value
    return cfg


@pytest.fixture(scope="module")
def dm(dtu_scan24):
    module = PosedInputsDataModule(config(dtu_scan24))
    module.setup()
    return module


def test_input_is_view_25_with_zeronvs_fov(dm, dtu_scan24):
    assert threestudio.find("posed-inputs-datamodule") is PosedInputsDataModule
    assert dm.cfg.image_path == list_images(str(dtu_scan24 / "image"))[25]
    K = load_idr_cameras(str(dtu_scan24), normalize=True)[25].K
    assert dm.cfg.default_fovy_deg == pytest.approx(math.degrees(2 * math.atan2(K[1, 2], K[1, 1])))  # ≈ 24.24°
    frame = load_image(dm.cfg.image_path)[..., :3]
    assert frame.shape == (300, 400, 3)
    batch = dm.train_dataset.make_batch()  # the reference view: the whole frame at stage 1
    torch.testing.assert_close(batch["rgb"][0], resize_image(frame, 15, 20).clamp(0, 1), atol=1e-5, rtol=0)
    torch.testing.assert_close(batch["c2w"][0], orbit_c2w(torch.tensor([20.0]), torch.tensor([0.0]),
                                                          torch.tensor([1.0]))[0], atol=1e-6, rtol=0)
    cond = dm.conditioning()  # the guidance: the central square (ZeroNVS's central crop), same vertical fov
    assert cond["images"].shape == (1, 300, 300, 3)
    torch.testing.assert_close(cond["images"][0], frame[:, 50:350], atol=1e-6, rtol=0)
    assert float(cond["fov_deg"]) == pytest.approx(dm.cfg.default_fovy_deg)
    assert dm.sampler.fovy_range == (dm.cfg.default_fovy_deg,) * 2  # random views use the input's fov


def test_test_views_are_the_protocol_targets_relative_to_the_input(dm, dtu_scan24):
    targets = [i for i in range(49) if i != 25 and i not in EXCLUDED]
    batches = list(dm.test_dataloader())
    assert [int(b["index"]) for b in batches] == targets and len(targets) == 33
    cams = load_idr_cameras(str(dtu_scan24), normalize=True)
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))  # pixelNeRF's world flip
    world = {i: flip @ torch.from_numpy(cams[i].c2w_opengl) for i in [25, *targets]}
    canonical = orbit_c2w(torch.tensor([20.0]), torch.tensor([0.0]), torch.tensor([1.0])).double()[0]
    fovy = dm.cfg.default_fovy_deg
    for batch in batches[::8]:
        i = int(batch["index"])
        relative = torch.linalg.inv(world[25]) @ world[i]
        relative[:3, 3] *= POSE_SCALE  # translations / 2.02 / manual_gt_to_pred_scale
        torch.testing.assert_close(batch["c2w"][0].double(), canonical @ relative, atol=1e-5, rtol=0)
        assert batch["rgb"].shape == (1, 30, 40, 3)
        # a centred pinhole camera of the input's vertical fov (ZeroNVS renders every test view so)
        d = batch["rays_d"][0]
        centre = (d[14, 19] + d[15, 20] + d[14, 20] + d[15, 19]) / 4
        forward = -batch["c2w"][0, :3, 2]
        assert torch.nn.functional.cosine_similarity(centre, forward, dim=0) > 1 - 1e-6
        top = (d[0, 19] + d[0, 20]) / 2
        angle = math.degrees(math.acos(float(torch.nn.functional.cosine_similarity(top, forward, dim=0))))
        assert angle == pytest.approx(fovy / 2 * (1 - 1 / 30), abs=0.05)  # pixel centre half a row inside


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"image_path": "x.png"}, "data.image_path comes from data.scene"),
        ({"scene.canonicalize": False}, "canonicalize must be true"),
        ({"scene.default_elevation_deg": 31.0}, "data.scene.default_elevation_deg is not a scene key"),
        ({"scene.train_rays_per_batch": 64}, "unknown config key 'data.scene.train_rays_per_batch'"),
        ({"scene.generated_views_dir": "x"}, "unknown config key 'data.scene.generated_views_dir'"),
        ({"scene.seed": 1}, "unknown config key 'data.scene.seed'"),
        ({"height": [15, 15]}, "aspect"),
        ({"scene_intrinsics": "opencv"}, "scene_intrinsics"),
    ],
)
def test_config_errors_name_the_key(dtu_scan24, overrides, message):
    with pytest.raises(ConfigError, match=message):
        PosedInputsDataModule(config(dtu_scan24, **overrides)).setup()


def test_explicit_views_win_over_excluded_views_with_a_warning(dtu_scan24, caplog):
    cfg = dict(scene_dir=str(dtu_scan24), input_views=[0, 10, 20], excluded_views=EXCLUDED, target_views=None,
               height=6, width=8, crop_square=False)
    with caplog.at_level(logging.WARNING, logger="threestudio.data.posed_views"):
        dm = MultiviewDataModule(cfg)
        dm.setup("test")
    assert dm.inputs.indices.tolist() == [0, 10, 20]
    assert "input_views names camera(s) [20] of data.excluded_views" in caplog.text
    assert 20 not in dm.targets.indices.tolist() and 3 not in dm.targets.indices.tolist()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="threestudio.data.posed_views"):
        dm = MultiviewDataModule(dict(cfg, input_views=[25], target_views=[3, 8]))
        dm.setup("test")
    assert dm.targets.indices.tolist() == [3, 8] and "target_views names camera(s) [3]" in caplog.text


# ------------------------------------------------------------------------------------------------- few views
FEW = [25, 22, 28]  # the RegNeRF / ReconFusion / CAT3D 3-view split's inputs


@pytest.fixture(scope="module")
def few(dtu_scan24):
    module = PosedInputsDataModule(config(dtu_scan24, **{"scene.input_views": FEW}))
    module.setup()
    return module


def test_several_inputs_posed_in_the_first_ones_frame(few, dtu_scan24):
    """Inputs 2..N keep their poses relative to the first (translations × pose_scale); each reference view is its
    whole frame; the conditioning holds every input's central square with its pose and fov."""
    cams = load_idr_cameras(str(dtu_scan24), normalize=True)
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))
    world = {i: flip @ torch.from_numpy(cams[i].c2w_opengl) for i in FEW}
    canonical = orbit_c2w(torch.tensor([20.0]), torch.tensor([0.0]), torch.tensor([1.0])).double()[0]
    cond = few.conditioning()
    assert cond["images"].shape == (3, 300, 300, 3) and cond["c2w"].shape == (3, 4, 4)
    for k, i in enumerate(FEW):
        relative = torch.linalg.inv(world[25]) @ world[i]
        relative[:3, 3] *= POSE_SCALE
        torch.testing.assert_close(cond["c2w"][k].double(), canonical @ relative, atol=1e-5, rtol=0)
        frame = load_image(list_images(str(dtu_scan24 / "image"))[i])[..., :3]
        torch.testing.assert_close(cond["images"][k], frame[:, 50:350], atol=1e-6, rtol=0)
        K = cams[i].K
        fovy = math.degrees(2 * math.atan2(K[1, 2], K[1, 1]))  # the zeronvs rule, each input's own camera
        assert float(cond["fov_deg"][k]) == pytest.approx(fovy, abs=1e-4)
    # step s supervises input s mod 3 (one view's rays per step, as the single-view pipeline)
    train = few.train_dataset
    for step in range(4):
        train.update_step(0, step)
        batch = train.make_batch()
        k = step % 3
        assert batch["input_index"].tolist() == [k] and batch["rgb"].shape == (1, 15, 20, 3)
        torch.testing.assert_close(batch["c2w"][0], cond["c2w"][k], atol=1e-6, rtol=0)
        frame = load_image(list_images(str(dtu_scan24 / "image"))[FEW[k]])[..., :3]
        torch.testing.assert_close(batch["rgb"][0], resize_image(frame, 15, 20).clamp(0, 1), atol=1e-5, rtol=0)
        torch.testing.assert_close(batch["canonical_c2w"][0], cond["c2w"][0], atol=1e-6, rtol=0)
    # the test views' conditioning input is the nearest by rotation angle
    nearest = [int(b["cond_index"]) for b in few.test_dataloader()]
    assert set(nearest) == {0, 1, 2}


def test_every_input_each_step_and_by_file_name(dtu_scan24):
    names = [f"{i:06d}.png" for i in FEW]  # the scan's image files
    module = PosedInputsDataModule(config(dtu_scan24, reference_views_per_step=3, **{"scene.input_views": names}))
    module.setup()
    assert module.scene.inputs.indices.tolist() == FEW
    batch = module.train_dataset.make_batch()
    assert batch["input_index"].tolist() == [0, 1, 2] and batch["rays_o"].shape == (3, 15, 20, 3)
    with pytest.raises(ConfigError, match="reference_views_per_step"):
        PosedInputsDataModule(config(dtu_scan24, reference_views_per_step=4, **{"scene.input_views": FEW}))


def test_the_random_sds_cameras_cover_the_split_inputs(dtu_scan24):
    """Every input of the 3/6/9-view split, posed in the first input's frame at a protocol scale, lies inside the
    random SDS cameras' ranges: zeronvs_dtu.yaml's elevation [5, 80] misses views 44 and 48 (-1.8°, -3.4°), so
    cover_inputs widens it, and the parsed config records the widened range; one input changes nothing."""
    from threestudio.utils.camera import c2w_to_spherical

    split = [25, 22, 28, 40, 44, 48, 0, 8, 13]
    rc = {"height": 8, "width": 8, "batch_size": 2, "eval_height": 30, "eval_width": 40,
          "elevation_range": [5, 80], "camera_distance_range": [0.8, 1.8]}
    cfg = config(dtu_scan24, random_camera=rc, **{"scene.input_views": split})
    module = PosedInputsDataModule(cfg)
    module.setup("test")
    elevation, _, distance = c2w_to_spherical(module.scene.inputs.c2w.float())
    low, high = module.cfg.random_camera.elevation_range
    assert low <= float(elevation.min()) - 5 + 1e-3 and float(elevation.max()) <= high, (elevation, low, high)
    assert low < 0 and high == 80  # only the side that missed an input moved
    d_low, d_high = module.cfg.random_camera.camera_distance_range
    assert d_low <= float(distance.min()) and float(distance.max()) <= d_high
    assert module.sampler.cfg.elevation_range == module.cfg.random_camera.elevation_range
    single = PosedInputsDataModule(config(dtu_scan24, random_camera=rc))
    assert list(single.cfg.random_camera.elevation_range) == [5, 80]
    off = PosedInputsDataModule(
        config(dtu_scan24, random_camera=rc, cover_inputs=False, **{"scene.input_views": split})
    )
    assert list(off.cfg.random_camera.elevation_range) == [5, 80]


def test_the_old_datamodule_name_is_refused_with_the_new_one():
    with pytest.raises(ConfigError, match="renamed 'posed-inputs-datamodule'"):
        threestudio.find("single-view-scene-datamodule")
