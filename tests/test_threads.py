"""CPU thread defaults (threestudio/utils/threads.py): passive OpenMP waiting, threads from affinity and quota."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from threestudio.utils import threads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cgroup_quota_is_read_in_cpus(tmp_path):
    path = tmp_path / "cpu.max"
    path.write_text("150000 100000\n")
    assert threads.cgroup_cpu_quota(str(path)) == 1.5
    path.write_text("max 100000\n")
    assert threads.cgroup_cpu_quota(str(path)) is None
    assert threads.cgroup_cpu_quota(str(tmp_path / "absent")) is None
    assert 1 <= threads.available_cpus() <= (os.cpu_count() or 1)


def _run(code: str, env: dict) -> str:
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.slow  # fresh interpreters
def test_the_defaults_reach_torch_and_the_environment_wins():
    probe = ("import os; from threestudio.utils.threads import set_cpu_thread_defaults as s; s(); import torch; "
             "print(os.environ['OMP_WAIT_POLICY'], os.environ['OMP_NUM_THREADS'], torch.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    out = _run(probe, env)
    policy, n, torch_threads = out.split()
    assert policy == "PASSIVE" and int(n) == threads.available_cpus() == int(torch_threads)
    env.update(OMP_WAIT_POLICY="ACTIVE", OMP_NUM_THREADS="1")
    out = _run(probe, env)
    assert out.split() == ["ACTIVE", "1", "1"]
