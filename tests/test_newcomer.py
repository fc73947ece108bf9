"""A newcomer's first hour: the commands README and the messages suggest work from the user's own folder, the paths
of the shipped configs belong to the repository, the messages say what is wrong, README's oracle numbers are the
docs' newest ones, and the pictures explain themselves."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_YAML = str(ROOT / "configs" / "diffusion_tiny.yaml")


# ------------------------------------------------------------------------------------- whose folder a path is in
def test_paths_in_shipped_configs_belong_to_the_repository_typed_ones_to_the_user(tmp_path, monkeypatch):
    from threestudio.utils.config import load_config

    monkeypatch.chdir(tmp_path)
    smoke = load_config(str(ROOT / "configs" / "smoke.yaml"))
    assert smoke.system.guidance.pretrained_config == TINY_YAML  # written in a shipped config: the repository's
    assert smoke.data.image_path == "skimage:motorcycle_left" and smoke.exp_root_dir == "outputs"  # not files read
    paper = load_config(str(ROOT / "configs" / "zeronvs.yaml"))
    assert paper.system.guidance.pretrained_model_name_or_path == str(ROOT / "zeronvs.ckpt")
    assert paper.system.guidance.pretrained_config == str(ROOT / "zeronvs_config.yaml")
    # typed on the command line: the user's folder; `configs/...` that is not there: the repository's shipped file
    typed = load_config(str(ROOT / "configs" / "smoke.yaml"), cli_args=[
        "system.guidance.pretrained_config=mine.yaml", "data.image_path=photo.png",
        "system.guidance.pretrained_model_name_or_path=oracle:world.yaml"])
    assert typed.system.guidance.pretrained_config == "mine.yaml" and typed.data.image_path == "photo.png"
    assert typed.system.guidance.pretrained_model_name_or_path == "oracle:world.yaml"
    fallback = load_config(str(ROOT / "configs" / "smoke.yaml"),
                           cli_args=["system.guidance.pretrained_config=configs/diffusion_tiny.yaml"])
    assert fallback.system.guidance.pretrained_config == TINY_YAML
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "diffusion_tiny.yaml").write_text("model: {}\n")  # the user's own file wins
    mine = load_config(str(ROOT / "configs" / "smoke.yaml"),
                       cli_args=["system.guidance.pretrained_config=configs/diffusion_tiny.yaml"])
    assert mine.system.guidance.pretrained_config == "configs/diffusion_tiny.yaml"
    # the user's own YAML (a copy of a shipped one): its paths are read from the user's folder
    copy = tmp_path / "my.yaml"
    copy.write_text((ROOT / "configs" / "smoke.yaml").read_text().replace("configs/diffusion_tiny.yaml", "t.yaml"))
    assert load_config(str(copy)).system.guidance.pretrained_config == "t.yaml"


def test_launch_names_a_misspelt_mode_and_finds_a_shipped_config_from_anywhere(tmp_path, monkeypatch, capsys):
    sys.path.insert(0, str(ROOT))
    try:
        import launch
    finally:
        sys.path.pop(0)
    assert launch.main(["--config", str(ROOT / "configs" / "smoke.yaml"), "--trian"]) == 2
    assert capsys.readouterr().err == "error: unknown option(s) --trian (did you mean --train?); see --help\n"
    assert launch.main(["--config", str(ROOT / "configs" / "smoke.yaml")]) == 2
    assert "one mode is required: --train, --validate, --test or --export" in capsys.readouterr().err
    # README's `--config configs/smoke.yaml` typed in another folder: the repository's file (it was read: the
    # resume= check that follows loading it speaks)
    monkeypatch.chdir(tmp_path)
    assert launch.main(["--config", "configs/smoke.yaml", "--train", "resume=none.ckpt"]) == 2
    assert capsys.readouterr().err == "error: resume checkpoint not found: none.ckpt\n"
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------- the numbers
def _numbers(text: str) -> list:
    return [float(x) for x in text]


def test_readme_oracle_numbers_are_the_newest_in_performance_md():
    """README quotes the oracle once; its numbers are docs/PERFORMANCE.md's newest rows (the issue-17 re-run)."""
    readme = (ROOT / "README.md").read_text()
    quoted = re.findall(r"held-out\s+orbit\s+\*\*([\d.]+)\s+dB\*\*,\s+SSIM\s+([\d.]+),\s+input\s+view\s+([\d.]+)\s+dB",
                        readme)
    assert len(quoted) == 1, "README quotes the 400-step oracle numbers in one place"
    at_200 = re.findall(r"at\s+200\s+steps\s+([\d.]+)\s+dB", readme)
    assert len(at_200) == 1
    perf = (ROOT / "docs" / "PERFORMANCE.md").read_text()
    newest = perf[perf.index("**Before/after, re-run together"):]  # the newest oracle section
    row = re.search(r"\| tabletop, 400 steps \| [^|]+ \| ([\d.]+) dB / ([\d.]+) \(([\d.]+)\) \|", newest)
    table = re.search(r"\| 16 \+ 16 \| 65,536 \| [^|]+ \| ([\d.]+) dB / [\d.]+ \|", newest)  # the CPU-sized NeRF
    assert row and table
    assert _numbers(quoted[0]) == _numbers(row.groups())
    assert float(at_200[0]) == float(table.group(1))


# ------------------------------------------------------------------------------------------------ the pictures
def test_caption_strip_names_each_panel_over_it():
    from threestudio.utils.image import caption_strip

    strip = caption_strip(300, ("rgb", "depth", "opacity"))
    assert strip.shape == (24, 300, 3)
    ink = (strip.min(axis=2) < 128).any(axis=0)  # columns with text
    assert all(ink[k * 100:(k + 1) * 100].any() for k in range(3))  # one label over each third
    assert not ink[:5].any() and not ink[95:105].any()  # centred: the panels' edges stay clear


def test_camera_plot_explains_its_marks(dtu_scan24, tmp_path, monkeypatch):
    """The legend names the look-at star, the red edge and the unit sphere; each label sits in its frustum's colour."""
    import matplotlib.figure

    sys.path.insert(0, str(ROOT))
    try:
        import read_camera
    finally:
        sys.path.pop(0)
    from threestudio.data.idr_cameras import load_idr_cameras

    seen = {}
    original = matplotlib.figure.Figure.savefig

    def keep(fig, *args, **kwargs):
        ax = fig.axes[0]
        seen["legend"] = " | ".join(t.get_text() for t in ax.get_legend().get_texts())
        seen["boxes"] = {t.get_text(): t.get_bbox_patch().get_facecolor() for t in ax.texts if t.get_bbox_patch()}
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    cameras = load_idr_cameras(str(dtu_scan24), indices=[0, 1, 2])
    read_camera.plot_cameras(cameras, str(tmp_path / "cameras.png"))
    assert "look-at point" in seen["legend"] and "unit sphere" in seen["legend"] and "top" in seen["legend"]
    assert set(seen["boxes"]) == {"0", "1", "2"}  # every camera labelled (3 < 12), each in a box
    assert len({tuple(np.round(c, 3)) for c in seen["boxes"].values()}) == 3  # ... of its own colour
    assert (tmp_path / "cameras.png").stat().st_size > 10_000


# ------------------------------------------------------------------ the suggested commands, from the user's folder
def _run(cwd: Path, *cmd: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("THREESTUDIO_QUIET", None)  # as a user runs them
    return subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _python_line(text: str) -> list:
    """The command line a message suggests (`python …`), with this interpreter."""
    line = next(ln.strip() for ln in text.splitlines() if ln.strip().startswith("python "))
    return [sys.executable, *shlex.split(line)[1:]]


@pytest.mark.slow
def test_suggested_commands_run_from_the_users_folder(tmp_path, dtu_scan24):
    """From a folder outside the repository: launch_inference.sh's fallback, the preview recipe with the tiny model,
    the oracle, read_camera and the eval dry runs (tiny sizes through overrides)."""
    home = tmp_path / "photos"
    home.mkdir()
    py = sys.executable
    # no weights: one message whose advice is the download, and whose fallback command runs from here
    res = _run(home, "bash", str(ROOT / "launch_inference.sh"))
    assert res.returncode == 2 and "zeronvs.ckpt" in res.stderr
    fallback = _python_line(res.stderr)
    assert fallback[-3:] == ["--config", str(ROOT / "configs" / "smoke.yaml"), "--train"]
    res = _run(home, *fallback, "--quiet", "trainer.max_steps=2", "trainer.val_check_interval=2",
               "data.random_camera.n_test_views=2", "system.export_after_train=false", "use_timestamp=false")
    assert res.returncode == 0, res.stderr[-3000:]
    trial = home / "outputs" / "smoke" / "skimage_motorcycle_left"  # tag: the image
    assert res.stdout == f"train done: {trial}\n" and (trial / "ckpts" / "last.ckpt").is_file()  # --quiet: one line
    # the preview recipe on the CPU with the tiny random model
    res = _run(home, py, str(ROOT / "scripts" / "preview_settings.py"), "skimage:motorcycle_left", "--scales", "0.7",
               "--azimuths", "90", "--steps", "2", "--ckpt", "random", "--model-config", "configs/diffusion_tiny.yaml",
               "--out", "preview", "--quiet")
    assert res.returncode == 0 and (home / "preview" / "preview.png").is_file(), res.stderr[-3000:]
    # the oracle check: it says where its picture is
    res = _run(home, py, str(ROOT / "scripts" / "oracle_sds.py"), "--scene", "configs/oracle_scenes/tabletop.yaml",
               "--steps", "2", "--height", "16", "--orbit-views", "2", "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    picture = home / "outputs" / "oracle" / "tabletop" / "heldout.png"
    assert f"held-out orbit picture: {picture}" in res.stderr and picture.is_file()
    assert json.loads(res.stdout)["heldout_png"] == str(picture)
    # read_camera and the eval dry runs, with the data and the (here empty) weight files in the user's folder
    (home / "DTU").mkdir()
    (home / "DTU" / "dtu_scan24").symlink_to(dtu_scan24)
    res = _run(home, py, str(ROOT / "read_camera.py"), "DTU/dtu_scan24", "--plot", "cameras.png", "--index", "25")
    assert res.returncode == 0 and (home / "cameras.png").is_file(), res.stderr
    eval_dtu = [py, str(ROOT / "scripts" / "eval_dtu.py"), "--root", "DTU", "--scans", "24", "--mode", "sds",
                "--out", "eval_dtu", "--ckpt", "zeronvs.ckpt", "--model-config", "zeronvs_config.yaml", "--dry-run"]
    res = _run(home, *eval_dtu)  # a dry run without the weights: the commands, and one warning line
    assert res.returncode == 0 and "warning: the runs would stop at once" in res.stderr, res.stderr
    assert "download zeronvs.ckpt" in res.stderr and "launch.py" in res.stdout
    res = _run(home, *[a for a in eval_dtu if a != "--dry-run"])  # the real run stops before any scan
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "download zeronvs.ckpt" in res.stderr, res.stderr
    for name in ("zeronvs.ckpt", "zeronvs_config.yaml"):
        (home / name).write_bytes(b"")
    res = _run(home, *eval_dtu)
    assert res.returncode == 0 and str(dtu_scan24.name) in res.stdout, res.stderr
    assert "pose_scale = 1 / (2.02 · 1.0) = 0.4950" in res.stderr  # scan 24 is not in ZeroNVS's table
    m360 = [py, str(ROOT / "scripts" / "eval_mipnerf360.py"), "--out", "eval_m360", "--ckpt", "zeronvs.ckpt",
            "--model-config", "zeronvs_config.yaml", "--dry-run"]
    res = _run(home, *m360, "--root", "/nope")
    assert res.returncode == 2 and "--root /nope is not a folder" in res.stderr
    (home / "MIPNERF360" / "room").mkdir(parents=True)
    (home / "MIPNERF360" / "room" / "poses_bounds.npy").write_bytes(b"")
    res = _run(home, *m360, "--root", "MIPNERF360", "--scenes", "room")
    assert res.returncode == 0 and "data.scene.scene_dir=" + str(home / "MIPNERF360" / "room") in res.stdout
    assert not (home / "eval_dtu").exists() and not (home / "eval_m360").exists()  # dry runs write nothing
