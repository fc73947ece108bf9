"""scripts/eval_dtu.py: ZeroNVS's DTU protocol — the command lines it builds, its tables, tiny runs on one scan."""

from __future__ import annotations

import csv
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "eval_dtu.py"
sys.path.insert(0, str(ROOT / "scripts"))
try:
    import eval_dtu
finally:
    sys.path.pop(0)

# a tiny zeronvs-system on the sds protocol: small stages of the same aspect, a small hash grid, a few targets
TINY_SDS = [
    "data.height=[12,24]", "data.width=[16,32]", "data.resolution_milestones=[1]",
    "data.random_camera.height=[8,16]", "data.random_camera.width=[8,16]",
    "data.random_camera.resolution_milestones=[1]",
    "data.random_camera.eval_height=15", "data.random_camera.eval_width=20", "data.random_camera.n_val_views=1",
    "data.scene.target_views=[31,13]",
    "system.geometry.pos_encoding_config.n_levels=4", "system.geometry.pos_encoding_config.log2_hashmap_size=12",
    "system.renderer.num_samples_per_ray=8", "system.renderer.num_samples_per_ray_proposal=8",
]


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=400)


def fake_dtu(root: Path, scans=(*eval_dtu.PROTOCOL_SCANS, 24)) -> Path:
    """Scene folders that pass eval_dtu's up-front checks (a folder with a cameras.npz per scan)."""
    for scan in scans:
        (root / f"dtu_scan{scan}").mkdir(parents=True, exist_ok=True)
        (root / f"dtu_scan{scan}" / "cameras.npz").write_bytes(b"")
    return root


FAKE_DTU = fake_dtu(Path(tempfile.mkdtemp(prefix="fake_dtu_")))


TINY_MODEL = ["--ckpt", "random", "--model-config", str(ROOT / "configs" / "diffusion_tiny.yaml")]


def dry_run(capsys, *args: str):
    assert eval_dtu.main(["--root", str(FAKE_DTU), "--out", "out", "--dry-run", *TINY_MODEL, *args]) == 0
    return [shlex.split(line) for line in capsys.readouterr().out.splitlines()]


@pytest.mark.parametrize("dry", [True, False])
def test_root_and_scans_are_checked_first_in_one_line(tmp_path, capsys, dry):
    flags = ["--dry-run"] if dry else []
    out = tmp_path / "out"
    no_cameras = fake_dtu(tmp_path / "nocams", [24])
    (no_cameras / "dtu_scan24" / "cameras.npz").unlink()
    cases = [
        (["--root", str(tmp_path / "nonexistent")], "is not a folder"),
        (["--root", str(FAKE_DTU), "--scans", "24", "99", "98"], "no scene folder for scan(s) 99 98"),
        (["--root", str(no_cameras), "--scans", "24"], "no cameras.npz in the scene folder of scan(s) 24"),
    ]
    # the diffusion model's files: the same message for every scan, so once, before any run (a dry run warns and
    # still prints the commands: they are what one runs once the weights are there)
    model_cases = [
        (["--root", str(FAKE_DTU), "--scans", "24", "--ckpt", str(tmp_path / "zeronvs.ckpt")],
         f"checkpoint (--ckpt) not found: {tmp_path / 'zeronvs.ckpt'}; download zeronvs.ckpt"),
        (["--root", str(FAKE_DTU), "--scans", "24", "--ckpt", "random", "--model-config", "configs/nope.yaml"],
         "latent-diffusion YAML (--model-config) not found"),
        (["--root", str(FAKE_DTU), "--scans", "24", "--ckpt", "random", "--extra",
          f"system.diffusion_model.pretrained_config={tmp_path / 'tiny.yaml'}"],
         "latent-diffusion YAML (system.diffusion_model.pretrained_config of zeronvs_nvs.yaml) not found"),
    ]
    for argv, expected in cases + ([] if dry else model_cases):
        assert eval_dtu.main([*argv, "--mode", "nvs", "--out", str(out), *flags]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1 and expected in captured.err, captured.err
    for argv, expected in model_cases if dry else []:
        assert eval_dtu.main([*argv, "--mode", "nvs", "--out", str(out), *flags]) == 0
        captured = capsys.readouterr()
        assert captured.err.startswith("warning: the runs would stop at once:") and expected in captured.err
        assert "launch.py" in captured.out
    with pytest.raises(SystemExit) as stopped:  # bad options: the same one line and exit code 2
        eval_dtu.main(["--root", str(FAKE_DTU), "--scans", "24", "--steps", "0", "--mode", "nvs", "--out", str(out)])
    assert stopped.value.code == 2 and capsys.readouterr().err == "error: --steps must be >= 1\n"
    assert not out.exists()  # nothing written, nothing run


def overrides(cmd):
    return dict(arg.split("=", 1) for arg in cmd if "=" in arg and not arg.startswith("-"))


def test_protocol_targets_and_pose_scales():
    targets = eval_dtu.protocol_targets()
    assert len(targets) == 49 - 1 - 15 and 25 not in targets and not set(targets) & {3, 7, 16, 21, 36, 39}
    assert eval_dtu.parse_pose_scales(None, [24, 37]) == {24: pytest.approx(1 / 2.02), 37: pytest.approx(1 / 2.02)}
    assert eval_dtu.parse_pose_scales(["0.4"], [24, 37]) == {24: 0.4, 37: 0.4}
    assert eval_dtu.parse_pose_scales(["37=0.3"], [24, 37]) == {24: pytest.approx(1 / 2.02), 37: 0.3}
    with pytest.raises(SystemExit):
        eval_dtu.parse_pose_scales(["40=0.3"], [24, 37])


def test_sds_dry_run_is_the_original_protocol(capsys):
    cmds = dry_run(capsys, "--mode", "sds")
    # launch_eval_dtu.sh: these 15 scans with these manual_gt_to_pred_scale, translations / 2.02 / scale
    scales = [1.2, 1.4, 1.5, 1.4, 1.4, 1.3, 1.2, 1.3, 1.4, 1.2, 1.5, 1.5, 1.5, 1.3, 1.3]
    scans = [8, 21, 30, 31, 34, 38, 40, 41, 45, 55, 63, 82, 103, 110, 114]
    assert len(cmds) == 15
    for cmd, scan, scale in zip(cmds, scans, scales):
        assert cmd[1].endswith("launch.py") and cmd[2:5] == ["--config", str(ROOT / "configs" / "zeronvs_dtu.yaml"),
                                                             "--train"]
        o = overrides(cmd)
        assert o["data.scene.scene_dir"] == str(FAKE_DTU / f"dtu_scan{scan}")
        assert float(o["data.scene.pose_scale"]) == pytest.approx(1 / (2.02 * scale))
        assert o["tag"] == f"scan{scan}" and o["name"] == "sds" and o["use_timestamp"] == "false"
    # the table is overridable; --pose-scale sets the pose scale directly and wins
    cmds = dry_run(capsys, "--mode", "sds", "--scans", "8", "21", "--gt-to-pred-scale", "8=1.0", "--pose-scale",
                   "21=0.25", "--extra", "data.scene.input_views=[0]")
    assert float(overrides(cmds[0])["data.scene.pose_scale"]) == pytest.approx(1 / 2.02)
    assert float(overrides(cmds[1])["data.scene.pose_scale"]) == 0.25
    assert cmds[0][-1] == "data.scene.input_views=[0]"  # --extra comes last, so it wins


@pytest.mark.parametrize("views", [3, 6, 9])
def test_few_view_dry_runs_follow_the_regnerf_split(capsys, views):
    """--views N: the first N of RegNeRF's inputs and its 25 test views, in every mode; --views 1 stays ZeroNVS's."""
    inputs = [25, 22, 28, 40, 44, 48, 0, 8, 13][:views]
    tests = [1, 2, 9, 10, 11, 12, 14, 15, 23, 24, 26, 27, 29, 30, 31, 32, 33, 34, 35, 41, 42, 43, 45, 46, 47]
    (sds,) = dry_run(capsys, "--mode", "sds", "--scans", "24", "--views", str(views))
    assert f"data.scene.input_views={eval_dtu._list(inputs)}" in sds
    assert f"data.scene.target_views={eval_dtu._list(tests)}" in sds and len(tests) == 25
    assert "data.scene.use_masks=true" in sds and f"name=sds_{views}v" in sds
    nvs, nerf = dry_run(capsys, "--mode", "nvs+nerf", "--scans", "24", "--views", str(views))
    for cmd in (nvs, nerf):
        assert f"data.input_views={eval_dtu._list(inputs)}" in cmd
        assert f"data.target_views={eval_dtu._list(tests)}" in cmd
    (single,) = dry_run(capsys, "--mode", "sds", "--scans", "24")
    assert not any(arg.startswith("data.scene.input_views") for arg in single) and "name=sds" in single


def test_nvs_dry_run_lets_explicit_views_win(capsys):
    cmds = dry_run(capsys, "--mode", "nvs+nerf", "--scans", "24", "--extra", "data.input_views=[0,10,20]")
    assert [c[3].rsplit("/", 1)[-1] for c in cmds] == ["zeronvs_nvs.yaml", "nerf_multiview.yaml"]
    nvs, nerf = (overrides(c) for c in cmds)
    assert nvs["data.excluded_views"] == "[3,4,5,6,7,16,17,18,19,20,21,36,37,38,39]"
    assert nvs["data.target_views"] == "null" and float(nvs["data.pose_scale"]) == pytest.approx(1 / 2.02)
    assert nvs["data.input_views"] == "[0,10,20]"  # the user's, after the protocol's [25]
    assert nerf["data.generated_views_dir"].endswith(os.path.join("runs", "nvs", "scan24", "save", "nvs"))


def _flat(node, prefix=""):
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def test_dtu_config_differs_from_the_paper_config_only_in_the_protocol_keys():
    paper = _flat(OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "zeronvs.yaml")))
    dtu = _flat(OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "zeronvs_dtu.yaml")))
    differ = {k for k in paper.keys() | dtu.keys() if paper.get(k, "<absent>") != dtu.get(k, "<absent>")}
    differ = {k for k in differ if not k.startswith("data.scene.")}
    assert differ == {
        "name", "tag", "data_type", "data.image_path", "data.height", "data.width", "data.default_elevation_deg",
        "data.fovy_fallback_deg", "data.scene_intrinsics", "data.random_camera.eval_height",
        "data.random_camera.eval_width", "data.random_camera.fovy_range", "data.random_camera.eval_fovy_deg",
        "system.background.color", "system.background.random_aug", "system.renderer.near_plane",
        "system.renderer.far_plane", "system.guidance.guidance_scale", "system.guidance.use_anisotropic_schedule",
        "system.guidance.anisotropic_offset", "system.loss.lambda_opaque",
        "data.random_camera.n_test_views",  # posed-inputs's test views are the scene's (the key is refused)
        "system.guidance.input_selection",  # the few-view protocol's rule (--views 3/6/9), shown in the DTU config
    }
    # launch_eval_dtu.sh + zero123_scene.yaml's values
    assert (dtu["data.height"], dtu["data.width"]) == ([108, 300], [144, 400])
    assert (dtu["system.renderer.near_plane"], dtu["system.renderer.far_plane"]) == (0.25, 100.0)
    assert dtu["system.guidance.guidance_scale"] == 7.5 and dtu["system.loss.lambda_opaque"] == 0.1
    assert dtu["data.scene.input_views"] == [25] and dtu["data.scene.excluded_views"] == eval_dtu.EXCLUDED_VIEWS
    assert dtu["trainer.max_steps"] == 4000 and dtu["data.default_elevation_deg"] == 20.0


@pytest.mark.slow
def test_sds_mode_tiny_runs_the_zeronvs_system(tmp_path, dtu_scan24, zeronvs_tiny_dir):
    out = tmp_path / "eval"
    res = run_script(
        "--root", str(dtu_scan24.parent), "--scans", "24", "--mode", "sds", "--out", str(out),
        "--ckpt", str(zeronvs_tiny_dir / "model.ckpt"), "--model-config", str(zeronvs_tiny_dir / "config.yaml"),
        "--steps", "2", "--extra", *TINY_SDS,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    rows = list(csv.DictReader(open(out / "dtu_sds.csv")))
    assert [r["scan"] for r in rows] == ["24", "mean"]
    assert rows[0]["n_views"] == "2" and not rows[0]["error"] and rows[0]["paper_psnr"] == ""  # 24: not in the paper
    assert float(rows[0]["gt_to_pred_scale"]) == 1.0 and float(rows[0]["pose_scale"]) == pytest.approx(1 / 2.02)
    parsed = OmegaConf.load(out / "runs" / "sds" / "scan24" / "configs" / "parsed.yaml")
    assert parsed.system_type == "zeronvs-system" and parsed.data_type == "posed-inputs-datamodule"
    assert parsed.system.guidance.guidance_scale == 7.5 and parsed.trainer.max_steps == 2
    assert (out / "runs" / "sds" / "scan24" / "save" / "metrics.json").is_file()


@pytest.mark.slow
def test_few_view_sds_tiny_scores_the_25_test_views(tmp_path, shared_dir, zeronvs_tiny_dir):
    """A 2-step ZeroNVS* run (3 inputs, tiny model, small renders) scores RegNeRF's 25 test views, full-image and
    masked; the table puts CAT3D's rows beside the mean."""
    out = tmp_path / "eval"
    tiny = [o for o in TINY_SDS if not o.startswith("data.scene.target_views")]
    res = run_script(
        "--root", str(shared_dir / "data" / "dtu"), "--scans", "37", "--mode", "sds", "--views", "3",
        "--out", str(out), "--ckpt", str(zeronvs_tiny_dir / "model.ckpt"),
        "--model-config", str(zeronvs_tiny_dir / "config.yaml"), "--steps", "2", "--extra", *tiny,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    metrics = json.loads((out / "runs" / "sds_3v" / "scan37" / "save" / "metrics.json").read_text())
    assert [v["target"] for v in metrics["per_view"]] == eval_dtu.FEW_VIEW_TARGETS
    assert all(v["psnr_masked"] is not None and v["ssim_masked"] is not None for v in metrics["per_view"])
    parsed = OmegaConf.load(out / "runs" / "sds_3v" / "scan37" / "configs" / "parsed.yaml")
    assert list(parsed.data.scene.input_views) == [25, 22, 28] and parsed.system.guidance.input_selection == "nearest"
    rows = list(csv.DictReader(open(out / "dtu_sds_3views.csv")))
    assert [r["scan"] for r in rows] == ["37", "mean"] and rows[0]["n_views"] == "25" and rows[0]["psnr_masked"]
    table = (out / "dtu_sds_3views.md").read_text()
    assert "| ZeroNVS* (CAT3D Table 1) | | | 16.71 | 0.716 | 0.223 |" in table


@pytest.mark.slow
def test_nvs_mode_tiny_writes_markdown_and_csv(tmp_path, dtu_scan24, zeronvs_tiny_dir):
    out = tmp_path / "eval"
    res = run_script(
        "--root", str(dtu_scan24.parent), "--scans", "24", "--mode", "nvs", "--out", str(out),
        "--ckpt", str(zeronvs_tiny_dir / "model.ckpt"), "--model-config", str(zeronvs_tiny_dir / "config.yaml"),
        "--pose-scale", "24=0.5", "--steps", "2",
        "--extra", "data.height=32", "data.width=32", "data.target_views=[31,13]",
        "system.sampling.targets_per_batch=2",
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    rows = list(csv.DictReader(open(out / "dtu_nvs.csv")))
    assert [r["scan"] for r in rows] == ["24", "mean"]
    assert float(rows[0]["pose_scale"]) == 0.5 and rows[0]["n_views"] == "2" and not rows[0]["error"]
    assert float(rows[0]["psnr"]) == pytest.approx(float(rows[1]["psnr"]))  # one scan: mean = that scan
    assert 0 < float(rows[0]["psnr"]) < 60
    md = (out / "dtu_nvs.md").read_text()
    assert "| 24 | 1.00 | 0.5000 |" in md and "| mean |" in md
    assert (out / "runs" / "nvs" / "scan24" / "save" / "metrics.json").is_file()
    parsed = (out / "runs" / "nvs" / "scan24" / "configs" / "parsed.yaml").read_text()
    assert "pose_scale: 0.5" in parsed and "input_views:\n  - 25" in parsed.replace("    ", "  ")


@pytest.mark.slow
def test_failed_scan_is_reported_not_fatal(tmp_path, dtu_scan24):
    out = tmp_path / "eval"
    root = fake_dtu(tmp_path / "dtu", [8])  # passes the up-front checks; the run fails on the scene (no images)
    res = run_script("--root", str(root), "--scans", "8", "--mode", "sds", "--out", str(out), *TINY_MODEL)
    assert res.returncode == 1
    rows = list(csv.DictReader(open(out / "dtu_sds.csv")))
    assert "scan8" in rows[0]["error"]
    # the cause from the run's log, not only the log's path
    assert "run failed (exit 2): error: no images in " in rows[0]["error"], rows[0]["error"]
    assert float(rows[0]["paper_psnr"]) == pytest.approx(13.2329)  # the paper's numbers stay beside ours
    assert rows[1]["paper_psnr"] == rows[1]["psnr"] == ""  # the paper's mean covers the finished scans only


@pytest.mark.slow
def test_fan_out_lists_failed_scans_skips_finished_ones_and_force_reruns(tmp_path, dtu_scan24, zeronvs_tiny_dir):
    out = tmp_path / "eval"
    root = fake_dtu(tmp_path / "dtu", [99])  # scan 99's empty cameras.npz fails its run
    (root / "dtu_scan24").symlink_to(dtu_scan24)
    common = ["--root", str(root), "--mode", "nvs", "--out", str(out), "--launcher", "local",
              "--ckpt", str(zeronvs_tiny_dir / "model.ckpt"), "--model-config", str(zeronvs_tiny_dir / "config.yaml"),
              "--steps", "1", "--extra", "data.height=32", "data.width=32", "data.target_views=[31]"]
    res = run_script("--scans", "24", "99", *common)
    assert res.returncode == 1, res.stderr[-3000:]
    rows = {r["scan"]: r for r in csv.DictReader(open(out / "dtu_nvs.csv"))}
    assert rows["24"]["psnr"] and not rows["24"]["error"] and "scan99" in rows["99"]["error"]
    assert rows["mean"]["psnr"] == rows["24"]["psnr"]  # the failed scan does not count
    assert list((out / "submitit").glob("*_log.out")), "submitit's per-job logs"
    marker = out / "runs" / "nvs" / "scan24" / "kept"
    marker.write_text("")
    res = run_script("--scans", "24", *common)  # metrics exist: nothing runs
    assert res.returncode == 0 and "scan 24: metrics exist" in res.stderr and marker.exists()
    res = run_script("--scans", "24", *common, "system.sampling.steps=abc", "--force")  # reruns (and fails fast)
    assert res.returncode == 1 and not marker.exists()
    assert "failed" in next(csv.DictReader(open(out / "dtu_nvs.csv")))["error"]
