"""Optional fast paths (tiny-cuda-nn, the Triton kernels of :mod:`threestudio.kernels`), chosen at run time.

The mode is ``"auto"`` (use a fast path when it can run here) or ``"off"`` (always the pure-PyTorch reference path,
the one the tests exercise). There is no process-wide mode: the system parses ``system.fast_paths`` with
:func:`parse_fast_paths` and passes it to the components it builds (geometry, renderer), which pass it on to their
encodings and compositing. The probes import optional packages lazily, cache their answer and never raise: a broken
install logs one line and falls back to PyTorch.

Triton kernels (:func:`triton_kernels`) are used in mode auto on CUDA tensors when ``triton`` imports and the
kernel module's one-time self-check on that device (a small batch compared with the reference) passes; otherwise
one log line says why and the reference runs. :func:`admit_interpreted_kernels` lets them take CPU tensors through
Triton's interpreter (``TRITON_INTERPRET=1``): for tests and kernel development only, never for speed.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType
from typing import Any, Dict, Optional, Tuple

from threestudio.utils.errors import ConfigError

logger = logging.getLogger(__name__)

FAST_PATH_MODES = ("auto", "off")

_probe_cache: Dict[str, bool] = {}
# (kernel name, device) -> the kernel module, or None when it cannot be used there
_kernel_cache: Dict[Tuple[str, str], Optional[ModuleType]] = {}
# one line per reason (e.g. "no CUDA") rather than one per kernel
_logged_reasons: set = set()
_admit_cpu = False  # admit_interpreted_kernels()


def reset_selection() -> None:
    """Forget every kernel choice and logged reason (the next call decides and logs again)."""
    _kernel_cache.clear()
    _logged_reasons.clear()


def admit_interpreted_kernels(enabled: bool = True) -> None:
    """Let :func:`triton_kernels` hand out kernels for CPU tensors, run by Triton's interpreter (set
    ``TRITON_INTERPRET=1`` before ``triton`` is first imported; ``tests/conftest.py`` does). For the kernel tests
    and kernel development only: interpreted kernels are slow. Resets the selection (:func:`reset_selection`)."""
    global _admit_cpu
    _admit_cpu = bool(enabled)
    reset_selection()


def interpreted_kernels_admitted() -> bool:
    """Whether :func:`admit_interpreted_kernels` is on."""
    return _admit_cpu


def parse_fast_paths(value: Any, key: str = "system.fast_paths") -> str:
    """``"auto"`` or ``"off"`` from a config value (YAML reads a bare ``off`` as false and ``on`` as true)."""
    mode = {"false": "off", "off": "off", "auto": "auto", "true": "auto"}.get(str(value).lower())
    if mode is None:
        raise ConfigError(f"{key} must be one of {', '.join(FAST_PATH_MODES)}, got {value!r}")
    return mode


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # pragma: no cover - a broken torch install
        return False


def _package_usable(module_name: str) -> bool:
    """Whether ``module_name`` imports (cached; failures are logged once, never raised)."""
    if module_name not in _probe_cache:
        try:
            importlib.import_module(module_name)
            _probe_cache[module_name] = True
        except Exception as e:  # ImportError, but also CUDA/ABI errors raised at import time
            if not isinstance(e, ImportError):
                logger.warning("%s is installed but failed to import (%s); using the PyTorch path", module_name, e)
            _probe_cache[module_name] = False
    return _probe_cache[module_name]


def use_tcnn(mode: str) -> bool:
    """True when tiny-cuda-nn encodings/networks should be used (mode auto, CUDA, ``tinycudann`` importable)."""
    return parse_fast_paths(mode) == "auto" and _cuda_available() and _package_usable("tinycudann")



def _device_supported(device: Any) -> bool:
    """Devices the Triton kernels run on: CUDA, and any device after :func:`admit_interpreted_kernels`."""
    return _admit_cpu or str(getattr(device, "type", device)).split(":")[0] == "cuda"


def _log_once(reason: str) -> None:
    if reason not in _logged_reasons:
        _logged_reasons.add(reason)
        logger.info("fast paths: %s; using the PyTorch reference", reason)


def triton_kernels(name: str, mode: str, device: Any) -> Optional[ModuleType]:
    """The Triton kernel module ``name`` (see :data:`threestudio.kernels.KERNELS`) when it may run on ``device``:
    mode auto, a CUDA device, ``triton`` importable and the module's ``self_check(device)`` passed (once per
    device, cached). Otherwise None, after one log line saying why."""
    if parse_fast_paths(mode) == "off":
        return None
    if not _device_supported(device):
        _log_once(f"Triton kernels run on CUDA devices only (tensors on {device})")
        return None
    key = (name, str(device))
    if key not in _kernel_cache:
        _kernel_cache[key] = _load_checked_kernels(name, device)
    return _kernel_cache[key]


def _load_checked_kernels(name: str, device: Any) -> Optional[ModuleType]:
    from threestudio.kernels import KERNELS  # light: names only, no Triton

    if not _package_usable("triton"):
        _log_once("Triton does not import")
        return None
    try:
        module = importlib.import_module(KERNELS[name])
        module.self_check(device)
    except Exception as e:  # a compiler error, an unsupported GPU, a mismatch with the reference
        _log_once(f"the Triton {name} kernels failed their self-check on {device} ({type(e).__name__}: {e})")
        return None
    logger.info("fast paths: Triton %s kernels passed their self-check on %s", name, device)
    return module


def triton_kernel_status() -> Dict[str, bool]:
    """Which Triton kernel modules were asked for so far, as ``{"name@device": usable}`` (for benchmarks' reports)."""
    return {f"{name}@{device}": module is not None for (name, device), module in sorted(_kernel_cache.items())}
