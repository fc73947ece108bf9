"""Posed scene formats a user has (threestudio.data.posed_views): nerfstudio / instant-ngp transforms.json, LLFF /
Mip-NeRF 360 poses_bounds.npy (and IDR/NeuS cameras.npz, tested on DTU in test_dtu_protocol.py), each on a small
generated scene whose poses are known; the format is detected from the folder and views are named by index or by
file name."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from threestudio.data.mipnerf360 import opengl_to_llff
from threestudio.data.posed_inputs import PosedInputsDataModule
from threestudio.data.posed_views import SCENE_FORMATS, detect_scene_format, resolve_view_names
from threestudio.utils.camera import orbit_c2w
from threestudio.utils.errors import ConfigError, UserError
from threestudio.utils.image import save_image

W, H, FOCAL = 16, 12, 14.0  # 4:3 frames, focal length in pixels
N = 5


def known_poses() -> torch.Tensor:
    """(N, 4, 4) OpenGL cameras at 3 scene units around a point (1, 2, 0.5), in a world that is not z-up."""
    c2w = orbit_c2w(torch.linspace(10.0, 30.0, N), torch.linspace(-60.0, 60.0, N), torch.full((N,), 3.0)).double()
    tilt = torch.tensor([[1.0, 0, 0], [0, 0.8, -0.6], [0, 0.6, 0.8]], dtype=torch.float64)  # a rotation about x
    c2w[:, :3, :3] = tilt @ c2w[:, :3, :3]
    c2w[:, :3, 3] = (tilt @ c2w[:, :3, 3, None])[..., 0] + torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    return c2w


def write_images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        save_image(str(folder / name), torch.full((H, W, 3), 0.1 + 0.15 * k))


def transforms_scene(root, instant_ngp=False):
    poses = known_poses()
    names = [f"frame_{k:05d}.png" for k in range(N)]
    write_images(root / "images", names)
    frames = [{"file_path": f"images/{n[:-4] if instant_ngp else n}", "transform_matrix": p.tolist()}
              for n, p in zip(names, poses)]
    if instant_ngp:  # horizontal fov, principal point at the centre, no w/h (read from the image)
        meta = {"camera_angle_x": 2 * math.atan(W / (2 * FOCAL)), "frames": frames}
    else:
        meta = {"fl_x": FOCAL, "fl_y": FOCAL, "cx": W / 2 + 0.5, "cy": H / 2 - 0.5, "w": W, "h": H,
                "camera_model": "OPENCV", "frames": frames}
    (root / "transforms.json").write_text(json.dumps(meta))
    return root


def llff_scene(root):
    poses = known_poses().numpy()
    hwf = np.tile([2 * H, 2 * W, 2 * FOCAL], (N, 1))  # the full-size images are twice the ones on disk
    np.save(root / "poses_bounds.npy", opengl_to_llff(poses, hwf, np.tile([0.5, 9.0], (N, 1))))
    write_images(root / "images_2", [f"IMG_{k:04d}.JPG.png" for k in range(N)])
    return root


@pytest.mark.parametrize("kind", ["nerfstudio", "instant-ngp", "llff"])
def test_reader_returns_the_known_cameras(tmp_path, kind):
    root = llff_scene(tmp_path) if kind == "llff" else transforms_scene(tmp_path, instant_ngp=kind == "instant-ngp")
    fmt = detect_scene_format(str(root))
    assert fmt == ("llff" if kind == "llff" else "transforms")
    cameras = SCENE_FORMATS[fmt](str(root), False)
    assert len(cameras) == N and cameras.image_size == (W, H) and not cameras.normalized
    torch.testing.assert_close(cameras.c2w, known_poses(), atol=1e-9, rtol=0)
    cx, cy = (W / 2 + 0.5, H / 2 - 0.5) if kind == "nerfstudio" else (W / 2, H / 2)
    expected_K = torch.tensor([[FOCAL, 0, cx], [0, FOCAL, cy], [0, 0, 1]], dtype=torch.float64)
    torch.testing.assert_close(cameras.K, expected_K.expand(N, 3, 3), atol=1e-9, rtol=0)
    assert resolve_view_names([0, "3", cameras.image_paths[4].split("/")[-1]], cameras, "k") == [0, 3, 4]


def test_errors_name_the_file_and_the_view(tmp_path):
    with pytest.raises(UserError, match="not a posed scene folder"):
        detect_scene_format(str(tmp_path))
    with pytest.raises(ConfigError, match="valid: auto"):
        detect_scene_format(str(tmp_path), "colmap")
    root = transforms_scene(tmp_path)
    cameras = SCENE_FORMATS["transforms"](str(root), False)
    with pytest.raises(UserError, match="'frame_9.png' matches no image"):
        resolve_view_names(["frame_9.png"], cameras, "data.scene.input_views")
    meta = json.loads((root / "transforms.json").read_text())
    meta["frames"][2]["file_path"] = "images/missing.png"
    (root / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="frame 2: image 'images/missing.png' not found"):
        SCENE_FORMATS["transforms"](str(root), False)


def test_a_capture_trains_few_view_sds_named_by_file(tmp_path):
    """posed-inputs-datamodule on a transforms.json capture: inputs by file name, pose_scale auto (the cameras'
    focus point at data.default_camera_distance from the first input), every pose relative to the first input."""
    root = transforms_scene(tmp_path)
    cfg = {
        "height": H, "width": W, "default_elevation_deg": 20.0, "scene_intrinsics": "calibrated",
        "random_camera": {"height": 8, "width": 8, "batch_size": 1, "eval_height": H, "eval_width": W},
        "scene": {"scene_dir": str(root), "input_views": ["frame_00002.png", "frame_00000.png"],
                  "pose_scale": "auto", "height": H, "width": W, "crop_square": False},
    }
    module = PosedInputsDataModule(cfg)
    module.setup()
    poses = known_poses()
    # the cameras look at (1, 2, 0.5) from 3 units: auto scale 1/3 puts that point at distance 1 from input 2
    assert module.cfg.scene.pose_scale == pytest.approx(1 / 3, rel=1e-4)
    assert module.scene.inputs.indices.tolist() == [2, 0] and module.scene.targets.indices.tolist() == [1, 3, 4]
    canonical = orbit_c2w(torch.tensor([20.0]), torch.tensor([0.0]), torch.tensor([1.0])).double()[0]
    relative = torch.linalg.inv(poses[2]) @ poses[0]
    relative[:3, 3] /= 3
    cond = module.conditioning()
    torch.testing.assert_close(cond["c2w"][1].double(), canonical @ relative, atol=1e-5, rtol=0)
    assert float(cond["fov_deg"][1]) == pytest.approx(math.degrees(2 * math.atan(H / (2 * FOCAL))), abs=1e-4)
    assert len(list(module.test_dataloader())) == 3


@pytest.mark.slow
def test_readme_few_view_command_runs_a_capture_from_the_users_folder(tmp_path):
    """README's "Few posed views" command on a generated transforms.json capture, run from the capture's own folder
    (tiny model and sizes appended): it trains, tests on the other frames and writes metrics.json."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    transforms_scene(tmp_path / "capture")
    cmd = [
        sys.executable, str(root / "launch.py"), "--config", str(root / "configs" / "zeronvs_dtu.yaml"), "--train",
        "data.scene.scene_dir=capture", "data.scene.input_views=[frame_00001.png,frame_00002.png,frame_00003.png]",
        "data.scene.excluded_views=[]", "data.scene.pose_scale=auto",
        # tiny: the random model, 12×16 frames, two steps
        "system.guidance.pretrained_model_name_or_path=random",
        f"system.guidance.pretrained_config={root / 'configs' / 'diffusion_tiny.yaml'}", "trainer.max_steps=2",
        "data.height=[12,12]", "data.width=[16,16]", "data.random_camera.height=[8,8]",
        "data.random_camera.width=[8,8]", "data.random_camera.eval_height=12", "data.random_camera.eval_width=16",
        "data.random_camera.n_val_views=1", "system.renderer.num_samples_per_ray=8",
        "system.renderer.num_samples_per_ray_proposal=8",
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    (metrics,) = list((tmp_path / "outputs").glob("*/*/save/metrics.json"))
    assert [v["target"] for v in json.loads(metrics.read_text())["per_view"]] == [0, 4]


def test_an_input_outside_the_scene_is_one_line(tmp_path):
    root = transforms_scene(tmp_path)
    cfg = {"height": H, "width": W, "scene": {"scene_dir": str(root), "input_views": [0, 7], "height": H, "width": W,
                                              "crop_square": False}}
    with pytest.raises(UserError, match="camera index 7 is out of range"):
        PosedInputsDataModule(cfg)
