"""Shared pytest fixtures.

Tests that need ../shared (real DTU scans, ZeroNVS fixtures) use the ``shared_dir`` fixture: it skips
with a clear reason when the folder is absent, except under CI=true, where its absence fails the test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("ZERONVS_SHARED_DIR", REPO_ROOT.parent / "shared"))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long end-to-end runs (subprocesses of launch.py, the CI oracle run)")


def require_shared(*relative: str) -> Path:
    """Path to ``../shared/<relative>``; skip (or fail under CI=true) when it is missing."""
    path = SHARED_DIR.joinpath(*relative)
    if not path.exists():
        msg = f"{path} is absent: these tests read the project's shared data (see ../shared/README.md)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + " — under CI=true it must be present")
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return require_shared()


@pytest.fixture(scope="session")
def dtu_scan24() -> Path:
    return require_shared("data", "dtu", "dtu_scan24")


@pytest.fixture(scope="session")
def zeronvs_tiny_dir() -> Path:
    return require_shared("fixtures", "zeronvs_tiny")


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield
