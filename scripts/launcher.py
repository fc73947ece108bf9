"""Fan independent jobs (one scene each) out on local GPUs or SLURM with submitit.

:func:`run_jobs` takes ``(name, function, args)`` jobs and a :class:`LauncherConfig`:

- ``local``: submitit's ``LocalExecutor``, one process per job; at most one job per GPU of ``gpus`` at a time,
  each job seeing only its GPU (``CUDA_VISIBLE_DEVICES``); without GPUs, one job at a time on the CPU.
- ``slurm``: one SLURM job array (``executor.batch()``) with ``slurm_partition``, ``slurm_time`` and
  ``slurm_gpus_per_task``; submitit writes the sbatch script and each task's logs to ``folder``.

Every job's outcome comes back as a :class:`JobResult` (value, or the error of a job that raised or died), in the
order of the jobs, so one failed scene never stops the others. The functions and arguments are pickled
(cloudpickle) into ``folder``; ``python_path`` is prepended to the workers' ``PYTHONPATH``.

Signals: a job starts its programs with :func:`run_child` (in their own session), which registers each one's pid
in ``folder/children/`` while it runs. Inside :func:`stop_signals` (the eval scripts hold it for their whole run)
SIGTERM, SIGHUP or SIGINT sent to the script is forwarded to every registered program, no new job starts, the
script waits until the running jobs and their programs have ended, then :class:`Interrupted` is raised (exit code
128 + signal). A job that ends after the signal is not counted. Not covered: SIGKILL of the script (its programs
run on), and SLURM jobs, which are cancelled with ``scancel`` rather than waited for.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from threestudio.utils.errors import UserError

logger = logging.getLogger(__name__)

LAUNCHERS = ("local", "slurm")
Job = Tuple[str, Callable[..., Any], tuple]


@dataclass
class LauncherConfig:
    kind: str = "local"  # local | slurm
    folder: str = "submitit"  # pickled jobs, submitit's logs and (slurm) the sbatch script
    gpus: List[int] = field(default_factory=list)  # local: one job per GPU at a time; empty: the CPU, one at a time
    timeout_min: int = 24 * 60
    slurm_partition: Optional[str] = None
    slurm_time: Optional[str] = None  # minutes, or [D-]HH:MM[:SS]
    slurm_gpus_per_task: int = 1
    slurm_array_parallelism: int = 64
    python_path: List[str] = field(default_factory=list)
    poll_s: float = 0.5
    cluster: Optional[str] = None  # submitit cluster override for tests ("debug"); None: from kind
    unit: str = "job"  # what a job is, for the progress bar ("scan", "scene")


@dataclass
class JobResult:
    name: str
    ok: bool
    value: Any = None
    error: str = ""
    job_id: str = ""


# ------------------------------------------------------------------------------------------------ signals
STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP", "SIGINT") if hasattr(signal, n))
CHILDREN_ENV = "THREESTUDIO_LAUNCHER_CHILDREN"  # the folder where jobs register the programs they run


class Interrupted(Exception):
    """The script was stopped by ``signum``; its running jobs (and their programs) have ended."""

    def __init__(self, signum: int, stopped: int = 0) -> None:
        super().__init__(signal_name(signum))
        self.signum = signum
        self.exit_code = 128 + int(signum)
        self.stopped = stopped  # jobs that were running when the signal came


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _start_time(pid: int) -> Optional[str]:
    """The start time of process ``pid`` (Linux ``/proc``; None elsewhere or when it is gone or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def _alive(pid: int, start: Optional[str]) -> bool:
    """Whether ``pid`` is still the registered program (same start time) and not a zombie."""
    if os.path.isdir("/proc"):
        return start is not None and _start_time(pid) == start
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _registered(folder: str) -> Dict[int, Optional[str]]:
    """pid → start time of the programs registered in ``folder`` (by :func:`run_child`)."""
    found: Dict[int, Optional[str]] = {}
    try:
        names = os.listdir(folder)
    except OSError:
        return found
    for name in names:
        try:
            with open(os.path.join(folder, name)) as f:
                pid, start = (f.read().split() + ["", ""])[:2]
            found[int(pid)] = start or None
        except (OSError, ValueError):
            continue
    return found


_child_signal: List[int] = []  # in a job: the signals this process received while its program ran


def run_child(cmd: Sequence[str], **popen: Any) -> int:
    """Run ``cmd`` (``subprocess.Popen`` keyword arguments) in its own session and wait for it; returns its exit
    code (negative: killed by that signal).

    While it runs, its pid is registered in the folder named by ``$THREESTUDIO_LAUNCHER_CHILDREN`` (when set), so
    that the script that started the job can forward a signal to it, and the first SIGTERM / SIGHUP / SIGINT this
    process receives is forwarded to it (a job keeps waiting for its program rather than leaving it running).
    """
    folder = os.environ.get(CHILDREN_ENV)
    started: List[subprocess.Popen] = []

    def forward(signum: int, frame: Any) -> None:
        if not _child_signal and started:
            with contextlib.suppress(OSError):
                started[0].send_signal(signum)
        _child_signal.append(signum)

    previous = {}
    try:  # before the program starts: a signal in between is forwarded once it runs
        for signum in STOP_SIGNALS:
            previous[signum] = signal.signal(signum, forward)
    except ValueError:  # not the main thread
        pass
    record = None
    try:
        process = subprocess.Popen(list(cmd), start_new_session=True, **popen)
        started.append(process)
        if _child_signal:
            with contextlib.suppress(OSError):
                process.send_signal(_child_signal[0])
        if folder:
            os.makedirs(folder, exist_ok=True)
            record = os.path.join(folder, f"{process.pid}.pid")
            with open(record, "w") as f:
                f.write(f"{process.pid} {_start_time(process.pid) or ''}\n")
        return process.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if record is not None:
            with contextlib.suppress(OSError):
                os.remove(record)


def stopped_by_signal() -> Optional[int]:
    """In a job: the signal this process received while a program of :func:`run_child` ran (None: none)."""
    return _child_signal[0] if _child_signal else None


class _Stop:
    """The state of :func:`stop_signals`: the signal received, the children folder of the running job loop."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.children: Optional[str] = None  # set while run_jobs waits on local jobs
        self.sent: Dict[int, Optional[str]] = {}

    def handle(self, signum: int, frame: Any) -> None:
        first = self.signum is None
        self.signum = self.signum or signum
        if self.children is None:
            raise Interrupted(signum)
        if first:
            logger.warning("received %s: forwarding it to the running jobs and waiting for them to stop",
                           signal_name(signum))
        self.forward(signum, again=not first)

    def forward(self, signum: int, again: bool = False) -> None:
        """Send ``signum`` to the registered programs not sent one yet (``again``: to all of them)."""
        for pid, start in _registered(self.children or "").items():
            if (again or (pid, start) not in self.sent.items()) and _alive(pid, start):
                with contextlib.suppress(OSError):
                    os.kill(pid, signum)
                self.sent[pid] = start


_STOP: List[_Stop] = []


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """For the body (main thread): SIGTERM, SIGHUP and SIGINT raise :class:`Interrupted`, after :func:`run_jobs`
    forwarded them to its jobs' programs and waited for them. The previous handlers come back after it."""
    stop = _Stop()
    previous = {}
    try:
        for signum in STOP_SIGNALS:
            previous[signum] = signal.signal(signum, stop.handle)
    except ValueError:  # not the main thread: signals stay as they are
        previous = {}
    _STOP.append(stop)
    try:
        yield
    finally:
        _STOP.pop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def parse_gpus(text: Optional[str]) -> List[int]:
    """``"0,1,2,3"`` → [0, 1, 2, 3]; empty/None → []. Raises UserError for anything else."""
    if not text:
        return []
    try:
        gpus = [int(g) for g in text.split(",") if g.strip()]
    except ValueError:
        raise UserError(f"--gpus takes comma-separated GPU indices such as 0,1,2,3, got {text!r}") from None
    if any(g < 0 for g in gpus) or len(set(gpus)) != len(gpus):
        raise UserError(f"--gpus must list distinct non-negative GPU indices, got {text!r}")
    return gpus


def parse_slurm_time(text: Optional[str]) -> Optional[int]:
    """A SLURM time limit in its own formats (``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``) →
    whole minutes (at least 1); None stays None."""
    if text is None:
        return None
    match = re.fullmatch(r"(?:(\d+)-)?(\d+(?::\d+){0,2})", text.strip())
    if not match:
        raise UserError(f"--slurm-time takes a SLURM time limit (minutes, H:M:S or D-H:M), got {text!r}")
    days, rest = match.groups()
    parts = [float(p) for p in rest.split(":")]
    if days is None:
        units = {1: (1.0,), 2: (1.0, 1 / 60), 3: (60.0, 1.0, 1 / 60)}[len(parts)]
    else:
        units = (60.0, 1.0, 1 / 60)[: len(parts)]
    minutes = sum(p * u for p, u in zip(parts, units)) + float(days or 0) * 24 * 60
    if minutes <= 0:
        raise UserError(f"--slurm-time must be positive, got {text!r}")
    return max(1, round(minutes))


def _environment(cfg: LauncherConfig) -> None:
    if cfg.python_path:
        parts = [*cfg.python_path, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))


def _result(name: str, job: Any) -> JobResult:
    try:
        return JobResult(name, True, job.result(), job_id=str(job.job_id))
    except Exception as e:  # a raising job, a killed process, a failed SLURM task
        return JobResult(name, False, error=_error_line(str(e)) or type(e).__name__, job_id=str(job.job_id))


def _error_line(text: str) -> str:
    """The exception line of a submitit failure (its traceback's last ``SomeError: ...``), else its first line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"^[\w.]*(Error|Exception|Exit|Interrupt)\b", line)]
    return (raised[-1] if raised else lines[0] if lines else "")[:500]


def run_jobs(jobs: Sequence[Job], cfg: LauncherConfig) -> List[JobResult]:
    """Run every ``(name, function, args)`` job with the launcher of ``cfg``; results in the order of ``jobs``."""
    if cfg.kind not in LAUNCHERS:
        raise UserError(f"unknown launcher {cfg.kind!r}; valid: {', '.join(LAUNCHERS)}")
    if not jobs:
        return []
    _environment(cfg)
    os.makedirs(cfg.folder, exist_ok=True)
    os.environ[CHILDREN_ENV] = os.path.abspath(os.path.join(cfg.folder, "children"))
    from tqdm.contrib.logging import logging_redirect_tqdm

    from threestudio.utils.progress import progress

    # one bar over the jobs (done/total, elapsed, ETA); log lines print above it; off under --quiet
    with progress(total=len(jobs), desc=f"{cfg.unit}s", unit=cfg.unit) as bar, logging_redirect_tqdm():
        if cfg.kind == "slurm":
            return _run_array(jobs, cfg, bar)
        return _run_local(jobs, cfg, bar)


def _run_local(jobs: Sequence[Job], cfg: LauncherConfig, bar: Any) -> List[JobResult]:
    slots: List[Optional[int]] = list(cfg.gpus) or [None]
    free = list(slots)
    queue = list(enumerate(jobs))
    running: dict = {}  # index → (job, slot)
    results: List[Optional[JobResult]] = [None] * len(jobs)
    stop = _STOP[-1] if _STOP else None
    if stop is not None:
        stop.children = os.environ[CHILDREN_ENV]
    try:
        queue_left = _local_loop(jobs, cfg, bar, queue, free, running, results, stop)
    finally:
        if stop is not None:
            stop.children = None
    if stop is not None and stop.signum is not None:
        started = len(jobs) - len(queue_left)
        raise Interrupted(stop.signum, stopped=started - sum(r is not None for r in results))
    return [r for r in results if r is not None]


def _local_loop(jobs: Sequence[Job], cfg: LauncherConfig, bar: Any, queue: list, free: list, running: dict,
                results: list, stop: Optional[_Stop]) -> list:
    """Start queued jobs on free slots and collect finished ones until none is left; after a signal, start none,
    keep forwarding it to new programs, and wait for the running jobs and the registered programs to end.
    Returns the jobs never started."""
    never_started: list = []
    import submitit

    while queue or running:
        if stop is not None and stop.signum is not None:
            never_started += queue
            queue.clear()
            stop.forward(stop.signum)
        while queue and free:
            index, (name, fn, args) = queue.pop(0)
            slot = free.pop(0)
            executor = submitit.LocalExecutor(folder=cfg.folder)
            gpu_params = {"gpus_per_node": 1, "visible_gpus": [slot]} if slot is not None else {"gpus_per_node": 0}
            executor.update_parameters(timeout_min=cfg.timeout_min, **gpu_params)
            job = executor.submit(fn, *args)
            where = f"GPU {slot}" if slot is not None else "the CPU"
            logger.info("%s: started on %s (submitit job %s, logs in %s)", name, where, job.job_id, cfg.folder)
            running[index] = (job, slot)
            bar.set_postfix_str("running: " + ", ".join(jobs[i][0] for i in running))
        for index, (job, slot) in list(running.items()):
            if job.done():
                if stop is None or stop.signum is None:  # a job that ends after a signal is not counted
                    results[index] = _result(jobs[index][0], job)
                    _log_result(results[index])
                    bar.update(1)
                free.append(slot)
                del running[index]
        if running:
            time.sleep(cfg.poll_s)
    while stop is not None and stop.signum is not None and any(
        _alive(pid, start) for pid, start in _registered(stop.children or "").items()
    ):  # programs whose job died before them (e.g. killed by its controller)
        stop.forward(stop.signum)
        time.sleep(cfg.poll_s)
    return never_started


def _run_array(jobs: Sequence[Job], cfg: LauncherConfig, bar: Any) -> List[JobResult]:
    import submitit

    executor = submitit.AutoExecutor(folder=cfg.folder, cluster=cfg.cluster or "slurm")
    params: dict = {"timeout_min": parse_slurm_time(cfg.slurm_time) or cfg.timeout_min,
                    "gpus_per_node": cfg.slurm_gpus_per_task, "tasks_per_node": 1,
                    "slurm_array_parallelism": cfg.slurm_array_parallelism}
    if cfg.slurm_partition:
        params["slurm_partition"] = cfg.slurm_partition
    executor.update_parameters(**params)
    with executor.batch():
        submitted = [executor.submit(fn, *args) for _, fn, args in jobs]
    logger.info("submitted %d job(s) as one array (%s); sbatch script and logs in %s", len(jobs),
                submitted[0].job_id if submitted else "-", os.path.abspath(cfg.folder))
    results = []
    try:
        for (name, _, _), job in zip(jobs, submitted):
            results.append(_result(name, job))
            _log_result(results[-1])
            bar.update(1)
    except Interrupted:
        for job in submitted:
            with contextlib.suppress(Exception):
                job.cancel(check=False)
        logger.warning("cancelled the SLURM jobs that had not finished (scancel)")
        raise
    return results


def _log_result(result: JobResult) -> None:
    if result.ok:
        logger.info("%s: finished (job %s)", result.name, result.job_id)
    else:
        logger.error("%s: failed (job %s): %s", result.name, result.job_id, result.error)
