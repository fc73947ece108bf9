"""Atomic file writes: results appear under their final name only when complete.

A kill during writing leaves at most a hidden temporary file, never a partial result that looks finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str, mode: int = 0o644) -> Iterator[str]:
    """Yield a temporary path beside ``path`` (same extension); on success rename it over ``path``.

    The temporary file is removed when the body raises. Parent folders are created.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    base, ext = os.path.splitext(os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=f".tmp{ext}", dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes_atomic(path: str, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically (flushed to disk before the rename). Returns ``path``."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return path


def write_json_atomic(path: str, payload: Any) -> str:
    """Write ``payload`` as indented strict JSON (no NaN/inf) to ``path`` atomically. Returns ``path``."""
    text = json.dumps(payload, indent=2, allow_nan=False) + "\n"
    return write_bytes_atomic(path, text.encode())
