"""Diffusion-only novel view synthesis (nvs-system) end to end through launch.py with the tiny ZeroNVS fixture."""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
# every test here launches launch.py in a subprocess
pytestmark = pytest.mark.slow
TARGETS = [31, 13, 0]


def launch(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("THREESTUDIO_TRIAL_TIMESTAMP", None)
    return subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeout,
    )


def nvs_args(root: Path, model_dir: Path, *extra: str, config: str = "zeronvs_nvs.yaml") -> list:
    return [
        "--config", str(ROOT / "configs" / config), "--test",
        f"exp_root_dir={root}", "use_timestamp=false",
        f"system.diffusion_model.pretrained_model_name_or_path={model_dir / 'model.ckpt'}",
        f"system.diffusion_model.pretrained_config={model_dir / 'config.yaml'}",
        "data.height=32", "data.width=32", "system.sampling.steps=2", "system.sampling.targets_per_batch=2",
        *extra,
    ]


def sampled_targets(output: str) -> list:
    """Target indices each process reports as sampled (log lines 'sampled target view(s) [..]')."""
    found = []
    for m in re.finditer(r"sampled target view\(s\) \[([0-9, ]*)\]", output):
        found.extend(int(v) for v in m.group(1).split(",") if v.strip())
    return found


def load_json(path: Path):
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def scene_run(tmp_path_factory, dtu_scan24, zeronvs_tiny_dir):
    root = tmp_path_factory.mktemp("nvs_scene")
    res = launch(*nvs_args(root, zeronvs_tiny_dir, f"data.scene_dir={dtu_scan24}", f"data.target_views={TARGETS}"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return root / "zeronvs_nvs" / "nvs" / "save", res.stdout + res.stderr


def test_scene_writes_every_target_once_with_metrics(scene_run, dtu_scan24):
    save, output = scene_run
    files = sorted(p.name for p in (save / "nvs").iterdir())
    assert files == [f"target_{i:03d}.png" for i in sorted(TARGETS)]
    assert sorted(sampled_targets(output)) == sorted(TARGETS)
    from threestudio.utils.image import load_image

    assert load_image(str(save / "nvs" / "target_031.png")).shape[:2] == (32, 32)
    metrics = load_json(save / "metrics.json")
    assert set(metrics) == {"psnr", "ssim", "lpips", "per_view"}
    assert [v["target"] for v in metrics["per_view"]] == sorted(TARGETS)
    # the metrics are those of the written images against the datamodule's ground truth (PNG rounding aside)
    import threestudio
    from threestudio.utils.config import load_config
    from threestudio.utils.metrics import compute_metrics

    cfg = load_config(str(ROOT / "configs" / "zeronvs_nvs.yaml"),
                      cli_args=[f"data.scene_dir={dtu_scan24}", f"data.target_views={TARGETS}", "data.height=32",
                                "data.width=32"])  # fmt: skip
    datamodule = threestudio.find(cfg.data_type)(cfg.data)
    datamodule.setup("test")
    for view in metrics["per_view"]:
        assert set(view) == {"target", "psnr", "ssim", "lpips"}
        k = TARGETS.index(view["target"])
        image = load_image(str(save / "nvs" / f"target_{view['target']:03d}.png"))[..., :3]
        expected = compute_metrics(image, datamodule.targets.rgb[k])
        assert view["psnr"] == pytest.approx(expected["psnr"], abs=0.2)
        assert view["ssim"] == pytest.approx(expected["ssim"], abs=0.02)
        assert isinstance(view["lpips"], float)  # conftest's random LPIPS weights
        assert view["lpips"] == pytest.approx(expected["lpips"], abs=0.05)
    assert metrics["psnr"] == pytest.approx(np.mean([v["psnr"] for v in metrics["per_view"]]))
    sheet = load_image(str(save / "contact_sheet.png"))
    assert sheet.shape[:2] == (32 * len(TARGETS), 3 * 32)  # source | generated | ground truth
    assert_sheet_shows_the_written_images(save, sorted(TARGETS))
    assert not (save / ".partial").exists()
    assert not glob.glob(str(save / "**" / "*.tmp*"), recursive=True), "temporary files left behind"


def assert_sheet_shows_the_written_images(save: Path, targets: list, size: int = 32) -> None:
    """The contact sheet's generated column (built from memory, or read back from other processes' files) holds
    exactly the written nvs/target_*.png images, one row per target in target order."""
    import torch

    from threestudio.utils.image import load_image

    sheet = load_image(str(save / "contact_sheet.png"))[..., :3]
    for row, target in enumerate(targets):
        written = load_image(str(save / "nvs" / f"target_{target:03d}.png"))[..., :3]
        assert torch.equal(sheet[row * size:(row + 1) * size, size:2 * size], written), target


def test_scene_selection_matches_view_selection(scene_run, dtu_scan24):
    import torch

    from threestudio.data.idr_cameras import load_idr_cameras
    from threestudio.data.view_selection import select_nearest

    save, _ = scene_run
    selection = load_json(save / "selection.json")
    assert [s["target"] for s in selection] == TARGETS
    assert all(s["source"] == 25 for s in selection)  # the only input view
    cams = load_idr_cameras(str(dtu_scan24), normalize=True)
    c2w = torch.from_numpy(np.stack([c.c2w_opengl for c in cams]))
    _, angles, distances = select_nearest(c2w[[25]], c2w[TARGETS], "angle", 10.0)
    for entry, angle, dist in zip(selection, angles.tolist(), distances.tolist()):
        assert entry["angle_deg"] == pytest.approx(angle, abs=1e-3)
        assert entry["center_distance"] == pytest.approx(dist, abs=1e-4)
    assert selection[0]["angle_deg"] == pytest.approx(11.62, abs=0.01)  # 25 → 31 (../shared/data/dtu/README.md)


def test_no_scene_orbit(tmp_path, zeronvs_tiny_dir):
    res = launch(
        *nvs_args(
            tmp_path, zeronvs_tiny_dir, "data.image_path=skimage:motorcycle_left", "data.orbit.n_views=3",
            "data.orbit.elevation_deg=20", "data.orbit.distance=1.0", "tag=orbit", config="zeronvs_nvs_image.yaml",
        )
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    save = tmp_path / "zeronvs_nvs" / "orbit" / "save"
    assert sorted(p.name for p in (save / "nvs").iterdir()) == [f"target_{i:03d}.png" for i in range(3)]
    assert not (save / "metrics.json").exists()  # no ground truth
    selection = load_json(save / "selection.json")
    assert [s["target"] for s in selection] == [0, 1, 2] and all(s["source"] == 0 for s in selection)
    # the orbit starts at the input camera's azimuth: the first target is the input pose itself
    assert selection[0]["angle_deg"] == pytest.approx(0.0, abs=1e-3)
    assert selection[1]["angle_deg"] > 60.0
    from threestudio.utils.image import load_image

    assert load_image(str(save / "contact_sheet.png")).shape[:2] == (3 * 32, 2 * 32)  # source | generated


def test_two_process_split_writes_each_target_once(tmp_path, dtu_scan24, zeronvs_tiny_dir):
    targets = [31, 13, 0, 48, 24]
    res = launch(
        *nvs_args(
            tmp_path, zeronvs_tiny_dir, f"data.scene_dir={dtu_scan24}", f"data.target_views={targets}",
            "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp",
        ),
        timeout=400,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    output = res.stdout + res.stderr
    assert "MEMBER: 2/2" in output, "did not run two processes"
    done = sampled_targets(output)
    assert sorted(done) == sorted(targets), f"targets sampled {done}: each must be sampled exactly once"
    save = tmp_path / "zeronvs_nvs" / "nvs" / "save"
    assert sorted(p.name for p in (save / "nvs").iterdir()) == [f"target_{i:03d}.png" for i in sorted(targets)]
    metrics = load_json(save / "metrics.json")
    assert [v["target"] for v in metrics["per_view"]] == sorted(targets)
    assert [s["target"] for s in load_json(save / "selection.json")] == targets
    assert_sheet_shows_the_written_images(save, sorted(targets))  # rank 0 read the other rank's images back
    assert not (save / ".partial").exists()


def test_bad_input_fails_before_writing(tmp_path, dtu_scan24, zeronvs_tiny_dir):
    res = launch(
        *nvs_args(tmp_path, zeronvs_tiny_dir, f"data.scene_dir={dtu_scan24}", "data.target_views=[31]"),
        "system.diffusion_model.pretrained_model_name_or_path=" + str(tmp_path / "missing.ckpt"),
    )
    assert res.returncode == 2, res.stderr[-2000:]
    assert "missing.ckpt" in res.stderr
    res = launch(
        *nvs_args(tmp_path, zeronvs_tiny_dir, f"data.scene_dir={dtu_scan24}", "data.target_views=[31]"),
        "system.diffusion_model.precomputed_scale=null",
    )
    assert res.returncode == 2 and "precomputed_scale" in res.stderr
    assert not (tmp_path / "zeronvs_nvs").exists()


def test_no_scene_target_poses_file(tmp_path, zeronvs_tiny_dir):
    """Target poses given relative to the input camera: the identity is the input view itself."""
    import torch

    from threestudio.utils.camera import orbit_c2w

    rel = torch.eye(4).repeat(2, 1, 1)
    turned = orbit_c2w(torch.tensor([0.0]), torch.tensor([30.0]), torch.tensor([1.0]))[0]
    base = orbit_c2w(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([1.0]))[0]
    rel[1] = torch.linalg.inv(base) @ turned  # 30° around the object, in the input camera's frame
    poses = tmp_path / "poses.npy"
    np.save(poses, rel.numpy())
    res = launch(*nvs_args(tmp_path, zeronvs_tiny_dir, "data.image_path=skimage:motorcycle_left",
                           f"data.target_c2w_path={poses}", "tag=poses", config="zeronvs_nvs_image.yaml"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    save = tmp_path / "zeronvs_nvs" / "poses" / "save"
    assert sorted(p.name for p in (save / "nvs").iterdir()) == ["target_000.png", "target_001.png"]
    angles = [s["angle_deg"] for s in load_json(save / "selection.json")]
    assert angles[0] == pytest.approx(0.0, abs=1e-3) and angles[1] == pytest.approx(30.0, abs=0.05)


def test_non_square_size_is_refused(tmp_path, dtu_scan24, zeronvs_tiny_dir):
    res = launch(*nvs_args(tmp_path, zeronvs_tiny_dir, f"data.scene_dir={dtu_scan24}", "data.target_views=[31]",
                           "data.width=40", "data.crop_square=false"))
    assert res.returncode == 2 and "data.height" in res.stderr
    assert not (tmp_path / "zeronvs_nvs").exists()
