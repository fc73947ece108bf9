"""scripts/eval_mipnerf360.py: ZeroNVS's Mip-NeRF 360 protocol — its config, command lines, tables, a tiny run."""

from __future__ import annotations

import csv
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mipnerf360_scene import write_scene
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "eval_mipnerf360.py"
sys.path.insert(0, str(ROOT / "scripts"))
try:
    import eval_mipnerf360
finally:
    sys.path.pop(0)

# a tiny zeronvs-system on the protocol: 32² frames (LPIPS needs ≥ 31 px), a small hash grid, few samples
TINY = [
    "data.height=[16,32]", "data.width=[16,32]", "data.resolution_milestones=[1]",
    "data.random_camera.height=[8,16]", "data.random_camera.width=[8,16]",
    "data.random_camera.resolution_milestones=[1]", "data.random_camera.n_val_views=1",
    "data.random_camera.eval_height=32", "data.random_camera.eval_width=32", "data.scene.resolution=32",
    "system.geometry.pos_encoding_config.n_levels=4", "system.geometry.pos_encoding_config.log2_hashmap_size=12",
    "system.renderer.num_samples_per_ray=8", "system.renderer.num_samples_per_ray_proposal=8",
]


def overrides(cmd):
    return dict(arg.split("=", 1) for arg in cmd if "=" in arg and not arg.startswith("-"))


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


TINY_MODEL = ["--ckpt", "random", "--model-config", str(ROOT / "configs" / "diffusion_tiny.yaml")]


def fake_m360(root: Path, scenes=eval_mipnerf360.SCENES) -> Path:
    """Scene folders that pass the up-front checks (a SCENE/poses_bounds.npy each; the runs would fail on them)."""
    for scene in scenes:
        (root / scene).mkdir(parents=True, exist_ok=True)
        (root / scene / "poses_bounds.npy").write_bytes(b"")
    return root


def test_dry_run_prints_the_seven_protocol_command_lines(capsys, tmp_path):
    root = fake_m360(tmp_path / "M360")
    weights = [tmp_path / "zeronvs.ckpt", tmp_path / "zeronvs_config.yaml"]
    for path in weights:
        path.write_bytes(b"")  # exists: the dry run checks for the files only
    assert eval_mipnerf360.main(["--root", str(root), "--out", "out", "--dry-run", "--ckpt", str(weights[0]),
                                 "--model-config", str(weights[1])]) == 0
    cmds = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
    assert len(cmds) == 7
    table = {  # launch_eval_mipnerf360.sh: scene -> (view_idx, precomputed_scale, view_scale)
        "bicycle": (2, 0.9, 1.0), "bonsai": (0, 0.9, 1.0), "counter": (20, 0.9, 0.9), "garden": (0, 0.9, 1.0),
        "kitchen": (0, 0.9, 0.9), "room": (0, 2.0, 0.9), "stump": (11, 0.9, 1.1),
    }
    for cmd, (scene, (view_idx, precomputed, view_scale)) in zip(cmds, table.items()):
        o = overrides(cmd)
        assert cmd[cmd.index("--config") + 1].endswith("configs/zeronvs_mipnerf360.yaml") and "--train" in cmd
        assert o["tag"] == scene and o["data.scene.scene_dir"] == str(root / scene)
        assert int(o["data.scene.view_idx"]) == view_idx
        assert float(o["system.guidance.precomputed_scale"]) == precomputed
        assert float(o["data.scene.manual_gt_to_pred_scale"]) == view_scale
        assert float(o["system.guidance.guidance_scale"]) == 9.5 and float(o["system.loss.lambda_opaque"]) == 0.0
        assert o["system.guidance.use_anisotropic_schedule"] == "true"
        assert int(o["system.guidance.anisotropic_offset"]) == 1000
        assert o["system.background.color"] == "[0.5,0.5,0.5]" and o["system.background.random_aug"] == "true"
        assert float(o["system.background.random_aug_prob"]) == 1.0
        assert float(o["system.renderer.near_plane"]) == 0.6 and float(o["system.renderer.far_plane"]) == 1000.0
        assert o["system.guidance.pretrained_model_name_or_path"] == str(weights[0])


def test_lpips_weights_go_to_every_run(capsys, tmp_path):
    from threestudio.utils.lpips_alex import write_random_weights

    write_random_weights(str(tmp_path), seed=0)  # a named folder must hold usable weights
    root = ["--root", str(fake_m360(tmp_path / "M360")), "--out", "out", "--dry-run", *TINY_MODEL]
    assert eval_mipnerf360.main([*root, "--scenes", "room", "stump", "--lpips-weights", str(tmp_path)]) == 0
    cmds = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
    assert len(cmds) == 2 and all(cmd[cmd.index("--lpips-weights") + 1] == str(tmp_path) for cmd in cmds)
    with pytest.raises(SystemExit, match="not a folder") as stopped:
        eval_mipnerf360.main([*root, "--lpips-weights", str(tmp_path / "x")])
    assert stopped.value.code == 2


@pytest.mark.parametrize("dry", [True, False])
def test_root_scenes_and_model_are_checked_first_in_one_line(tmp_path, capsys, dry):
    """Bad input: one line, exit 2, nothing written or run — with --dry-run too."""
    out = tmp_path / "out"
    (tmp_path / "empty").mkdir()
    scenes = fake_m360(tmp_path / "m360", ["room"])
    cases = [
        (["--root", str(tmp_path / "nope"), *TINY_MODEL], "is not a folder"),
        (["--root", str(tmp_path / "empty"), *TINY_MODEL], "no scene bicycle bonsai counter garden kitchen room stump"),
        (["--root", str(scenes), "--scenes", "room", "stump", *TINY_MODEL], "no scene stump under"),
    ]
    if not dry:  # a dry run warns about a missing model file and prints the commands (test_eval_dtu.py)
        cases.append((["--root", str(scenes), "--scenes", "room", "--ckpt", str(tmp_path / "zeronvs.ckpt")],
                      "checkpoint (--ckpt) not found"))
    for argv, expected in cases:
        assert eval_mipnerf360.main([*argv, "--out", str(out), *(["--dry-run"] if dry else [])]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1 and expected in captured.err, captured.err
    assert not out.exists()


def test_config_differs_from_the_paper_config_only_in_the_protocol_keys():
    paper = _flat(OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "zeronvs.yaml")))
    m360 = _flat(OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "zeronvs_mipnerf360.yaml")))
    differ = {k for k in paper.keys() | m360.keys() if paper.get(k, "<absent>") != m360.get(k, "<absent>")}
    assert differ == {
        "name", "tag", "data_type", "data.image_path", "data.fovy_fallback_deg", "data.default_elevation_deg",
        "data.scene_format", "data.scene.scene_dir", "data.scene.view_idx", "data.scene.resolution",
        "data.scene.manual_gt_to_pred_scale", "data.random_camera.elevation_range", "system.renderer.near_plane",
        "system.guidance.precomputed_scale",
        "data.random_camera.n_test_views",  # posed-inputs's test views are the scene's (the key is refused)
    }
    assert m360["data.default_elevation_deg"] == m360["data.random_camera.elevation_range"] == "auto"
    # the script's shared overrides hold in the config too (the command lines only make them visible)
    for item in eval_mipnerf360.PROTOCOL_OVERRIDES:
        key, value = item.split("=", 1)
        assert yaml.safe_load(value) == m360[key], key
    assert m360["data.scene.resolution"] == 256 and m360["data.random_camera.eval_height"] == 256


@pytest.mark.slow
def test_two_step_run_writes_metrics_with_lpips_lists_failures_and_skips_finished(tmp_path):
    root = tmp_path / "m360"
    write_scene(root / "bicycle")  # room's poses_bounds.npy is not one: listed as failed, bicycle still counts
    fake_m360(root, ["room"])
    out = tmp_path / "eval"
    args = [sys.executable, str(SCRIPT), "--root", str(root), "--scenes", "bicycle", "room", "--out", str(out),
            "--ckpt", "random", "--model-config", str(ROOT / "configs" / "diffusion_tiny.yaml"), "--steps", "2",
            "--extra", *TINY]
    env = dict(os.environ, HF_HUB_OFFLINE="1")  # THREESTUDIO_LPIPS_DIR: conftest's random weight files
    res = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=500)
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-3000:]
    assert "scene room: run failed (exit 2): error: " in res.stderr  # the cause from the run's log
    metrics = json.loads((out / "runs" / "sds" / "bicycle" / "save" / "metrics.json").read_text())
    assert isinstance(metrics["lpips"], float) and "lpips_note" not in metrics
    assert [v["target"] for v in metrics["per_view"]] == [1, 2, 3, 4, 5, 6, 7]  # all views but the input (view 0)
    rows = list(csv.DictReader(open(out / "mipnerf360.csv")))
    assert [r["scene"] for r in rows] == ["bicycle", "room", "mean"]
    assert float(rows[0]["lpips"]) == pytest.approx(metrics["lpips"]) and rows[0]["n_views"] == "7"
    assert float(rows[0]["paper_lpips"]) == 0.6536 and "poses_bounds.npy" in rows[1]["error"], rows[1]["error"]
    assert float(rows[2]["psnr"]) == pytest.approx(metrics["psnr"])  # the mean covers the finished scene only
    md = (out / "mipnerf360.md").read_text()
    assert "| bicycle | 2 | 0.90 | 1.00 |" in md and "| room |" in md and "failed" in md
    parsed = OmegaConf.load(out / "runs" / "sds" / "bicycle" / "configs" / "parsed.yaml")
    assert parsed.data.default_elevation_deg == pytest.approx(21.0375, abs=1e-3)  # the input camera's
    assert list(parsed.data.random_camera.elevation_range) == [5.0, 71.04]
    assert parsed.data.default_fovy_deg == pytest.approx(50.0) and parsed.system.renderer.near_plane == 0.6
    assert parsed.data.image_path.endswith("images_2/IMG_000.png")

    res = subprocess.run(args[:6] + args[7:], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "metrics exist" in res.stderr and "skipped" in res.stderr
