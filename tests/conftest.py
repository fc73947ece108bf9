"""Shared pytest fixtures.

Tests that need ../shared (real DTU scans, ZeroNVS fixtures) use the ``shared_dir`` fixture: it skips
with a clear reason when the folder is absent, except under CI=true, where its absence fails the test.

Tests marked ``slow`` launch ``launch.py`` (or another script) in a subprocess, run a whole training in
process, or compile with ``torch.compile``; ``python -m pytest -q -m "not slow"`` skips them for a quick
loop (``.ci/run`` runs everything, with ``-n auto``: one pytest-xdist worker per CPU, each with its share of threads).
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

import pytest

from threestudio.utils.threads import available_cpus, set_cpu_thread_defaults

# before torch is imported, as launch.py does: waiting OpenMP threads sleep instead of spinning, so the tests' CPU
# time on cores shared with other jobs is their work (README, "CPU threads")
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    # a pytest-xdist worker (README's `-n auto`): the workers share the CPUs, so each takes its share of threads
    # (and so do the scripts it launches); an OMP_NUM_THREADS already in the environment wins
    os.environ.setdefault(
        "OMP_NUM_THREADS", str(max(1, available_cpus() // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    )
set_cpu_thread_defaults()
import torch  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Triton kernels run on CPU tensors through Triton's interpreter (tests/test_triton_kernels.py). It must be chosen
# before anything imports triton (lightning and diffusers do): triton.language's own helpers are made then.
os.environ.setdefault("TRITON_INTERPRET", "1")
# no progress bars in tests (scripts and launch.py subprocesses inherit it; threestudio/utils/progress.py); the test
# of the progress bar itself launches without it
os.environ["THREESTUDIO_QUIET"] = "1"

REPO_ROOT = Path(__file__).resolve().parents[1]
ROOT = REPO_ROOT
SHARED_DIR = Path(os.environ.get("ZERONVS_SHARED_DIR", REPO_ROOT.parent / "shared"))


def require_shared(*relative: str) -> Path:
    """Path to ``../shared/<relative>``; skip (or fail under CI=true) when it is missing."""
    path = SHARED_DIR.joinpath(*relative)
    if not path.exists():
        msg = f"{path} is absent: these tests read the project's shared data (see ../shared/README.md)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + " — under CI=true it must be present")
        pytest.skip(msg)
    return path


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one worker per CPU this process may use (affinity and the cgroup's quota, as the thread
    defaults), not per CPU the machine has."""
    return available_cpus()


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    """The slow tests first (in file order), then the quick ones: with several pytest-xdist workers the long runs
    start early and the many short tests fill the workers' ends, instead of one worker finishing a long run alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: launches a script in a subprocess, runs a whole training, or compiles")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return require_shared()


@pytest.fixture(scope="session")
def dtu_scan24() -> Path:
    return require_shared("data", "dtu", "dtu_scan24")


@pytest.fixture(scope="session")
def zeronvs_tiny_dir() -> Path:
    return require_shared("fixtures", "zeronvs_tiny")


@pytest.fixture(scope="session", autouse=True)
def lpips_weights_dir(tmp_path_factory) -> Path:
    """Seeded random LPIPS weight files for the whole session (THREESTUDIO_LPIPS_DIR, inherited by subprocesses):
    every metrics.json the tests write has a numeric lpips, and nothing is ever downloaded."""
    from threestudio.utils.lpips_alex import ENV_DIR, write_random_weights

    folder = tmp_path_factory.mktemp("lpips_weights")
    write_random_weights(str(folder), seed=0)
    previous = os.environ.get(ENV_DIR)
    os.environ[ENV_DIR] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop(ENV_DIR, None)
    else:
        os.environ[ENV_DIR] = previous


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


# ----- the smoke trial shared by the pipeline and trial-safety tests (launch.py subprocesses) -----
SMOKE_STEPS = 12


def launch(*args: str, cwd: Path = ROOT, timeout: int = 600, quiet: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    if not quiet:
        env.pop("THREESTUDIO_QUIET")
    return subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def smoke_args(root: Path, *extra: str) -> list:
    return [
        "--config",
        str(ROOT / "configs" / "smoke.yaml"),
        f"exp_root_dir={root}",
        "use_timestamp=false",
        f"system.guidance.pretrained_config={ROOT / 'configs' / 'diffusion_tiny.yaml'}",
        *extra,
    ]


@pytest.fixture(scope="session")
def smoke_trial(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("smoke")
    res = launch(
        "--train",
        *smoke_args(
            root, f"trainer.max_steps={SMOKE_STEPS}", "trainer.val_check_interval=6", "checkpoint.every_n_train_steps=6"
        ),
        quiet=False,  # as a user runs it: its output (with the progress bar) is kept for test_pipeline.py
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (root / "launch_output.txt").write_text(res.stdout + res.stderr)
    trials = glob.glob(str(root / "smoke" / "*"))
    assert len(trials) == 1, trials
    return Path(trials[0])
