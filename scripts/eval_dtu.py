#!/usr/bin/env python
"""Evaluate novel view synthesis on DTU scans with ZeroNVS's protocol; write per-scan and mean metrics.

Protocol (ZeroNVS / pixelNeRF's DTU split): input view 25; targets = every view except 25 and
3–7, 16–21, 36–39. Each scan folder ``ROOT/dtu_scan{N}`` is in the IDR/NeuS layout (see
``threestudio.data.multiview``). Modes, each one or two ``launch.py`` runs per scan (in subprocesses):

- ``nvs``: the diffusion model sampled directly (``configs/zeronvs_nvs.yaml``, ``--test``).
- ``nvs+nerf``: the ``nvs`` run, then a NeRF (``configs/nerf_multiview.yaml``) trained on view 25 plus the
  generated target views (``data.generated_views_dir``, weight ``data.generated_weight``), tested on the targets.
- ``sds``: ZeroNVS's own distillation — a NeRF trained with SDS from view 25 (plus its reference RGB loss) on the
  multi-view NeRF system (``configs/nerf_multiview.yaml`` with the overrides in ``SDS_OVERRIDES``: the canonical
  frame, black background, ``lambda_opaque`` 0.1, renders at 400×300), tested on the targets.

Writes ``OUT/dtu_{mode}.md`` and ``OUT/dtu_{mode}.csv`` (one row per scan: PSNR, SSIM, LPIPS, number of
target views, pose scale, run folder; then the mean over the scans that finished), run folders under
``OUT/runs/`` and logs under ``OUT/logs/``. Exit code 0 when every scan finished, 1 otherwise.

    python scripts/eval_dtu.py --root ../shared/data/dtu --scans 24 37 --mode nvs --out eval_out \\
        --ckpt zeronvs.ckpt --model-config zeronvs_config.yaml [--pose-scale 0.495 | --pose-scale 24=0.5 37=0.45]
        [--steps N] [--extra key=value ...]

Scans run through submitit (``threestudio/utils/launcher.py``): ``--launcher local`` runs them in parallel, one
process per GPU of ``--gpus 0,1,2,3`` (no GPUs: one at a time on the CPU); ``--launcher slurm`` submits one job
array (``--slurm-partition``, ``--slurm-time``, ``--slurm-gpus-per-task``; sbatch script and logs in
``OUT/submitit/``). A failed scan is listed as failed, the others still count. A rerun skips scans whose metrics
exist (``--force`` redoes them) and replaces the run folders of the scans it redoes.

``--steps`` sets the DDIM steps of ``nvs`` and the training steps of ``sds`` / the NeRF of ``nvs+nerf`` (for
quick checks); ``--extra`` overrides are appended to every launch.py run (they win over this script's own).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch.py")
if ROOT not in sys.path:  # run as a script: make the repository's packages importable
    sys.path.insert(0, ROOT)
from threestudio.utils.launcher import LAUNCHERS  # noqa: E402  (after the sys.path line)

NVS_CONFIG = os.path.join(ROOT, "configs", "zeronvs_nvs.yaml")
NERF_CONFIG = os.path.join(ROOT, "configs", "nerf_multiview.yaml")

INPUT_VIEW = 25
EXCLUDED_VIEWS = [3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 36, 37, 38, 39]
N_VIEWS = 49
DEFAULT_POSE_SCALE = 1.0 / 2.02  # ZeroNVS's view_synthesis.scale for DTU
MODES = ("nvs", "sds", "nvs+nerf")

# ZeroNVS's SDS on DTU, expressed on the multi-view NeRF system (see the module docstring)
SDS_OVERRIDES = [
    "data.canonicalize=true",
    "data.height=300",
    "data.width=400",
    "data.crop_square=false",
    "data.train_rays_per_batch=1024",
    "system.background.color=[0.0,0.0,0.0]",
    "system.renderer.near_plane=0.05",
    "system.loss.lambda_rgb=1000.0",
    "system.loss.lambda_sds=0.1",
    "system.loss.lambda_opaque=0.1",
    "system.guidance.precomputed_scale=0.7",
    "system.guidance.guidance_scale=7.5",
    "system.guidance.min_step_percent=[0,0.75,0.02,2000]",
    "system.guidance.max_step_percent=[0,0.98,0.5,2000]",
    "system.random_camera.height=128",
    "system.random_camera.width=128",
    "system.random_camera.batch_size=1",
    "system.random_camera.elevation_range=[-10,80]",
    "system.random_camera.camera_distance_range=[0.8,1.2]",
    "system.scheduler=null",  # constant learning rates, as ZeroNVS
    "trainer.max_steps=10000",
    "trainer.val_check_interval=2500",
]

logger = logging.getLogger("eval_dtu")


def protocol_targets() -> List[int]:
    """The target views of the protocol: all but the input view and the excluded ones."""
    return [i for i in range(N_VIEWS) if i != INPUT_VIEW and i not in EXCLUDED_VIEWS]


def parse_pose_scales(values: Optional[Sequence[str]], scans: Sequence[int]) -> Dict[int, float]:
    """``--pose-scale``: one number for every scan, or ``SCAN=VALUE`` pairs (scans not named get the default)."""
    scales = {scan: DEFAULT_POSE_SCALE for scan in scans}
    if not values:
        return scales
    if len(values) == 1 and "=" not in values[0]:
        return {scan: _positive(values[0]) for scan in scans}
    for item in values:
        if "=" not in item:
            raise SystemExit(f"error: --pose-scale takes one number or SCAN=VALUE pairs, got {item!r}")
        scan, value = item.split("=", 1)
        if not scan.strip().isdigit() or int(scan) not in scales:
            raise SystemExit(f"error: --pose-scale {item!r}: scan {scan} is not in --scans")
        scales[int(scan)] = _positive(value)
    return scales


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SystemExit(f"error: --pose-scale value {text!r} is not a number") from None
    if not value > 0:
        raise SystemExit(f"error: --pose-scale must be positive, got {value}")
    return value


def _list(values: Sequence[int]) -> str:
    return "[" + ",".join(str(v) for v in values) + "]"


def _model_overrides(args: argparse.Namespace) -> List[str]:
    out = []
    if args.ckpt:
        ckpt = args.ckpt if args.ckpt == "random" else os.path.abspath(args.ckpt)  # "random": tiny test models
        out.append(f"system.guidance.pretrained_model_name_or_path={ckpt}")
    if args.model_config:
        out.append(f"system.guidance.pretrained_config={os.path.abspath(args.model_config)}")
    return out


def _run(cmd: List[str], log_path: str) -> int:
    """Run ``cmd`` from the repository root, its output into ``log_path``. Returns the exit code."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("THREESTUDIO_TRIAL_TIMESTAMP", None)
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        return subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode


def _launch(
    config: str, mode_flag: str, name: str, tag: str, overrides: List[str], args: argparse.Namespace, log_path: str
) -> Optional[str]:
    """One launch.py run; returns its ``save/`` folder, or None when it failed."""
    runs = os.path.join(os.path.abspath(args.out), "runs")
    cmd = [
        sys.executable, LAUNCH, "--config", config, mode_flag,
        f"exp_root_dir={runs}", f"name={name}", f"tag={tag}", "use_timestamp=false",
        *overrides, *args.extra,
    ]
    trial = os.path.join(runs, name, tag)
    if os.path.exists(trial):
        raise SystemExit(f"error: {trial} already exists; use another --out or remove it")
    started = time.perf_counter()
    code = _run(cmd, log_path)
    logger.info("%s %s: exit %d in %.0f s (log %s)", name, tag, code, time.perf_counter() - started, log_path)
    return os.path.join(trial, "save") if code == 0 else None


def evaluate_scan(scan: int, mode: str, pose_scale: float, args: argparse.Namespace) -> Dict[str, object]:
    """Run ``mode`` on ``dtu_scan{scan}``; returns its row (metrics, or an ``error``)."""
    scene = os.path.join(os.path.abspath(args.root), f"dtu_scan{scan}")
    row: Dict[str, object] = {"scan": scan, "mode": mode, "pose_scale": pose_scale}
    if not os.path.isdir(scene):
        row["error"] = f"scene folder not found: {scene}"
        return row
    logs = os.path.join(os.path.abspath(args.out), "logs")
    tag = f"scan{scan}"
    common = [
        f"data.scene_dir={scene}",
        f"data.input_views=[{INPUT_VIEW}]",
        f"data.target_views={_list(protocol_targets())}",
        "data.excluded_views=[]",
        f"data.pose_scale={pose_scale}",
    ]
    save: Optional[str] = None
    if mode in ("nvs", "nvs+nerf"):
        steps = [f"system.sampling.steps={args.steps}"] if args.steps else []
        save = _launch(NVS_CONFIG, "--test", "nvs", tag, common + _model_overrides(args) + steps, args,
                       os.path.join(logs, f"nvs_{tag}.log"))
        if save is None:
            row["error"] = f"NVS run failed, see {os.path.join(logs, f'nvs_{tag}.log')}"
            return row
    if mode == "nvs+nerf":
        # the NeRF stays in the normalised world (pose_scale 1): the generated views sit at the targets' poses
        # whatever the frame, and the config's near/far planes are set for that scale
        overrides = [o for o in common if not o.startswith("data.pose_scale=")] + [
            f"data.generated_views_dir={os.path.join(save, 'nvs')}",
            f"data.generated_weight={args.generated_weight}",
        ]
        if args.steps:
            overrides += [
                f"trainer.max_steps={args.steps}",
                f"trainer.val_check_interval={args.steps}",
                f"system.scheduler.args.gamma={0.1 ** (1.0 / args.steps)}",  # the config's ×0.1 decay over the run
            ]
        log_path = os.path.join(logs, f"nvs_nerf_{tag}.log")
        save = _launch(NERF_CONFIG, "--train", "nvs_nerf", tag, overrides, args, log_path)
    elif mode == "sds":
        overrides = common + SDS_OVERRIDES + _model_overrides(args)
        if args.steps:
            overrides += [f"trainer.max_steps={args.steps}", f"trainer.val_check_interval={args.steps}"]
        save = _launch(NERF_CONFIG, "--train", "sds", tag, overrides, args, os.path.join(logs, f"sds_{tag}.log"))
    if save is None:
        row["error"] = f"{mode} run failed, see the logs in {logs}"
        return row
    return metrics_row(row, os.path.dirname(save))


def metrics_row(row: Dict[str, object], trial: str) -> Dict[str, object]:
    """``row`` with the metrics of run folder ``trial`` (or an ``error`` when it has none)."""
    metrics_path = os.path.join(trial, "save", "metrics.json")
    if not os.path.isfile(metrics_path):
        row["error"] = f"no metrics.json in {os.path.dirname(metrics_path)}"
        return row
    with open(metrics_path) as f:
        metrics = json.load(f)
    row.update(
        psnr=metrics["psnr"], ssim=metrics["ssim"], lpips=metrics["lpips"], n_views=len(metrics["per_view"]),
        run=trial,
    )
    return row


def mean_row(rows: List[Dict[str, object]], mode: str) -> Dict[str, object]:
    done = [r for r in rows if "error" not in r]
    n_views = sum(r["n_views"] for r in done)
    out: Dict[str, object] = {"scan": "mean", "mode": mode, "pose_scale": "", "n_views": n_views}
    for key in ("psnr", "ssim", "lpips"):
        values = [r[key] for r in done]
        out[key] = None if not values or any(v is None for v in values) else sum(values) / len(values)
    return out


def _fmt(value: object, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


COLUMNS = ("scan", "mode", "pose_scale", "psnr", "ssim", "lpips", "n_views", "run", "error")


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
        f"Steps: {args.steps or 'config default'}. Extra overrides: `{' '.join(args.extra) or 'none'}`.",
        "",
        "| scan | pose scale | PSNR | SSIM | LPIPS | views | run |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in table:
        if "error" in row:
            lines.append(f"| {row['scan']} | {_fmt(row['pose_scale'])} | failed: {row['error']} | | | | |")
        else:
            lines.append(
                f"| {row['scan']} | {_fmt(row['pose_scale'])} | {_fmt(row['psnr'], 2)} | {_fmt(row['ssim'])} | "
                f"{_fmt(row['lpips'])} | {row['n_views']} | {row.get('run', '')} |"
            )
    write_bytes_atomic(stem + ".md", ("\n".join(lines) + "\n").encode())
    return {"csv": stem + ".csv", "md": stem + ".md"}


FINAL_RUN = {"nvs": ["nvs"], "nvs+nerf": ["nvs", "nvs_nerf"], "sds": ["sds"]}  # run names of a mode, last: metrics


def run_scans(args: argparse.Namespace, scales: Dict[int, float]) -> List[Dict[str, object]]:
    """Evaluate every scan through the launcher; scans with metrics are reused unless ``--force``."""
    from threestudio.utils.launcher import LauncherConfig, parse_gpus, run_jobs

    runs = os.path.join(args.out, "runs")
    rows: Dict[int, Dict[str, object]] = {}
    jobs = []
    for scan in args.scans:
        trials = [os.path.join(runs, name, f"scan{scan}") for name in FINAL_RUN[args.mode]]
        metrics = os.path.join(trials[-1], "save", "metrics.json")
        if os.path.isfile(metrics) and not args.force:
            logger.info("scan %s: metrics exist (%s), skipped; --force reruns it", scan, metrics)
            rows[scan] = metrics_row({"scan": scan, "mode": args.mode, "pose_scale": scales[scan]}, trials[-1])
            continue
        for trial in trials:
            if os.path.exists(trial):
                logger.info("scan %s: removing the earlier run %s", scan, trial)
                shutil.rmtree(trial)
        jobs.append((f"scan{scan}", evaluate_scan, (scan, args.mode, scales[scan], args)))
    cfg = LauncherConfig(
        kind=args.launcher, folder=os.path.join(args.out, "submitit"), gpus=parse_gpus(args.gpus),
        slurm_partition=args.slurm_partition, slurm_time=args.slurm_time,
        slurm_gpus_per_task=args.slurm_gpus_per_task, python_path=[ROOT, os.path.join(ROOT, "scripts")],
    )
    for (_, _, (scan, *_)), result in zip(jobs, run_jobs(jobs, cfg)):
        rows[scan] = result.value if result.ok else {
            "scan": scan, "mode": args.mode, "pose_scale": scales[scan],
            "error": f"job {result.job_id} failed: {result.error} (logs in {cfg.folder})",
        }
    return [rows[scan] for scan in args.scans]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="folder holding dtu_scan{N} scene folders")
    parser.add_argument("--scans", type=int, nargs="+", required=True, help="scan numbers, e.g. 24 37")
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--out", required=True, help="output folder (tables, runs/, logs/)")
    parser.add_argument("--ckpt", help="ZeroNVS checkpoint or converted folder (system.guidance.pretrained_...)")
    parser.add_argument("--model-config", help="the checkpoint's latent-diffusion YAML")
    parser.add_argument(
        "--pose-scale", nargs="+", help=f"one value, or SCAN=VALUE pairs (default 1/2.02 ≈ {DEFAULT_POSE_SCALE:.3f})"
    )
    parser.add_argument("--steps", type=int, help="DDIM steps (nvs) / training steps (sds, nvs+nerf)")
    parser.add_argument("--generated-weight", type=float, default=0.5, help="loss weight of generated views (nvs+nerf)")
    parser.add_argument("--extra", nargs="*", default=[], help="key=value overrides for every launch.py run")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="local", help="local processes or a SLURM array")
    parser.add_argument("--gpus", default="", help="local: GPUs to spread the scans over, e.g. 0,1,2,3 (default CPU)")
    parser.add_argument("--slurm-partition", help="slurm: partition")
    parser.add_argument("--slurm-time", help="slurm: time limit per scan (minutes or H:M:S)")
    parser.add_argument("--slurm-gpus-per-task", type=int, default=1, help="slurm: GPUs per scan (default 1)")
    parser.add_argument("--force", action="store_true", help="rerun scans whose metrics already exist")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(name)s: %(message)s")
    if args.steps is not None and args.steps < 1:
        raise SystemExit("error: --steps must be >= 1")
    for item in args.extra:
        if "=" not in item:
            raise SystemExit(f"error: --extra takes key=value overrides, got {item!r}")
    if not os.path.isdir(args.root):
        raise SystemExit(f"error: --root {args.root} is not a folder")
    from threestudio.utils.errors import UserError
    from threestudio.utils.launcher import parse_gpus, parse_slurm_time

    try:
        parse_gpus(args.gpus), parse_slurm_time(args.slurm_time)
    except UserError as e:
        raise SystemExit(f"error: {e}") from None
    scales = parse_pose_scales(args.pose_scale, args.scans)
    args.root, args.out = os.path.abspath(args.root), os.path.abspath(args.out)  # the same for every worker
    os.makedirs(args.out, exist_ok=True)
    rows = run_scans(args, scales)
    paths = write_tables(args.out, args.mode, rows, args)
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
