"""End to end on the CPU: the smoke config (tiny random diffusion model) through launch.py.

One short smoke trial is shared by the tests that need it (train → test video → export → resume).
"""

from __future__ import annotations

import csv
import glob
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMOKE_STEPS, launch, smoke_args

ROOT = Path(__file__).resolve().parents[1]
# every test here launches launch.py (or launch_inference.sh) in a subprocess
pytestmark = pytest.mark.slow


def test_train_writes_checkpoint_config_logs_and_test_video(smoke_trial: Path):
    ckpt = smoke_trial / "ckpts" / "last.ckpt"
    assert ckpt.is_file()
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["global_step"] == SMOKE_STEPS
    assert not any(k.startswith("_guidance") or "unet" in k for k in state["state_dict"]), "guidance weights leaked"
    assert (smoke_trial / "configs" / "parsed.yaml").is_file()
    video = smoke_trial / "save" / f"it{SMOKE_STEPS}-test.mp4"
    assert video.is_file() and video.stat().st_size > 1000
    frames = sorted((smoke_trial / "save" / f"it{SMOKE_STEPS}-test").glob("*.png"))
    assert [f.name for f in frames] == [f"{k:04d}.png" for k in range(48)]
    from threestudio.utils.image import load_image

    frame = load_image(str(frames[0]))
    assert frame.shape[:2] == (32, 3 * 32)  # rgb | depth | opacity
    import imageio.v2 as imageio

    with imageio.get_reader(str(video)) as reader:  # a few seconds, enlarged 8x (nearest neighbour) for viewing
        meta = reader.get_meta_data()
        first = reader.get_data(0)
    from threestudio.utils.image import CAPTION_HEIGHT

    # the panels' names in a strip above the frames (rgb | depth | opacity)
    assert meta["fps"] == 16 and meta["duration"] >= 2.9 and meta["size"] == (8 * 96, CAPTION_HEIGHT + 8 * 32)
    block = first[CAPTION_HEIGHT:CAPTION_HEIGHT + 8, :8].astype(float)
    assert np.abs(block - block[0, 0]).max() < 12  # one rendered pixel = one 8x8 block
    assert list((smoke_trial / "save").glob("it6-val/*.png")), "validation renders missing"
    rows = list(csv.DictReader(open(smoke_trial / "csv_logs" / "metrics.csv")))
    assert any(r.get("train/loss_sds") for r in rows) and any(r.get("train/loss_rgb") for r in rows)


def test_a_launched_run_shows_progress_and_no_noise(smoke_trial: Path):
    output = (smoke_trial.parent.parent / "launch_output.txt").read_text()
    # Lightning's tqdm bar: the training epoch counts to max_steps, with its rate and ETA
    bar = rf"Epoch 0: 100%\S*\s*\S*\| {SMOKE_STEPS}/{SMOKE_STEPS} \[[0-9:]+<[0-9:]+, +[0-9.]+(it/s|s/it)"
    assert re.search(bar, output), output[-3000:]
    assert "Testing DataLoader 0: 100%" in output
    for noise in ("LeafSpec", "ckpt_path", "predict returned None"):
        assert noise not in output, noise
    assert sum(ln.count("model.obj") for ln in output.splitlines()) <= 1  # the mesh path once


def test_export_mesh(smoke_trial: Path):
    res = launch(
        "--config", str(smoke_trial / "configs" / "parsed.yaml"), "--export", f"resume={smoke_trial}/ckpts/last.ckpt"
    )
    assert res.returncode == 0, res.stderr[-3000:]
    import trimesh

    folder = smoke_trial / "save" / f"it{SMOKE_STEPS}-export"
    mesh = trimesh.load(folder / "model.obj", force="mesh")
    assert len(mesh.faces) > 100
    ply = trimesh.load(folder / "model.ply", force="mesh")
    assert len(ply.faces) == len(mesh.faces)
    assert ply.visual.vertex_colors.shape[0] == len(ply.vertices)


def test_resume_continues_from_saved_step(smoke_trial: Path):
    res = launch(
        "--config",
        str(smoke_trial / "configs" / "parsed.yaml"),
        "--train",
        f"resume={smoke_trial}/ckpts/last.ckpt",
        f"trainer.max_steps={SMOKE_STEPS + 3}",
        "data.random_camera.n_test_views=2",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    state = torch.load(smoke_trial / "ckpts" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == SMOKE_STEPS + 3
    assert (smoke_trial / "save" / f"it{SMOKE_STEPS + 3}-test.mp4").is_file()


def test_nonfinite_loss_stops_after_limit_and_keeps_last_checkpoint(tmp_path: Path):
    res = launch(
        "--train",
        *smoke_args(
            tmp_path,
            "trainer.max_steps=30",
            "trainer.val_check_interval=100",
            "checkpoint.every_n_train_steps=1",
            "system.loss.lambda_rgb=[3,1500.0,1e300,4]",  # inf loss from step 4 on (1e300 overflows float32)
            "system.max_nonfinite_steps=3",
        ),
    )
    assert res.returncode == 3, res.stderr[-3000:]
    assert "NaN/inf for 3 steps in a row" in res.stderr
    assert "Traceback" not in res.stderr
    (trial,) = glob.glob(str(tmp_path / "smoke" / "*"))
    state = torch.load(Path(trial) / "ckpts" / "last.ckpt", map_location="cpu", weights_only=True)
    # NaN at steps 4, 5, 6 (skipped steps still advance Lightning's step counter), the stop comes at the third.
    # The saves due at steps 5 and 6 fell inside the streak and were not written; the one of step 4 (the weights
    # that the first NaN step used) was not confirmed by a finite step and was replaced by the one of step 3.
    assert state["global_step"] == 3
    assert "holds step 3" in res.stderr
    assert sorted(p.name for p in (Path(trial) / "ckpts").iterdir()) == ["last.ckpt"]
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


@pytest.mark.parametrize(
    "override, expected",
    [
        ("system.loss.lambda_sdss=1", "system.loss.lambda_sdss"),
        ("data.image_path=/nonexistent/image.png", "/nonexistent/image.png"),
        ("system.guidance.pretrained_model_name_or_path=/nonexistent/zeronvs.ckpt", "/nonexistent/zeronvs.ckpt"),
        ("system.guidance.precomputed_scale=null", "precomputed_scale"),
        ("resume=/nonexistent/last.ckpt", "/nonexistent/last.ckpt"),
        ("trainer.max_stepz=3", "trainer.max_stepz"),
        ("seed=abc", "seed"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path: Path, override: str, expected: str):
    res = launch("--train", *smoke_args(tmp_path, override))
    assert res.returncode == 2, res.stderr[-3000:]
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0], res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "smoke").exists(), "a failed start must not create the trial folder"


def test_existing_trial_folder_is_not_overwritten(smoke_trial: Path):
    res = launch("--train", *smoke_args(smoke_trial.parent.parent, "trainer.max_steps=1"))
    assert res.returncode == 2
    assert "already exists" in res.stderr


def test_cli_help_and_mode_flags():
    res = launch("--help")
    assert res.returncode == 0 and "--export" in res.stdout
    res = launch("--config", "configs/smoke.yaml")  # no mode
    assert res.returncode == 2
    res = launch("--config", "configs/smoke.yaml", "--train", "--test")
    assert res.returncode == 2


def test_system_weights_start_from_a_checkpoint_without_optimizer_state(smoke_trial: Path):
    import threestudio
    from threestudio.utils.config import load_config

    ckpt = smoke_trial / "ckpts" / "last.ckpt"
    cfg = load_config(str(smoke_trial / "configs" / "parsed.yaml"), cli_args=[f"system.weights={ckpt}"])
    system = threestudio.find(cfg.system_type)(cfg.system)
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    own = system.state_dict()
    assert set(own) == set(saved)
    assert all(torch.equal(own[k], saved[k]) for k in saved)
    fresh = threestudio.find(cfg.system_type)(
        load_config(str(smoke_trial / "configs" / "parsed.yaml"), cli_args=["system.weights=null"]).system
    )
    assert not all(torch.equal(fresh.state_dict()[k], saved[k]) for k in saved), "weights were not loaded"


def test_launch_inference_without_weights_stops_with_exit_2(tmp_path: Path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    res = subprocess.run(
        [
            "bash",
            str(ROOT / "launch_inference.sh"),
            "--ckpt",
            str(tmp_path / "zeronvs.ckpt"),
            "--model-config",
            str(tmp_path / "zeronvs_config.yaml"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2
    assert "zeronvs.ckpt" in res.stderr and "configs/smoke.yaml" in res.stderr
    assert list(tmp_path.iterdir()) == []
    from zeronvs_diffusion.errors import HOW_TO_GET_WEIGHTS, WEIGHTS_SOURCE

    assert WEIGHTS_SOURCE in res.stderr and WEIGHTS_SOURCE in HOW_TO_GET_WEIGHTS  # both messages: the same place


def test_launch_inference_reads_paths_from_the_callers_folder(tmp_path: Path):
    """IMAGE, --ckpt, --model-config and --config relative to where the user stands, not to the repository."""
    import shutil

    from threestudio.utils.image import resolve_image_path

    shutil.copy(resolve_image_path("skimage:motorcycle_left"), tmp_path / "photo.png")
    (tmp_path / "cfg").mkdir()
    shutil.copy(ROOT / "configs" / "smoke.yaml", tmp_path / "cfg" / "pipeline.yaml")
    shutil.copy(ROOT / "configs" / "diffusion_tiny.yaml", tmp_path / "cfg" / "tiny.yaml")
    script = ["bash", str(ROOT / "launch_inference.sh")]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    res = subprocess.run([*script, "photo.png", "--ckpt", "weights/zeronvs.ckpt"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "checkpoint weights/zeronvs.ckpt" in res.stderr, res.stderr  # photo.png found
    res = subprocess.run(
        [*script, "photo.png", "--ckpt", "random", "--model-config", "cfg/tiny.yaml", "--config", "cfg/pipeline.yaml",
         "--fov", "40", "trainer.max_steps=2", "trainer.val_check_interval=2", "data.random_camera.n_test_views=2",
         "use_timestamp=false", "tag=here", "--quiet"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "it/s" not in res.stderr and "s/it" not in res.stderr and "%|" not in res.stderr  # --quiet: no bar
    parsed = (tmp_path / "outputs" / "smoke" / "here" / "configs" / "parsed.yaml").read_text()
    assert "image_path: photo.png" in parsed and "default_fovy_deg: 40" in parsed
    help_text = subprocess.run([*script, "--help"], capture_output=True, text=True, timeout=60).stdout
    assert help_text.startswith("ZeroNVS one-image inference") and "set -euo" not in help_text
    assert "--model-config" in help_text and "folder you run" in help_text


def _report_sources(page: str) -> list:
    import re

    return re.findall(r'<(?:img|video) src="([^"]+)"', page)


def test_train_writes_a_self_contained_report(smoke_trial: Path):
    save = smoke_trial / "save"
    page = (save / "report.html").read_text()
    assert "vertical fov (deg)</th><td>28.21<" in page  # the bundled example's calibrated fov
    assert "<h2>Losses</h2>" in page and "http://" not in page and "https://" not in page
    sources = _report_sources(page)
    relative = [s for s in sources if not s.startswith("data:image/png;base64,")]
    # later tests may resume or re-test the shared trial: the page shows its newest test video
    newest_video = max(save.glob("it*-test.mp4"), key=lambda p: int(p.name[2:].split("-")[0])).name
    assert {"it6-val/0000.png", f"it{SMOKE_STEPS}-val/0000.png", newest_video} <= set(relative)
    assert all((save / s).is_file() for s in relative)
    assert len(sources) - len(relative) == 2  # the input image and the loss plot, embedded
    # --train ended with the export; the page shows the newest mesh (viewer and mesh embedded, files linked)
    assert (save / f"it{SMOKE_STEPS}-export" / "model.obj").is_file()
    newest_export = max(save.glob("it*-export"), key=lambda p: int(p.name[2:].split("-")[0])).name
    assert '<canvas id=mesh-canvas' in page and '<script type="application/json" id="mesh-data">' in page
    for name in ("model.obj", "model.ply"):
        assert f'<a href="{newest_export}/{name}">' in page
    assert "<script src=" not in page  # nothing loaded from elsewhere
    from PIL import Image

    thumb = re.search(r'<img src="data:image/png;base64,([^"]+)" alt="input image', page).group(1)
    import base64
    import io

    assert Image.open(io.BytesIO(base64.b64decode(thumb))).size == (320, 320)  # the square the run used
    import json

    stats = json.loads((save / "run_stats.json").read_text())
    assert stats["train"]["wall_s"] > 0 and stats["train"]["peak_rss_mb"] > 100 and stats["train"]["device"]
    # scripts/report.py rebuilds the same page from the folder
    (save / "report.html").unlink()
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "report.py"), str(smoke_trial)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert _report_sources((save / "report.html").read_text())[2:] == sources[2:]


@pytest.mark.skipif(not any(os.path.exists(p) for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser")),
                    reason="Chromium is absent (apt-get install -y chromium) for the headless report check")
def test_report_renders_in_headless_chromium(smoke_trial: Path, tmp_path: Path):
    check = ["bash", str(ROOT / "scripts" / "check_report.sh")]
    res = subprocess.run([*check, str(smoke_trial / "save" / "report.html"), str(tmp_path / "shot.png")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "the mesh view drew" in res.stdout
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(smoke_trial, broken)
    (broken / "save" / "it6-val" / "0000.png").unlink()
    res = subprocess.run([*check, str(broken / "save" / "report.html"), str(tmp_path / "b.png")], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 1 and "1 image(s) failed to load" in res.stdout
    page = (smoke_trial / "save" / "report.html").read_text()
    no_mesh = re.sub(r'(<script type="application/json" id="mesh-data">)[^<]*', r"\1{}", page)
    (broken / "save" / "report.html").write_text(no_mesh)
    shutil.copy(smoke_trial / "save" / "it6-val" / "0000.png", broken / "save" / "it6-val" / "0000.png")
    res = subprocess.run([*check, str(broken / "save" / "report.html"), str(tmp_path / "c.png")], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 1 and "the mesh view did not draw" in res.stdout, res.stdout
