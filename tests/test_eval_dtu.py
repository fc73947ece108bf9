"""scripts/eval_dtu.py: the ZeroNVS DTU protocol driver, run tiny in nvs mode on one scan."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "eval_dtu.py"


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=400)


def test_protocol_targets_and_pose_scales():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import eval_dtu
    finally:
        sys.path.pop(0)
    targets = eval_dtu.protocol_targets()
    assert len(targets) == 49 - 1 - 15 and 25 not in targets and not set(targets) & {3, 7, 16, 21, 36, 39}
    assert eval_dtu.parse_pose_scales(None, [24, 37]) == {24: pytest.approx(1 / 2.02), 37: pytest.approx(1 / 2.02)}
    assert eval_dtu.parse_pose_scales(["0.4"], [24, 37]) == {24: 0.4, 37: 0.4}
    assert eval_dtu.parse_pose_scales(["37=0.3"], [24, 37]) == {24: pytest.approx(1 / 2.02), 37: 0.3}
    with pytest.raises(SystemExit):
        eval_dtu.parse_pose_scales(["40=0.3"], [24, 37])


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
    assert "| 24 | 0.5000 |" in md and "| mean |" in md
    assert (out / "runs" / "nvs" / "scan24" / "save" / "metrics.json").is_file()
    parsed = (out / "runs" / "nvs" / "scan24" / "configs" / "parsed.yaml").read_text()
    assert "pose_scale: 0.5" in parsed and "input_views:\n  - 25" in parsed.replace("    ", "  ")


@pytest.mark.slow
def test_missing_scan_is_reported_not_fatal(tmp_path, dtu_scan24):
    out = tmp_path / "eval"
    res = run_script("--root", str(dtu_scan24.parent), "--scans", "99", "--mode", "nvs", "--out", str(out))
    assert res.returncode == 1
    rows = list(csv.DictReader(open(out / "dtu_nvs.csv")))
    assert "dtu_scan99" in rows[0]["error"]


@pytest.mark.slow
def test_fan_out_lists_failed_scans_skips_finished_ones_and_force_reruns(tmp_path, dtu_scan24, zeronvs_tiny_dir):
    out = tmp_path / "eval"
    common = ["--root", str(dtu_scan24.parent), "--mode", "nvs", "--out", str(out), "--launcher", "local",
              "--ckpt", str(zeronvs_tiny_dir / "model.ckpt"), "--model-config", str(zeronvs_tiny_dir / "config.yaml"),
              "--steps", "1", "--extra", "data.height=32", "data.width=32", "data.target_views=[31]"]
    res = run_script("--scans", "24", "99", *common)
    assert res.returncode == 1, res.stderr[-3000:]
    rows = {r["scan"]: r for r in csv.DictReader(open(out / "dtu_nvs.csv"))}
    assert rows["24"]["psnr"] and not rows["24"]["error"] and "dtu_scan99" in rows["99"]["error"]
    assert rows["mean"]["psnr"] == rows["24"]["psnr"]  # the failed scan does not count
    assert list((out / "submitit").glob("*_log.out")), "submitit's per-job logs"
    marker = out / "runs" / "nvs" / "scan24" / "kept"
    marker.write_text("")
    res = run_script("--scans", "24", *common)  # metrics exist: nothing runs
    assert res.returncode == 0 and "scan 24: metrics exist" in res.stderr and marker.exists()
    res = run_script("--scans", "24", *common, "system.sampling.steps=abc", "--force")  # reruns (and fails fast)
    assert res.returncode == 1 and not marker.exists()
    assert "failed" in next(csv.DictReader(open(out / "dtu_nvs.csv")))["error"]
