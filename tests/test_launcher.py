"""scripts/launcher.py: scene fan-out on submitit's local and debug executors (CPU, trivial jobs)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from threestudio.utils.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
try:
    from launcher import LauncherConfig, parse_gpus, parse_slurm_time, run_jobs  # scripts/launcher.py
finally:
    sys.path.pop(0)

PYTHON_PATH = [str(ROOT), str(ROOT / "tests")]


def square(x):
    return x * x


def visible_gpus(_):
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def broken(scan):
    raise ValueError(f"scan {scan} has no cameras")


@pytest.mark.slow  # submitit's local executor starts a process per job
def test_local_runs_every_job_and_lists_the_failed_one(tmp_path):
    jobs = [("a", square, (3,)), ("b", broken, (37,)), ("c", square, (4,))]
    results = run_jobs(jobs, LauncherConfig(kind="local", folder=str(tmp_path), python_path=PYTHON_PATH))
    assert [r.name for r in results] == ["a", "b", "c"]
    assert [(r.ok, r.value) for r in results] == [(True, 9), (False, None), (True, 16)]
    assert "scan 37 has no cameras" in results[1].error


@pytest.mark.slow  # submitit's local executor starts a process per job
def test_local_gives_each_job_one_gpu_of_the_list(tmp_path):
    jobs = [(f"j{k}", visible_gpus, (k,)) for k in range(3)]
    results = run_jobs(jobs, LauncherConfig(kind="local", folder=str(tmp_path), gpus=[2, 5], python_path=PYTHON_PATH))
    seen = [r.value for r in results]
    assert all(r.ok for r in results) and set(seen) == {"2", "5"}  # one GPU each, both slots used


def test_slurm_path_submits_one_array(tmp_path):
    cfg = LauncherConfig(kind="slurm", folder=str(tmp_path), cluster="debug", slurm_partition="gpu",
                         slurm_time="02:00:00", python_path=PYTHON_PATH)
    results = run_jobs([("a", square, (5,)), ("b", square, (6,))], cfg)
    assert [(r.name, r.value) for r in results] == [("a", 25), ("b", 36)]


def test_argument_parsing():
    assert parse_gpus("0,1, 3") == [0, 1, 3] and parse_gpus("") == []
    for bad in ("a,b", "0,0", "-1"):
        with pytest.raises(UserError):
            parse_gpus(bad)
    assert [parse_slurm_time(t) for t in ("90", "1:30:00", "1-02:30", "10:30")] == [90, 90, 1590, 10]
    with pytest.raises(UserError):
        parse_slurm_time("two hours")
    with pytest.raises(UserError):
        run_jobs([("a", square, (1,))], LauncherConfig(kind="ssh"))


@pytest.mark.parametrize("quiet", [False, True])
def test_a_bar_counts_the_finished_jobs_unless_quiet(tmp_path, monkeypatch, capsys, quiet):
    from threestudio.utils.progress import set_quiet

    monkeypatch.delenv("THREESTUDIO_QUIET", raising=False)  # conftest turns bars off for the suite
    set_quiet(quiet)
    cfg = LauncherConfig(kind="slurm", folder=str(tmp_path), cluster="debug", python_path=PYTHON_PATH, unit="scan")
    run_jobs([("scan24", square, (2,)), ("scan37", square, (3,))], cfg)
    err = capsys.readouterr().err
    if quiet:
        assert "scans" not in err
    else:
        assert "scans: 100%" in err and "2/2" in err and ("scan/s" in err or "s/scan" in err)
