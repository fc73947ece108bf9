#!/usr/bin/env python
"""Evaluate novel view synthesis on DTU scans with ZeroNVS's protocol; write per-scan and mean metrics.

Protocol (ZeroNVS's launch_eval_dtu.sh, pixelNeRF's DTU split): the 15 scans 8 21 30 31 34 38 40 41 45 55 63 82 103
110 114, input view 25, targets = every view except 25 and 3–7, 16–21, 36–39 (33 views), poses relative to the
input camera (elevation 20°, distance 1) with translations divided by 2.02 · ``manual_gt_to_pred_scale`` of the
scan (``MANUAL_GT_TO_PRED_SCALE``; ``--gt-to-pred-scale`` overrides it). Scan folders ``ROOT/dtu_scan{N}`` (or
pixelNeRF's ``ROOT/scan{N}``) in the IDR/NeuS layout (``image/``, ``cameras.npz``). Modes, one or two
``launch.py`` runs per scan (subprocesses):

- ``sds``: ZeroNVS's own result — the zeronvs-system distils a NeRF from view 25 by SDS with
  ``configs/zeronvs_dtu.yaml`` (the paper pipeline with zero123_scene.yaml's DTU settings: guidance scale 7.5, no
  anisotropic schedule, near 0.25 / far 100, reference view 400×300, black background, ``lambda_opaque`` 0.1, 4000
  steps) and its test pass renders the targets at 400×300 and scores them. Scales: the table (default), pose scale
  1 / (2.02 · scale).
- ``nvs``: the diffusion model sampled directly (``configs/zeronvs_nvs.yaml``, ``--test``); scale 1 unless given.
- ``nvs+nerf``: the ``nvs`` run, then a NeRF (``configs/nerf_multiview.yaml``) trained on view 25 plus the
  generated target views (``data.generated_views_dir``, weight ``data.generated_weight``), tested on the targets.

Writes ``OUT/dtu_{mode}.md`` and ``OUT/dtu_{mode}.csv`` (one row per scan: PSNR, SSIM, LPIPS, number of target
views, scales, run folder, and the per-scene numbers the ZeroNVS README expects from its SDS protocol; then the mean
over the scans that finished), run folders under ``OUT/runs/`` and logs under ``OUT/logs/``. Exit code 0 when
every scan finished, 1 otherwise. SIGTERM, SIGHUP or SIGINT (Ctrl-C) is forwarded to the running launch.py runs,
which the script waits for, then it exits 143 / 129 / 130 with one line. A run that a signal stopped, or that left no
``metrics.json``, is a failure naming the signal; a stage is finished only when its completion marker
(``eval_dtu_stage_done.json`` in its run folder) is written, last. ``--dry-run`` prints the launch.py command
lines and runs nothing.

Scans run through submitit (``scripts/launcher.py``): ``--launcher local`` runs them in parallel, one
process per GPU of ``--gpus 0,1,2,3`` (no GPUs: one at a time on the CPU); ``--launcher slurm`` submits one job
array (``--slurm-partition``, ``--slurm-time``, ``--slurm-gpus-per-task``; sbatch script and logs in
``OUT/submitit/``). A failed scan is listed as failed, the others still count. A rerun skips scans whose last
stage finished (``--force`` redoes them) and replaces the run folders of the scans it redoes.

    python scripts/eval_dtu.py --root DTU --mode sds --out eval_dtu --ckpt zeronvs.ckpt \\
        --model-config zeronvs_config.yaml [--scans 8 21] [--gt-to-pred-scale 8=1.3] [--dry-run]

``--steps`` sets the DDIM steps of ``nvs`` and the training steps of ``sds`` / the NeRF of ``nvs+nerf`` (for
quick checks); ``--extra`` overrides are appended to every launch.py run (they win over this script's own:
explicit ``data.input_views`` / ``data.target_views`` — ``data.scene.*`` in ``sds`` mode — win over the protocol's
excluded views, with a warning).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch.py")
if ROOT not in sys.path:  # run as a script: make the repository's packages importable
    sys.path.insert(0, ROOT)
SCRIPTS = os.path.dirname(os.path.abspath(__file__))
if SCRIPTS not in sys.path:  # launcher.py beside this script (also when imported from elsewhere)
    sys.path.insert(0, SCRIPTS)
NVS_CONFIG = os.path.join(ROOT, "configs", "zeronvs_nvs.yaml")
NERF_CONFIG = os.path.join(ROOT, "configs", "nerf_multiview.yaml")
SDS_CONFIG = os.path.join(ROOT, "configs", "zeronvs_dtu.yaml")

from launcher import LAUNCHERS  # noqa: E402  (after the sys.path line)

INPUT_VIEW = 25
EXCLUDED_VIEWS = [3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 36, 37, 38, 39]
N_VIEWS = 49
DTU_SCALE = 2.02  # ZeroNVS's view_synthesis.scale: DTU translations are divided by it
DEFAULT_POSE_SCALE = 1.0 / DTU_SCALE
MODES = ("nvs", "sds", "nvs+nerf")
# launch_eval_dtu.sh: the scans and their manual_gt_to_pred_scale
PROTOCOL_SCANS = [8, 21, 30, 31, 34, 38, 40, 41, 45, 55, 63, 82, 103, 110, 114]
MANUAL_GT_TO_PRED_SCALE = dict(
    zip(PROTOCOL_SCANS, [1.2, 1.4, 1.5, 1.4, 1.4, 1.3, 1.2, 1.3, 1.4, 1.2, 1.5, 1.5, 1.5, 1.3, 1.3])
)
# the per-scene results the ZeroNVS README expects from its SDS protocol: scan -> (PSNR, SSIM, LPIPS)
PAPER_SDS_RESULTS = {
    8: (13.2329, 0.6094, 0.2988), 21: (8.4278, 0.1739, 0.5783), 30: (14.1864, 0.6311, 0.2332),
    31: (8.9569, 0.2992, 0.5117), 34: (14.0490, 0.3862, 0.3611), 38: (12.6771, 0.3495, 0.4659),
    40: (12.2447, 0.4612, 0.3729), 41: (12.5998, 0.4657, 0.3794), 45: (11.2410, 0.3690, 0.4441),
    55: (17.0177, 0.4456, 0.4322), 63: (12.6056, 0.5724, 0.2639), 82: (12.1564, 0.5384, 0.2725),
    103: (16.0902, 0.5434, 0.3811), 110: (19.5588, 0.6353, 0.3490), 114: (18.2336, 0.5529, 0.3613),
}

logger = logging.getLogger("eval_dtu")


def protocol_targets() -> List[int]:
    """The target views of the protocol: all but the input view and the excluded ones."""
    return [i for i in range(N_VIEWS) if i != INPUT_VIEW and i not in EXCLUDED_VIEWS]


def parse_scan_values(
    values: Optional[Sequence[str]], scans: Sequence[int], defaults: Dict[int, float], option: str
) -> Dict[int, float]:
    """``option`` values: one number for every scan, or ``SCAN=VALUE`` pairs over ``defaults`` (scan -> value)."""
    out = {scan: defaults[scan] for scan in scans}
    if not values:
        return out
    if len(values) == 1 and "=" not in values[0]:
        return {scan: _positive(values[0], option) for scan in scans}
    for item in values:
        if "=" not in item:
            raise SystemExit(f"error: {option} takes one number or SCAN=VALUE pairs, got {item!r}")
        scan, value = item.split("=", 1)
        if not scan.strip().isdigit() or int(scan) not in out:
            raise SystemExit(f"error: {option} {item!r}: scan {scan} is not in --scans")
        out[int(scan)] = _positive(value, option)
    return out


def parse_pose_scales(values: Optional[Sequence[str]], scans: Sequence[int]) -> Dict[int, float]:
    """``--pose-scale``: one number for every scan, or ``SCAN=VALUE`` pairs (the others get 1/2.02)."""
    return parse_scan_values(values, scans, {scan: DEFAULT_POSE_SCALE for scan in scans}, "--pose-scale")


def scan_scales(args: argparse.Namespace) -> Dict[int, Dict[str, float]]:
    """Per scan: ``gt_to_pred_scale`` and the ``pose_scale`` it gives, 1 / (2.02 · gt_to_pred_scale).

    ``sds`` defaults to ZeroNVS's table (1.0, with a warning, for a scan not in it), the other modes to 1.0;
    ``--gt-to-pred-scale`` overrides; ``--pose-scale`` sets the pose scale directly and wins.
    """
    if args.mode == "sds":
        for scan in args.scans:
            if scan not in MANUAL_GT_TO_PRED_SCALE:
                logger.warning("scan %d has no manual_gt_to_pred_scale in ZeroNVS's table: using 1.0", scan)
        defaults = {scan: MANUAL_GT_TO_PRED_SCALE.get(scan, 1.0) for scan in args.scans}
    else:
        defaults = {scan: 1.0 for scan in args.scans}
    gt_to_pred = parse_scan_values(args.gt_to_pred_scale, args.scans, defaults, "--gt-to-pred-scale")
    pose = {scan: DEFAULT_POSE_SCALE / gt_to_pred[scan] for scan in args.scans}
    if args.pose_scale:
        pose = parse_scan_values(args.pose_scale, args.scans, pose, "--pose-scale")
    return {scan: {"gt_to_pred_scale": gt_to_pred[scan], "pose_scale": pose[scan]} for scan in args.scans}


def _positive(text: str, option: str = "--pose-scale") -> float:
    try:
        value = float(text)
    except ValueError:
        raise SystemExit(f"error: {option} value {text!r} is not a number") from None
    if not value > 0:
        raise SystemExit(f"error: {option} must be positive, got {value}")
    return value


def _list(values: Sequence[int]) -> str:
    return "[" + ",".join(str(v) for v in values) + "]"


def scene_dir(root: str, scan: int) -> str:
    """``ROOT/dtu_scan{N}``, or pixelNeRF's ``ROOT/scan{N}`` when only that exists."""
    ours = os.path.join(os.path.abspath(root), f"dtu_scan{scan}")
    pixelnerf = os.path.join(os.path.abspath(root), f"scan{scan}")
    return pixelnerf if not os.path.isdir(ours) and os.path.isdir(pixelnerf) else ours


def check_scenes(root: str, scans: Sequence[int]) -> Optional[str]:
    """One line saying what is wrong with ``--root`` / ``--scans`` (a missing folder, scans without a scene folder
    or without ``cameras.npz``), or None; checked before anything runs, ``--dry-run`` included."""
    if not os.path.isdir(root):
        return f"--root {root} is not a folder (it should hold dtu_scan{{N}} or scan{{N}} scene folders)"
    missing = [scan for scan in scans if not os.path.isdir(scene_dir(root, scan))]
    if missing:
        return (f"no scene folder for scan(s) {' '.join(map(str, missing))} under {root} (expected dtu_scan{{N}} or "
                "scan{N}); pass --scans with the scans you have")
    no_cameras = [scan for scan in scans if not os.path.isfile(os.path.join(scene_dir(root, scan), "cameras.npz"))]
    if no_cameras:
        return f"no cameras.npz in the scene folder of scan(s) {' '.join(map(str, no_cameras))} under {root}"
    return None


def _model_overrides(args: argparse.Namespace, section: str = "system.guidance") -> List[str]:
    """``--ckpt`` / ``--model-config`` as overrides of the model section (``system.guidance`` of the SDS system,
    ``system.diffusion_model`` of nvs-system)."""
    out = []
    if args.ckpt:
        ckpt = args.ckpt if args.ckpt == "random" else os.path.abspath(args.ckpt)  # "random": tiny test models
        out.append(f"{section}.pretrained_model_name_or_path={ckpt}")
    if args.model_config:
        out.append(f"{section}.pretrained_config={os.path.abspath(args.model_config)}")
    return out


@dataclass
class LaunchRun:
    """One launch.py run of a scan: its command line, trial folder and log file."""

    cmd: List[str]
    trial: str
    log: str

    @property
    def save(self) -> str:
        return os.path.join(self.trial, "save")


def _launch_run(config: str, mode_flag: str, name: str, scan, overrides: List[str], args) -> LaunchRun:
    """``scan``: a DTU scan number (tag ``scan{N}``) or a scene name (the tag itself)."""
    runs = os.path.join(os.path.abspath(args.out), "runs")
    tag = scan if isinstance(scan, str) else f"scan{scan}"
    lpips = ["--lpips-weights", args.lpips_weights] if getattr(args, "lpips_weights", None) else []
    cmd = [
        sys.executable, LAUNCH, "--config", config, mode_flag, *lpips,
        f"exp_root_dir={runs}", f"name={name}", f"tag={tag}", "use_timestamp=false",
        *overrides, *args.extra,
    ]
    log = os.path.join(os.path.abspath(args.out), "logs", f"{name}_{tag}.log")
    return LaunchRun(cmd, os.path.join(runs, name, tag), log)


def build_runs(scan: int, scales: Dict[str, float], args: argparse.Namespace) -> List[LaunchRun]:
    """The launch.py runs of ``scan`` in ``args.mode``, in order; the last one's ``save/metrics.json`` is the result.

    ``--dry-run`` prints these command lines; :func:`run_scan` executes them.
    """
    scene = scene_dir(args.root, scan)
    pose_scale = scales["pose_scale"]
    if args.mode == "sds":
        # the protocol's input, targets and excluded views are configs/zeronvs_dtu.yaml's data.scene keys
        overrides = [f"data.scene.scene_dir={scene}", f"data.scene.pose_scale={pose_scale}",
                     *_model_overrides(args, "system.guidance")]
        if args.steps:
            overrides += [f"trainer.max_steps={args.steps}", f"trainer.val_check_interval={args.steps}"]
        return [_launch_run(SDS_CONFIG, "--train", "sds", scan, overrides, args)]
    common = [
        f"data.scene_dir={scene}",
        f"data.input_views=[{INPUT_VIEW}]",
        "data.target_views=null",  # every view that is neither the input nor excluded
        f"data.excluded_views={_list(EXCLUDED_VIEWS)}",
        f"data.pose_scale={pose_scale}",
    ]
    steps = [f"system.sampling.steps={args.steps}"] if args.steps else []
    model = _model_overrides(args, "system.diffusion_model")
    nvs = _launch_run(NVS_CONFIG, "--test", "nvs", scan, common + model + steps, args)
    if args.mode == "nvs":
        return [nvs]
    # the NeRF stays in the normalised world (pose_scale 1): the generated views sit at the targets' poses
    # whatever the frame, and the config's near/far planes are set for that scale
    overrides = [o for o in common if not o.startswith("data.pose_scale=")] + [
        f"data.generated_views_dir={os.path.join(nvs.save, 'nvs')}",
        f"data.generated_weight={args.generated_weight}",
    ]
    if args.steps:
        overrides += [
            f"trainer.max_steps={args.steps}",
            f"trainer.val_check_interval={args.steps}",
            f"system.scheduler.args.gamma={0.1 ** (1.0 / args.steps)}",  # the config's ×0.1 decay over the run
        ]
    return [nvs, _launch_run(NERF_CONFIG, "--train", "nvs_nerf", scan, overrides, args)]


def _run(run: LaunchRun) -> int:
    """Run ``run.cmd`` from the repository root, its output into ``run.log``. Returns the exit code."""
    from launcher import run_child

    os.makedirs(os.path.dirname(run.log), exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("THREESTUDIO_TRIAL_TIMESTAMP", None)
    with open(run.log, "w") as log:
        log.write("$ " + shlex.join(run.cmd) + "\n")
        log.flush()
        # its own session, registered for the script's signal forwarding (scripts/launcher.py, "Signals")
        return run_child(run.cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


# written into a run's trial folder, last, once the run exited 0 and left its metrics.json: a stage (and a scan,
# by its last stage) counts as finished only with it
STAGE_DONE = "eval_dtu_stage_done.json"


def describe_exit(code: int) -> str:
    """``exit 2``, ``killed by SIGKILL`` (a negative code), ``stopped by SIGTERM (exit 143)`` (128 + signal)."""
    import signal

    def name(number: int) -> str:
        try:
            return signal.Signals(number).name
        except ValueError:
            return f"signal {number}"

    if code < 0:
        return f"killed by {name(-code)}"
    if code > 128 and code - 128 in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGKILL):
        return f"stopped by {name(code - 128)} (exit {code})"
    return f"exit {code}"


def stage_finished(run: LaunchRun) -> bool:
    return os.path.isfile(os.path.join(run.trial, STAGE_DONE))


def finish_stage(run: LaunchRun, code: int) -> Optional[str]:
    """After ``run`` exited: an error message, or None after writing its completion marker (last)."""
    from threestudio.utils.io import write_json_atomic

    if code != 0:
        return f"run failed ({describe_exit(code)}), see {run.log}"
    metrics = os.path.join(run.save, "metrics.json")
    if not os.path.isfile(metrics):
        return f"run exited 0 but wrote no {metrics} (interrupted?), see {run.log}"
    write_json_atomic(os.path.join(run.trial, STAGE_DONE), {"cmd": run.cmd, "metrics": metrics})
    return None


def run_scan(scan, runs: List[LaunchRun]) -> Optional[str]:
    """Execute the runs of ``scan`` in order; returns an error message, or None when all succeeded.

    A run counts as done only when it exited 0 and wrote its ``metrics.json`` (then :data:`STAGE_DONE` is
    written into its trial); a later stage never starts on the output of an unfinished one.
    """
    from launcher import signal_name, stopped_by_signal

    for run in runs:
        if stopped_by_signal() is not None:  # the job itself was signalled: no later stage starts
            return f"stopped by {signal_name(stopped_by_signal())} before {run.trial} started"
        if os.path.exists(run.trial):
            return f"{run.trial} already exists; use another --out or remove it"
        started = time.perf_counter()
        code = _run(run)
        logger.info("scan %s: %s %s in %.0f s (log %s)", scan, run.trial, describe_exit(code),
                    time.perf_counter() - started, run.log)
        error = finish_stage(run, code)
        if error is not None:
            return error
    return None


def evaluate_scan(scan: int, scales: Dict[str, float], args: argparse.Namespace) -> Dict[str, object]:
    """Run ``scan`` in ``args.mode`` (the launcher's job, in a worker process); returns its table row."""
    runs = build_runs(scan, scales, args)
    scene = scene_dir(args.root, scan)
    error = f"scene folder not found: {scene}" if not os.path.isdir(scene) else run_scan(scan, runs)
    return collect_row(scan, scales, runs, error, args.mode)


def run_scans(
    args: argparse.Namespace, scales: Dict[int, Dict[str, float]], build=None, evaluate=None, collect=None,
    unit: str = "scan",
) -> List[Dict[str, object]]:
    """Evaluate every scan of ``scales`` through the launcher; scans with metrics are reused unless ``--force``.

    ``build`` / ``evaluate`` / ``collect`` default to this protocol's :func:`build_runs`, :func:`evaluate_scan` and
    :func:`collect_row` (scripts/eval_mipnerf360.py passes its own). A progress bar counts the finished
    units (with the ones running and the ETA) unless ``--quiet``.
    """
    from launcher import LauncherConfig, parse_gpus, run_jobs

    build, evaluate, collect = build or build_runs, evaluate or evaluate_scan, collect or collect_row
    rows: Dict[int, Dict[str, object]] = {}
    jobs = []
    for scan in scales:
        runs = build(scan, scales[scan], args)
        if stage_finished(runs[-1]) and not args.force:
            logger.info("scan %s: metrics exist and its runs finished (%s), skipped; --force reruns it", scan,
                        runs[-1].trial)
            rows[scan] = collect(scan, scales[scan], runs, None, args.mode)
            continue
        for run in runs:
            if os.path.exists(run.trial):
                logger.info("scan %s: removing the earlier run %s", scan, run.trial)
                shutil.rmtree(run.trial)
        jobs.append((scan if isinstance(scan, str) else f"scan{scan}", evaluate, (scan, scales[scan], args)))
    cfg = LauncherConfig(
        kind=args.launcher, folder=os.path.join(args.out, "submitit"), gpus=parse_gpus(args.gpus),
        slurm_partition=args.slurm_partition, slurm_time=args.slurm_time,
        slurm_gpus_per_task=args.slurm_gpus_per_task, python_path=[ROOT, os.path.join(ROOT, "scripts")], unit=unit,
    )
    for (_, _, (scan, *_)), result in zip(jobs, run_jobs(jobs, cfg)):
        error = f"job {result.job_id} failed: {result.error} (logs in {cfg.folder})"
        rows[scan] = result.value if result.ok else collect(scan, scales[scan], [], error, args.mode)
    return [rows[scan] for scan in scales]


def collect_row(scan: int, scales: Dict[str, float], runs: List[LaunchRun], error: Optional[str], mode: str):
    """The table row of ``scan``: its metrics from the last run's ``metrics.json``, or an ``error``."""
    row: Dict[str, object] = {"scan": scan, "mode": mode, **scales}
    paper = PAPER_SDS_RESULTS.get(scan)
    if paper is not None:
        row.update(paper_psnr=paper[0], paper_ssim=paper[1], paper_lpips=paper[2])
    if error is not None:
        row["error"] = error
        return row
    metrics_path = os.path.join(runs[-1].save, "metrics.json")
    if not os.path.isfile(metrics_path):
        row["error"] = f"no metrics.json in {runs[-1].save}"
        return row
    with open(metrics_path) as f:
        metrics = json.load(f)
    row.update(
        psnr=metrics["psnr"], ssim=metrics["ssim"], lpips=metrics["lpips"], n_views=len(metrics["per_view"]),
        run=runs[-1].trial,
    )
    if metrics.get("lpips_note"):
        row["lpips_note"] = metrics["lpips_note"]
    return row


def _mean(values: List[object]) -> Optional[float]:
    return None if not values or any(v is None for v in values) else sum(values) / len(values)


def mean_row(rows: List[Dict[str, object]], mode: str) -> Dict[str, object]:
    """Mean over the finished scans; the paper's mean over those of them that it reports."""
    done = [r for r in rows if "error" not in r]
    out: Dict[str, object] = {"scan": "mean", "mode": mode, "n_views": sum(r["n_views"] for r in done)}
    for key in ("psnr", "ssim", "lpips"):
        out[key] = _mean([r[key] for r in done])
        out[f"paper_{key}"] = _mean([r[f"paper_{key}"] for r in done if f"paper_{key}" in r])
    return out


def _fmt(value: object, digits: int = 4) -> str:
    if value is None or value == "":
        return "n/a" if value is None else ""
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


COLUMNS = ("scan", "mode", "gt_to_pred_scale", "pose_scale", "psnr", "ssim", "lpips", "n_views",
           "paper_psnr", "paper_ssim", "paper_lpips", "run", "error")


def write_tables(out: str, mode: str, rows: List[Dict[str, object]], args: argparse.Namespace) -> Dict[str, str]:
    """Write ``dtu_{mode}.md`` and ``dtu_{mode}.csv`` in ``out``; returns their paths."""
    table = rows + [mean_row(rows, mode)]
    from threestudio.utils.io import write_bytes_atomic

    stem = os.path.join(out, f"dtu_{mode.replace('+', '_')}")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in table:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k, "")) for k in COLUMNS})
    write_bytes_atomic(stem + ".csv", buf.getvalue().encode())

    lines = [
        f"# DTU novel view synthesis: mode `{mode}`",
        "",
        f"Input view {INPUT_VIEW}; targets: every view except {INPUT_VIEW} and {EXCLUDED_VIEWS} "
        f"({len(protocol_targets())} views per scan). Checkpoint: `{args.ckpt or 'config default'}`. "
        f"Steps: {args.steps or 'config default'}. Extra overrides: `{' '.join(args.extra) or 'none'}`. "
        "Pose scale = 1 / (2.02 · gt→pred scale) unless set. \"ZeroNVS\" columns: the per-scene results the ZeroNVS "
        "README expects from its SDS protocol (`--mode sds`).",
        "",
        "| scan | gt→pred scale | pose scale | PSNR | SSIM | LPIPS | views | ZeroNVS PSNR | ZeroNVS SSIM | "
        "ZeroNVS LPIPS | run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in table:
        paper = f"{_fmt(row.get('paper_psnr'), 2)} | {_fmt(row.get('paper_ssim'))} | {_fmt(row.get('paper_lpips'))}"
        scales = f"{_fmt(row.get('gt_to_pred_scale', ''), 2)} | {_fmt(row.get('pose_scale', ''))}"
        if "error" in row:
            lines.append(f"| {row['scan']} | {scales} | failed: {row['error']} | | | | {paper} | |")
        else:
            lines.append(
                f"| {row['scan']} | {scales} | {_fmt(row['psnr'], 2)} | {_fmt(row['ssim'])} | "
                f"{_fmt(row['lpips'])} | {row['n_views']} | {paper} | {row.get('run', '')} |"
            )
    notes = [f"- {row['scan']}: LPIPS n/a: {row['lpips_note']}" for row in table if row.get("lpips_note")]
    lines += ["", *notes] if notes else []
    write_bytes_atomic(stem + ".md", ("\n".join(lines) + "\n").encode())
    return {"csv": stem + ".csv", "md": stem + ".md"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="folder holding dtu_scan{N} (or scan{N}) scene folders")
    parser.add_argument("--scans", type=int, nargs="+", default=PROTOCOL_SCANS,
                        help="scan numbers (default: the protocol's 15)")
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--out", required=True, help="output folder (tables, runs/, logs/)")
    parser.add_argument("--ckpt", help="ZeroNVS checkpoint or converted folder (the model section's pretrained_...)")
    parser.add_argument("--model-config", help="the checkpoint's latent-diffusion YAML")
    parser.add_argument("--gt-to-pred-scale", nargs="+",
                        help="one value, or SCAN=VALUE pairs (default: ZeroNVS's table for sds, 1.0 otherwise)")
    parser.add_argument("--pose-scale", nargs="+",
                        help="data pose scale, one value or SCAN=VALUE pairs (default 1 / (2.02 · gt→pred scale))")
    parser.add_argument("--steps", type=int, help="DDIM steps (nvs) / training steps (sds, nvs+nerf)")
    parser.add_argument("--generated-weight", type=float, default=0.5, help="loss weight of generated views (nvs+nerf)")
    parser.add_argument("--extra", nargs="*", default=[], help="key=value overrides for every launch.py run")
    parser.add_argument("--dry-run", action="store_true", help="print the launch.py command lines; run nothing")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="local", help="local processes or a SLURM array")
    parser.add_argument("--gpus", default="", help="local: GPUs to spread the scans over, e.g. 0,1,2,3 (default CPU)")
    parser.add_argument("--slurm-partition", help="slurm: partition")
    parser.add_argument("--slurm-time", help="slurm: time limit per scan (minutes or H:M:S)")
    parser.add_argument("--slurm-gpus-per-task", type=int, default=1, help="slurm: GPUs per scan (default 1)")
    parser.add_argument("--force", action="store_true", help="rerun scans whose metrics already exist")
    add_shared_arguments(parser)
    return parser


def add_shared_arguments(parser: argparse.ArgumentParser) -> None:
    """The options both eval scripts take: ``--quiet`` (see :func:`start_logging`) and ``--lpips-weights``."""
    parser.add_argument("--quiet", action="store_true", help="no progress bar; warnings, errors and the table only")
    parser.add_argument("--lpips-weights", metavar="DIR",
                        help="folder with alexnet-owt-7be5be79.pth and lpips' v0.1 alex.pth, passed to every launch.py "
                        "run (default: THREESTUDIO_LPIPS_DIR, else the torch hub cache, else one download)")


def use_lpips_weights(args: argparse.Namespace) -> None:
    """Check ``--lpips-weights DIR`` and make it absolute (every launch.py run gets it, see :func:`_launch_run`)."""
    if args.lpips_weights:
        from launch import check_lpips_folder  # the repository root is on sys.path

        problem = check_lpips_folder(args.lpips_weights)
        if problem:
            raise SystemExit(f"error: {problem}")
        args.lpips_weights = os.path.abspath(args.lpips_weights)


def start_logging(args: argparse.Namespace) -> None:
    """CPU thread defaults (before torch is imported; docs/PERFORMANCE.md, "CPU threads"), log level, ``--quiet``."""
    from threestudio.utils.progress import set_quiet
    from threestudio.utils.threads import set_cpu_thread_defaults

    set_cpu_thread_defaults()
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="[%(levelname)s] %(name)s: %(message)s")
    if args.quiet:
        set_quiet()


def out_lock(out: str):
    """The lock of the output folder ``out`` (``OUT/.lock``) for a whole run: a second run into it stops at once
    (UserError naming the holder) instead of overwriting the first one's tables and logs."""
    from threestudio.utils.trial_lock import trial_lock

    return trial_lock(out, what="output folder", instead="or choose another --out")


@contextlib.contextmanager
def stopped_in_one_line(out: str, unit: str) -> Iterator[List[int]]:
    """For the body: SIGTERM, SIGHUP or SIGINT is forwarded to the running launch.py runs, which the script waits
    for; then one line on stderr and the exit code (128 + signal) appended to the yielded list. A scan that a
    signal stopped has no completion marker, so the next run redoes it."""
    from launcher import Interrupted, signal_name, stop_signals

    codes: List[int] = []
    try:
        with stop_signals():
            yield codes
    except (Interrupted, KeyboardInterrupt) as e:
        signum = getattr(e, "signum", signal.SIGINT)
        running = f"the {e.stopped} running {unit}(s) were stopped and will be redone; " if getattr(
            e, "stopped", 0) else ""
        print(f"error: interrupted ({signal_name(signum)}); {running}the {unit}s finished so far are kept in "
              f"{out}/runs — run the same command again to do the others", file=sys.stderr)
        codes.append(128 + int(signum))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    start_logging(args)
    if args.steps is not None and args.steps < 1:
        raise SystemExit("error: --steps must be >= 1")
    for item in args.extra:
        if "=" not in item:
            raise SystemExit(f"error: --extra takes key=value overrides, got {item!r}")
    from launcher import parse_gpus, parse_slurm_time

    from threestudio.utils.errors import UserError

    try:
        parse_gpus(args.gpus), parse_slurm_time(args.slurm_time)
    except UserError as e:
        raise SystemExit(f"error: {e}") from None
    problem = check_scenes(args.root, args.scans)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    use_lpips_weights(args)
    args.root, args.out = os.path.abspath(args.root), os.path.abspath(args.out)  # the same for every worker
    scales = scan_scales(args)
    if args.dry_run:
        for scan in args.scans:
            for run in build_runs(scan, scales[scan], args):
                print(shlex.join(run.cmd))
        return 0
    os.makedirs(args.out, exist_ok=True)
    try:
        with out_lock(args.out), stopped_in_one_line(args.out, "scan") as stopped:
            rows = run_scans(args, scales)
            if not stopped:
                paths = write_tables(args.out, args.mode, rows, args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if stopped:
        return stopped[0]
    mean = mean_row(rows, args.mode)
    logger.info("mean over %d scan(s): PSNR %s, SSIM %s, LPIPS %s; tables %s and %s",
                sum("error" not in r for r in rows), _fmt(mean["psnr"], 2), _fmt(mean["ssim"]),
                _fmt(mean["lpips"]), paths["md"], paths["csv"])
    failed = [r for r in rows if "error" in r]
    for r in failed:
        logger.error("scan %s: %s", r["scan"], r["error"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
