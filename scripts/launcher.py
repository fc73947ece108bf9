"""Fan independent jobs (one scene each) out on local GPUs or SLURM with submitit.

:func:`run_jobs` takes ``(name, function, args)`` jobs and a :class:`LauncherConfig`:

- ``local``: submitit's ``LocalExecutor``, one process per job; at most one job per GPU of ``gpus`` at a time,
  each job seeing only its GPU (``CUDA_VISIBLE_DEVICES``); without GPUs, one job at a time on the CPU.
- ``slurm``: one SLURM job array (``executor.batch()``) with ``slurm_partition``, ``slurm_time`` and
  ``slurm_gpus_per_task``; submitit writes the sbatch script and each task's logs to ``folder``.

Every job's outcome comes back as a :class:`JobResult` (value, or the error of a job that raised or died), in the
order of the jobs, so one failed scene never stops the others. The functions and arguments are pickled
(cloudpickle) into ``folder``; ``python_path`` is prepended to the workers' ``PYTHONPATH``.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence, Tuple

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
    from tqdm.contrib.logging import logging_redirect_tqdm

    from threestudio.utils.progress import progress

    # one bar over the jobs (done/total, elapsed, ETA); log lines print above it; off under --quiet
    with progress(total=len(jobs), desc=f"{cfg.unit}s", unit=cfg.unit) as bar, logging_redirect_tqdm():
        if cfg.kind == "slurm":
            return _run_array(jobs, cfg, bar)
        return _run_local(jobs, cfg, bar)


def _run_local(jobs: Sequence[Job], cfg: LauncherConfig, bar: Any) -> List[JobResult]:
    import submitit

    slots: List[Optional[int]] = list(cfg.gpus) or [None]
    free = list(slots)
    queue = list(enumerate(jobs))
    running: dict = {}  # index → (job, slot)
    results: List[Optional[JobResult]] = [None] * len(jobs)
    while queue or running:
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
                results[index] = _result(jobs[index][0], job)
                _log_result(results[index])
                free.append(slot)
                del running[index]
                bar.update(1)
        if running:
            time.sleep(cfg.poll_s)
    return [r for r in results if r is not None]


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
    for (name, _, _), job in zip(jobs, submitted):
        results.append(_result(name, job))
        _log_result(results[-1])
        bar.update(1)
    return results


def _log_result(result: JobResult) -> None:
    if result.ok:
        logger.info("%s: finished (job %s)", result.name, result.job_id)
    else:
        logger.error("%s: failed (job %s): %s", result.name, result.job_id, result.error)
