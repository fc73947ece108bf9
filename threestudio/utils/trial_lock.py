"""One run per trial folder at a time: an exclusive lock on ``TRIAL/.lock``.

The lock is an ``fcntl.flock`` on the file, which the kernel releases when the holder dies; the file keeps the
holder's pid, host and start time so that a second run can name it. It is opened without following a
symbolic link and only when it is a plain file with one link (the lock never truncates a file elsewhere).
A lock file left with content by a run that did not end cleanly (killed) is taken over with a warning.
Without ``fcntl`` (Windows) runs are not locked.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
import time
from typing import Iterator

from threestudio.utils.errors import UserError

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"


def _read(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 4096).decode(errors="replace").strip()


def _open_lock_file(path: str) -> int:
    """Open (or create) the lock file ``path``: never through a symbolic link, never a file linked elsewhere."""
    refused = (
        f"{path} is a symbolic link or a file with other hard links, not the trial's own lock file; "
        "remove it (a trial's files must not be links to files outside it)"
    )
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UserError(refused) from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        raise UserError(refused)
    return fd


@contextlib.contextmanager
def trial_lock(trial_dir: str, what: str = "trial", instead: str = "or choose another tag/name") -> Iterator[None]:
    """Hold the exclusive lock of ``trial_dir`` (which must exist) for the body.

    ``what`` / ``instead`` word the message for other folders (the eval scripts lock their ``--out`` with it).

    Raises:
        UserError: another live process holds it (the message names its pid, host and start time).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        logger.debug("no fcntl: trial %s is not locked", trial_dir)
        yield
        return
    fd = _open_lock_file(os.path.join(trial_dir, LOCK_NAME))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = _read(fd) or "a process that has not written its pid yet"
        os.close(fd)
        raise UserError(
            f"{what} {trial_dir} is in use by another run ({holder}); wait for it to end or stop it, {instead}"
        ) from None
    try:
        previous = _read(fd)
        if previous:
            logger.warning(
                "%s %s: taking over the stale lock of a run that did not end cleanly (%s)", what, trial_dir, previous
            )
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(
            fd, f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode()
        )
        os.fsync(fd)
        yield
    finally:
        # empty (not removed: removing a flocked file lets two runs lock two different files), then release
        os.ftruncate(fd, 0)
        os.close(fd)
