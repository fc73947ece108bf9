"""Atomic file writes: results appear under their final name only when complete.

A kill during writing leaves at most a hidden temporary file, never a partial result that looks finished.
Inside :func:`confined_writes` (the runner holds it for a trial) no write below the trial's folder follows a
symbolic link out of it: a linked folder such as ``save/it4-test -> /elsewhere`` is refused with a
:class:`UnsafePathError`. A full disk while writing raises an ``OSError`` that names the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Iterator, List

from threestudio.utils.errors import UserError


class UnsafePathError(UserError):
    """A write inside a trial would follow a symbolic link out of it (or through a hard-linked file)."""


_WRITE_ROOTS: List[str] = []  # the folders whose writes must stay inside them (innermost last)


def _is_within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


@contextlib.contextmanager
def confined_writes(root: str) -> Iterator[None]:
    """While the body runs, writes (:func:`atomic_path`, :func:`ensure_folder`) to a path below ``root`` must
    resolve inside ``root``: a symbolic link that leads out of it is refused with :class:`UnsafePathError`."""
    _WRITE_ROOTS.append(os.path.abspath(root))
    try:
        yield
    finally:
        _WRITE_ROOTS.pop()


def check_confined(path: str) -> None:
    """Raise :class:`UnsafePathError` when ``path`` lies below a confined root but resolves outside it."""
    path = os.path.abspath(path)
    for root in _WRITE_ROOTS:
        if _is_within(path, root) and not _is_within(os.path.realpath(path), os.path.realpath(root)):
            raise UnsafePathError(
                f"{path} leads out of {root} through a symbolic link (to {os.path.realpath(path)}); nothing is "
                "written outside the trial: remove the link"
            )


def ensure_folder(path: str) -> str:
    """``os.makedirs(path, exist_ok=True)`` that never creates folders through a link out of a confined root."""
    check_confined(path)
    os.makedirs(path, exist_ok=True)
    return path


def links_leaving(folder: str) -> List[str]:
    """The symbolic links below ``folder`` (files or folders, not followed) whose targets lie outside it.

    (Hard links are not listed: atomic writes replace a file rather than write into it; the one file written in
    place before anything else, the trial's lock, refuses a hard-linked file itself.)
    """
    real_root = os.path.realpath(folder)
    found = []
    for top, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(top, name)
            if os.path.islink(path) and not _is_within(os.path.realpath(path), real_root):
                found.append(path)
    return found


def _naming(e: OSError, path: str, tmp: str) -> OSError:
    """``e`` naming ``path`` when it names no file or the temporary one (a full disk inside a library's writer)."""
    if e.filename in (None, tmp) and e.errno is not None and not isinstance(e, UnsafePathError):
        return OSError(e.errno, e.strerror or os.strerror(e.errno), path)
    return e


@contextlib.contextmanager
def atomic_path(path: str, mode: int = 0o644) -> Iterator[str]:
    """Yield a temporary path beside ``path`` (same extension); on success rename it over ``path``.

    The temporary file is removed when the body raises. Parent folders are created. The rename replaces a
    symbolic link at ``path`` itself, never the file it points to; inside :func:`confined_writes` a parent
    folder that is a link out of the confined root is refused. An ``OSError`` without a file name (e.g. a full
    disk inside an image writer) is raised again naming ``path``.
    """
    directory = os.path.dirname(os.path.abspath(path))
    ensure_folder(directory)
    base, ext = os.path.splitext(os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=f".tmp{ext}", dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as e:
        named = _naming(e, path, tmp)
        if named is e:
            raise
        raise named from None
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
