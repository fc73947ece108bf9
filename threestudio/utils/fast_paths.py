"""Optional CUDA fast paths (tiny-cuda-nn), chosen once per process.

``mode`` is ``"auto"`` (use a fast path when CUDA is available and its package imports) or ``"off"`` (always the
pure-PyTorch reference path, the one the tests exercise). The system sets it from ``system.fast_paths``. The
probes import the CUDA packages lazily, cache their answer and never raise: a broken install only logs a warning
and falls back to PyTorch.
"""

from __future__ import annotations

import importlib
import logging
from typing import Dict

from threestudio.utils.errors import ConfigError

logger = logging.getLogger(__name__)

FAST_PATH_MODES = ("auto", "off")

_mode: str = "auto"
_probe_cache: Dict[str, bool] = {}


def set_fast_paths(mode: str) -> None:
    """Choose ``"auto"`` or ``"off"`` for every component built after this call."""
    global _mode
    if mode not in FAST_PATH_MODES:
        raise ConfigError(f"fast_paths must be one of {', '.join(FAST_PATH_MODES)}, got {mode!r}")
    _mode = mode


def fast_paths_mode() -> str:
    """The current mode, ``"auto"`` or ``"off"``."""
    return _mode


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


def use_tcnn() -> bool:
    """True when tiny-cuda-nn encodings/networks should be used (mode auto, CUDA, ``tinycudann`` importable)."""
    return _mode == "auto" and _cuda_available() and _package_usable("tinycudann")
