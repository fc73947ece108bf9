"""No import cycle in the library: the import graph of threestudio/ and zeronvs_diffusion/ is acyclic — counting the
imports inside functions too, so a cycle cannot hide behind a lazy import — and every module imports first in a fresh
process."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("threestudio", "zeronvs_diffusion")


def library_modules() -> Dict[str, Path]:
    """Dotted module name → file, for every module of the library packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def library_imports(name: str, path: Path, known: Set[str]) -> Set[str]:
    """Library modules that ``name`` imports anywhere in its file (``from a import b`` counts ``a.b`` when that is a
    module, else ``a``), including a package's ``__init__`` for each dotted parent except ``name``'s own."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            for k in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ first
                prefix = ".".join(parts[:k])
                # a module's own parent packages are initialised before it (not a cycle)
                if prefix in known and prefix != name and not name.startswith(prefix + "."):
                    found.add(prefix)
    return found


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import cycle of ``graph`` as a list of modules (empty when there is none)."""
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def test_import_graph_has_no_cycle():
    modules = library_modules()
    graph = {name: library_imports(name, path, set(modules)) for name, path in modules.items()}
    assert "threestudio.data.posed_views" in graph and "zeronvs_diffusion.sources" in graph
    assert find_cycle(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


# run in one subprocess: third-party packages are imported once, then one forked child per library module imports
# it first (no library module is loaded in the parent, so each child starts the library fresh); prints the failures
FORK_IMPORTS = r"""
import importlib, json, os, sys, traceback
import numpy, torch  # noqa: F401  third-party only: the library's own modules stay unloaded here
for heavy in ("lightning", "omegaconf", "diffusers", "transformers", "triton"):
    try:
        importlib.import_module(heavy)
    except ImportError:
        pass
has_triton = "triton" in sys.modules
TRITON_MODULES = {"threestudio.profiling.aot"} if not has_triton else set()
failures = []
for name in json.loads(sys.argv[1]):
    if name in TRITON_MODULES or name.startswith("threestudio.kernels.") and not has_triton:
        continue  # they import triton at their top; without triton only fast_paths may import the kernels
    assert not any(m == p or m.startswith(p + ".") for m in sys.modules for p in ("threestudio", "zeronvs_diffusion"))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            importlib.import_module(name)
            code, message = 0, b""
        except BaseException:
            code, message = 1, traceback.format_exc().strip().splitlines()[-1].encode()
        os.write(write, message)
        os._exit(code)
    os.close(write)
    message = os.read(read, 4096).decode()
    os.close(read)
    if os.waitpid(pid, 0)[1] != 0:
        failures.append(f"{name}: {message or 'died'}")
print(json.dumps(failures))
"""


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (Linux/macOS)")
def test_every_module_imports_first_in_a_fresh_process():
    """``import M`` first, for every library module M, in a process that has loaded no library module (a cycle fails
    when its module is imported first): one forked child per module of a parent that imported only third-party
    packages — the same check as ``python -c 'import M'`` per module, without paying torch's import each time."""
    import json

    env = dict(os.environ, TRITON_INTERPRET="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    names = sorted(library_modules())
    res = subprocess.run([sys.executable, "-c", FORK_IMPORTS, json.dumps(names)], cwd=ROOT, capture_output=True,
                         text=True, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    failures = json.loads(res.stdout.strip().splitlines()[-1])
    assert not failures, "\n".join(failures)


@pytest.mark.slow  # fresh interpreters
def test_the_fresh_import_check_catches_a_cycle(tmp_path):
    """The check above fails on a package whose two modules import each other at the top (imported first: one of
    them finds the other half-initialised)."""
    import json

    pkg = tmp_path / "threestudio_cycle_probe"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from threestudio_cycle_probe.b import B\nA = 1\n")
    (pkg / "b.py").write_text("from threestudio_cycle_probe.a import A\nB = 2\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path), OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-c", FORK_IMPORTS, json.dumps(["threestudio_cycle_probe.a"])], cwd=ROOT,
                         capture_output=True, text=True, env=env)
    failures = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(failures) == 1 and "ImportError" in failures[0], failures


def test_the_library_does_not_import_the_profiling_instruments():
    """threestudio/profiling/ (step tracer, fake CUDA, AOT compiler) is a developer's instrument: no module outside it
    imports it, and it holds the tracer, the fake-CUDA stand-in with its C++ source and the AOT compiler."""
    modules = library_modules()
    assert {"threestudio.profiling.step_trace", "threestudio.profiling.fake_cuda", "threestudio.profiling.aot"} <= set(
        modules)
    assert (ROOT / "threestudio" / "profiling" / "csrc" / "fake_cuda.cpp").is_file()
    for name, path in modules.items():
        if name.startswith("threestudio.profiling"):
            continue
        imported = library_imports(name, path, set(modules))
        assert not any(m.startswith("threestudio.profiling") for m in imported), name
