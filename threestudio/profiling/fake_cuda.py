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
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from typing import List, Optional

from threestudio.utils.errors import UserError

logger = logging.getLogger(__name__)

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "fake_cuda.cpp")
_loaded: Optional[ctypes.CDLL] = None


class FakeCudaError(UserError, RuntimeError):
    """The stand-in could not be built or loaded (no C++ compiler, torch already imported, ...): one line."""


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


def compiler_command() -> List[str]:
    """The C++ compiler as a command: ``$CXX`` split as a shell would (``ccache g++``), else ``g++`` or ``c++``.

    Raises:
        FakeCudaError: none found, or ``$CXX`` names a program that is not on ``PATH``.
    """
    cxx = os.environ.get("CXX", "").strip()
    if cxx:
        try:
            command = shlex.split(cxx)
        except ValueError as e:
            raise FakeCudaError(f"CXX={cxx!r} cannot be split into a command ({e})") from None
        if not command or shutil.which(command[0]) is None:
            raise FakeCudaError(f"CXX={cxx!r}: {command[0] if command else cxx!r} is not an installed program")
        return command
    found = shutil.which("g++") or shutil.which("c++")
    if found is None:
        raise FakeCudaError("no C++ compiler found (install g++ or set CXX); `bench.py trace` on a CPU build of "
                            "torch compiles a small fake-CUDA library")
    return [found]


def writable_cache(directory: str) -> str:
    """``directory`` when it is (or can be made) a writable folder; else a private temporary folder, with a
    one-line warning (a read-only ``$HOME``, a cache path that is a file)."""
    try:
        os.makedirs(directory, exist_ok=True)
        if os.path.isdir(directory) and os.access(directory, os.W_OK | os.X_OK):
            return directory
        problem = "not writable"
    except OSError as e:
        problem = e.strerror or str(e)
    fallback = os.path.join(tempfile.gettempdir(), f"zeronvs-fake_cuda-{os.getuid() if hasattr(os, 'getuid') else 0}")
    logger.warning("fake CUDA cache %s: %s; building in %s instead (set ZERONVS_CACHE_DIR to keep it)", directory,
                   problem, fallback)
    os.makedirs(fallback, mode=0o700, exist_ok=True)
    if not os.access(fallback, os.W_OK | os.X_OK):
        raise FakeCudaError(f"neither {directory} nor {fallback} can be written; set ZERONVS_CACHE_DIR to a folder "
                            "you can write")
    return fallback


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
    compiler = compiler_command()
    directory = writable_cache(directory)
    library = os.path.join(directory, f"fake_cuda_{digest}.so")
    if os.path.isfile(library):
        return library
    partial = f"{library}.{os.getpid()}.tmp"
    command = [
        *compiler, "-O1", "-std=c++17", "-shared", "-fPIC",
        "-I", os.path.join(torch_dir, "include"), SOURCE,
        "-L", os.path.join(torch_dir, "lib"), "-lc10", "-ltorch_cpu", "-o", partial,
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True)
    except OSError as e:
        raise FakeCudaError(f"cannot run the compiler {command[0]}: {e.strerror or e}") from None
    if result.returncode != 0:
        detail = " ".join(result.stderr.strip().splitlines()[-3:])[-400:]
        raise FakeCudaError(f"compiling {SOURCE} failed with {shlex.join(command[:1])}: {detail}")
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
