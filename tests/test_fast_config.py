"""The fast preset (configs/zeronvs_fast.yaml, issue 30): configs/zeronvs.yaml with only the keys its header
documents changed, each marked where it is set; `launch_inference.sh --fast` selects it, the paper config stays
the default."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path
from typing import Any, Dict

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "configs" / "zeronvs.yaml"
FAST = ROOT / "configs" / "zeronvs_fast.yaml"
# the documented changes: key -> (paper value, fast value)
CHANGES = {
    "name": ("zeronvs", "zeronvs_fast"),
    "system.renderer.num_samples_per_ray": (64, 32),
    "system.renderer.num_samples_per_ray_proposal": (64, 32),
    "system.renderer.grad_checkpoint_chunk_size": (524288, 0),
    "system.guidance.dtype": (None, "bf16"),  # not set in the paper config: the code's default, auto
}


def _flat(path: Path) -> Dict[str, Any]:
    """Dotted key -> value of a YAML file as written (interpolations unresolved)."""
    def walk(node: Any, prefix: str) -> Dict[str, Any]:
        if isinstance(node, dict):
            out: Dict[str, Any] = {}
            for key, value in node.items():
                out.update(walk(value, f"{prefix}{key}."))
            return out
        return {prefix[:-1]: node}

    return walk(OmegaConf.to_container(OmegaConf.load(path), resolve=False), "")


def test_the_fast_preset_differs_only_in_its_documented_keys():
    paper, fast = _flat(PAPER), _flat(FAST)
    differing = {key for key in paper.keys() | fast.keys() if paper.get(key) != fast.get(key)}
    assert differing == set(CHANGES)
    for key, (paper_value, fast_value) in CHANGES.items():
        assert (paper.get(key), fast.get(key)) == (paper_value, fast_value), key
    text = FAST.read_text()
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    for key in CHANGES:
        assert re.search(rf"^#\s+{re.escape(key)}\s", header, re.M), f"{key} is not documented in the header"
    marked = [line for line in text.splitlines() if "# fast preset (paper:" in line]
    assert len(marked) == len(CHANGES)  # each change marked where it is set, with the paper's value


def test_the_fast_preset_loads_with_the_dtype_the_code_knows():
    """Both configs load; the guidance's own Config reads bf16 from the preset and auto (its default) from the
    paper config."""
    from threestudio.models.guidance.zeronvs_guidance import ZeroNVSGuidance
    from threestudio.utils.config import load_config, parse_structured

    fast, paper = load_config(str(FAST)), load_config(str(PAPER))
    assert parse_structured(ZeroNVSGuidance.Config, fast.system.guidance).dtype == "bf16"
    assert parse_structured(ZeroNVSGuidance.Config, paper.system.guidance).dtype == "auto"
    assert fast.system.renderer.num_samples_per_ray == 32 and fast.system.renderer.grad_checkpoint_chunk_size == 0


def _launch(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """launch_inference.sh with a stand-in `python` on PATH that prints its arguments instead of training."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    shim = bin_dir / "python"
    shim.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    command = ["bash", str(ROOT / "launch_inference.sh"), "--ckpt", "random", "--model-config",
               str(ROOT / "configs" / "diffusion_tiny.yaml"), *args]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)


def _config_argument(result: subprocess.CompletedProcess) -> str:
    argv = result.stdout.splitlines()
    return argv[argv.index("--config") + 1]


def test_launch_inference_fast_selects_the_preset(tmp_path: Path):
    default = _launch(tmp_path)
    assert default.returncode == 0, default.stderr
    assert _config_argument(default) == str(PAPER)
    fast = _launch(tmp_path, "--fast")
    assert fast.returncode == 0, fast.stderr
    assert _config_argument(fast) == str(FAST)
    both = _launch(tmp_path, "--fast", "--config", str(PAPER))
    assert both.returncode == 2 and "--fast and --config" in both.stderr
