"""Reading ``torch.save`` files without running code from them (used by every checkpoint read of the project).

Unpickling a file can run any code it contains (a ``__reduce__`` that calls ``os.system``). Every checkpoint the
project reads goes through :func:`load_torch_file`: ``torch.load(weights_only=True)`` with an allow-list of the
harmless classes that legitimate Lightning / latent-diffusion checkpoints hold besides tensors (numpy scalars and
arrays, OmegaConf containers, Lightning's ``AttributeDict`` as a dict, paths). Anything else is refused with a one-line
:class:`UnsafeCheckpointError` unless the caller passes ``trust=True`` (an explicit user flag).
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import re
import warnings
import zipfile
from typing import Any, List, Optional, Type

from zeronvs_diffusion.errors import UserError

logger = logging.getLogger(__name__)

TRUST_RISK = "full unpickling runs any code the file holds: only for files from a source you trust"


class UnsafeCheckpointError(UserError):
    """The file holds Python objects that only full (code-running) unpickling can rebuild."""


# Lightning's AttributeDict (a dict with attribute access) in hyper_parameters: unpickled as a plain dict
_ATTRIBUTE_DICT_NAMES = (
    "lightning.fabric.utilities.data.AttributeDict",
    "lightning.pytorch.utilities.parsing.AttributeDict",
    "pytorch_lightning.utilities.parsing.AttributeDict",
)


@functools.lru_cache(maxsize=1)
def safe_globals() -> List[Any]:
    """The classes and functions allowed while unpickling, beyond what ``weights_only`` allows by default."""
    import argparse
    import builtins
    import collections
    import pathlib
    import typing

    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray

    allowed: List[Any] = [
        np.ndarray,
        np.dtype,
        (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
        (multiarray._reconstruct, "numpy._core.multiarray._reconstruct"),
        (multiarray.scalar, "numpy.core.multiarray.scalar"),
        (multiarray.scalar, "numpy._core.multiarray.scalar"),
        argparse.Namespace,
        collections.defaultdict,
        typing.Any,
        pathlib.PosixPath,
        pathlib.WindowsPath,
        pathlib.PurePosixPath,
        pathlib.PureWindowsPath,
    ]
    allowed += [getattr(builtins, n) for n in ("dict", "list", "tuple", "set", "frozenset", "int", "float", "str")]
    allowed += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    try:
        from omegaconf import DictConfig, ListConfig, base, nodes

        allowed += [DictConfig, ListConfig, base.Metadata, base.ContainerMetadata]
        allowed += [getattr(nodes, n) for n in ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode")]
    except ImportError:  # pragma: no cover - omegaconf is a requirement
        pass
    for name in _ATTRIBUTE_DICT_NAMES:
        allowed.append((dict, name))
    return allowed


def check_readable_file(path: str, what: str, error: Type[UserError] = UserError) -> None:
    """Raise ``error`` when ``path`` is missing, a folder or empty (``what`` names the file in the message)."""
    if os.path.isdir(path):
        raise error(f"{what} {path} is a folder; expected a checkpoint file (e.g. {os.path.join(path, 'last.ckpt')})")
    if not os.path.isfile(path):
        raise error(f"{what} not found: {path}")
    if os.path.getsize(path) == 0:
        raise error(f"{what} {path} is empty (0 bytes)")


def _reason(e: BaseException) -> str:
    """The informative line of a torch.load error (torch puts generic advice first)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    specific = [ln for ln in lines if ln.startswith(("Unsupported", "Trying to load")) or "failed reading" in ln]
    return (specific or lines or [type(e).__name__])[0][:200]


def _load(path: str, weights_only: bool, mmap: bool) -> Any:
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=mmap)


def load_torch_file(
    path: str,
    what: str = "checkpoint",
    trust: bool = False,
    trust_hint: Optional[str] = None,
    mmap: Optional[bool] = None,
    error: Type[UserError] = UserError,
) -> Any:
    """``torch.load(path)`` on the CPU that never runs code from the file unless ``trust`` is True.

    Args:
        what: names the file in messages ("resume checkpoint", "system.weights checkpoint", ...).
        trust: the user opted in to full unpickling (logged as a warning with what it risks).
        trust_hint: how the user opts in (e.g. ``system.guidance.trust_checkpoint=true``); None: no opt-in exists.
        mmap: memory-map the tensors (zip files only); None = when the file is a zip archive.
        error: the :class:`UserError` subclass raised for unreadable files.

    Raises:
        UnsafeCheckpointError: the file needs a class outside the allow-list and ``trust`` is False.
        error: missing, empty, truncated, corrupt or not a ``torch.save`` file.
    """
    check_readable_file(path, what, error)
    is_zip = zipfile.is_zipfile(path)  # every torch.save since 1.6 writes a zip; older files are a pickle stream
    if not is_zip:
        with open(path, "rb") as f:
            head = f.read(1)
        if head != b"\x80":  # pickle protocol ≥ 2, as torch.save writes
            raise error(f"{what} {path} is not a readable PyTorch checkpoint (truncated or corrupt, or another format)")
    mmap = is_zip if mmap is None else (mmap and is_zip)
    try:
        return _load(path, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found is None:
            raise error(f"cannot read {what} {path} (truncated or corrupt? {_reason(e)})") from None
        if not trust:
            opt_in = f"; if you trust the file and its source, pass {trust_hint} ({TRUST_RISK})" if trust_hint else ""
            raise UnsafeCheckpointError(
                f"{what} {path} holds a Python object ({found.group(1)}) that only full unpickling can rebuild, "
                f"and unpickling can run any code the file contains: refusing to load it{opt_in}"
            ) from None
    except Exception as e:  # torch raises RuntimeError, KeyError, EOFError, ValueError, ... for damaged files
        raise error(f"cannot read {what} {path} (truncated or corrupt? {_reason(e)})") from None
    logger.warning("%s %s: loading with full unpickling as asked (%s)", what, path, TRUST_RISK)
    try:
        return _load(path, weights_only=False, mmap=mmap)
    except Exception as e:
        raise error(f"cannot read {what} {path} (truncated or corrupt? {_reason(e)})") from None
