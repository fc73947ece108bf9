"""Fake CUDA on a CPU-only build of PyTorch: tensors that say ``device="cuda"`` without memory or kernels.

The step tracer (:mod:`threestudio.profiling.step_trace`, ``python scripts/bench.py trace``) runs a whole training step
on :class:`torch._subclasses.fake_tensor.FakeTensorMode` tensors placed on ``cuda``: shapes, dtypes, devices and
autocast behave as on a GPU, nothing is allocated or computed. A CPU build of PyTorch can create such tensors, but
``Module.to("cuda")`` and every backward abort there (no CUDA device guard; the autograd engine asks the CUDA hooks
for the device count and the current streams). :func:`install` compiles ``csrc/fake_cuda.cpp`` (a do-nothing
device guard and hooks) with the machine's C++ compiler, once per PyTorch version, and loads it. PyTorch creates
its CUDA hooks the first time it needs them, so :func:`install` must run before ``import torch``.

On a CUDA build of PyTorch nothing is compiled or loaded (:func:`install` returns None): fake CUDA tensors work
there as they are. This module imports nothing heavy: no torch at import time.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from typing import Optional

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "fake_cuda.cpp")
_loaded: Optional[ctypes.CDLL] = None


class FakeCudaError(RuntimeError):
    """The stand-in could not be built or loaded (no C++ compiler, torch already imported, ...)."""


def _torch_dir() -> str:
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        raise FakeCudaError("torch is not installed")
    return list(spec.submodule_search_locations)[0]


def _torch_version(torch_dir: str) -> str:
    with open(os.path.join(torch_dir, "version.py")) as f:
        for line in f:
            if line.startswith("__version__"):
                return line.split("=", 1)[1].strip().strip("'\"")
    return "unknown"


def is_cpu_only_build() -> bool:
    """Whether the installed torch was built without CUDA (read from torch/version.py, without importing torch)."""
    with open(os.path.join(_torch_dir(), "version.py")) as f:
        for line in f:
            if line.startswith("cuda"):
                return line.split("=", 1)[1].strip() in ("None", "''", '""')
    return True


def cache_dir() -> str:
    """Where the compiled library is kept (``$ZERONVS_CACHE_DIR``, else ``$XDG_CACHE_HOME/zeronvs``, else
    ``~/.cache/zeronvs``)."""
    root = os.environ.get("ZERONVS_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "zeronvs"
    )
    return os.path.join(root, "fake_cuda")


def build(directory: Optional[str] = None) -> str:
    """Compile ``csrc/fake_cuda.cpp`` against the installed torch (cached by torch version and source hash); the
    path of the shared library."""
    torch_dir = _torch_dir()
    with open(SOURCE, "rb") as f:
        digest = hashlib.sha256(f.read() + _torch_version(torch_dir).encode()).hexdigest()[:16]
    directory = directory or cache_dir()
    library = os.path.join(directory, f"fake_cuda_{digest}.so")
    if os.path.isfile(library):
        return library
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise FakeCudaError("no C++ compiler found (set CXX or install g++); the fake-CUDA stand-in is compiled")
    os.makedirs(directory, exist_ok=True)
    partial = f"{library}.{os.getpid()}.tmp"
    command = [
        compiler, "-O1", "-std=c++17", "-shared", "-fPIC",
        "-I", os.path.join(torch_dir, "include"), SOURCE,
        "-L", os.path.join(torch_dir, "lib"), "-lc10", "-ltorch_cpu", "-o", partial,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise FakeCudaError(f"compiling {SOURCE} failed ({' '.join(command)}):\n{result.stderr[-2000:]}")
    os.replace(partial, library)
    return library


def install() -> Optional[str]:
    """Build (if needed) and load the stand-in; call before ``import torch``. Returns the library's path, or None
    on a CUDA build of torch (nothing needed). Raises :class:`FakeCudaError` when torch was imported already."""
    global _loaded
    if _loaded is not None:
        return _loaded._name
    if not is_cpu_only_build():
        return None
    if "torch" in sys.modules:
        raise FakeCudaError(
            "fake CUDA must be installed before `import torch` (PyTorch creates its CUDA hooks once); call "
            "threestudio.profiling.fake_cuda.install() first, in a fresh process"
        )
    library = build()
    lib_dir = os.path.join(_torch_dir(), "lib")
    for name in ("libc10.so", "libtorch_cpu.so"):  # so that the library resolves against torch's own copies
        ctypes.CDLL(os.path.join(lib_dir, name), mode=ctypes.RTLD_GLOBAL)
    _loaded = ctypes.CDLL(library, mode=ctypes.RTLD_GLOBAL)
    return library


def active() -> bool:
    """Whether fake CUDA tensors can run a backward here: a CUDA build, or the stand-in loaded in time."""
    if not is_cpu_only_build():
        return True
    return _loaded is not None and bool(_loaded.zeronvs_fake_cuda_active())
