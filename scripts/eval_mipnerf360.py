#!/usr/bin/env python
"""Evaluate single-image NeRF distillation on Mip-NeRF 360 with ZeroNVS's protocol; write per-scene and mean metrics.

Protocol (ZeroNVS's launch_eval_mipnerf360.sh; values in ``threestudio/data/mipnerf360.py``): the 7 scenes bicycle
bonsai counter garden kitchen room stump; per scene the input view (rank ``view_idx`` 2 0 20 0 0 0 11 in the order of
increasing angle to the look-at-the-focus-point rotation), ``system.guidance.precomputed_scale`` 0.9 0.9 0.9 0.9 0.9
2.0 0.9 and ``manual_gt_to_pred_scale`` 1.0 1.0 0.9 1.0 0.9 0.9 1.1; for all: guidance scale 9.5, anisotropic
schedule offset 1000, grey background with random augmentation (probability 1), ``lambda_opaque`` 0, near 0.6, far
1000, the input camera's elevation and elevation range, the frames' fov; every view but the input scored at 256² with
PSNR/SSIM/LPIPS. One ``launch.py --train`` run per scene with ``configs/zeronvs_mipnerf360.yaml`` (its test pass
writes ``save/metrics.json``); the protocol's values are also spelled out on each command line, as in the original
script.

Scenes: ``ROOT/SCENE/`` in the public release layout (``poses_bounds.npy``, ``images_N/``) or ``ROOT/SCENE.npz``
converted once from ZeroNVS's pickle by ``python -m threestudio.data.mipnerf360 --trust-pickle PICKLE --out ROOT``.

Writes ``OUT/mipnerf360.md`` and ``OUT/mipnerf360.csv`` (one row per scene: PSNR, SSIM, LPIPS, views, the scene's
values, run folder, and the per-scene numbers of the ZeroNVS README; then the mean over the finished scenes), run
folders under ``OUT/runs/sds/SCENE`` and logs under ``OUT/logs/``. Exit code 0 when every scene finished, 1
otherwise; 2 for bad input (``--root``, the scenes, the model's files, the options), checked before anything runs,
``--dry-run`` included (missing weights are a warning there), and 2 when another run holds ``OUT`` (``OUT/.lock``);
SIGTERM / SIGHUP / SIGINT: 143 / 129 / 130 after the running launch.py runs stopped. The launcher, skipping of
finished scenes, ``--force``, ``--dry-run``, ``--steps`` and ``--extra`` behave as in ``scripts/eval_dtu.py`` (whose
functions this script uses)::

    python scripts/eval_mipnerf360.py --root MIPNERF360 --out eval_m360 --ckpt zeronvs.ckpt \\
        --model-config zeronvs_config.yaml [--scenes bicycle room] [--launcher slurm ...] [--dry-run]
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import shlex
import sys
from typing import Dict, List, Optional, Sequence

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
if SCRIPTS not in sys.path:  # run as a script: eval_dtu (and through it the repository) importable
    sys.path.insert(0, SCRIPTS)

import eval_dtu  # noqa: E402  (after the sys.path line)
from eval_dtu import ROOT, LaunchRun, _fmt, _launch_run, _model_overrides, mean_row  # noqa: E402
from launcher import LAUNCHERS  # noqa: E402

from threestudio.data.mipnerf360 import PAPER_RESULTS, PROTOCOL, SCENES  # noqa: E402

CONFIG = os.path.join(ROOT, "configs", "zeronvs_mipnerf360.yaml")
MODE = "sds"
# launch_eval_mipnerf360.sh's overrides shared by every scene (configs/zeronvs_mipnerf360.yaml holds the same values)
PROTOCOL_OVERRIDES = [
    "system.loss.lambda_opaque=0.0",
    "system.background.color=[0.5,0.5,0.5]",
    "system.background.random_aug=true",
    "system.background.random_aug_prob=1.0",
    "system.guidance.guidance_scale=9.5",
    "system.renderer.near_plane=0.6",
    "system.renderer.far_plane=1000.0",
    "system.guidance.use_anisotropic_schedule=true",
    "system.guidance.anisotropic_offset=1000",
]
COLUMNS = ("scene", "view_idx", "precomputed_scale", "gt_to_pred_scale", "psnr", "ssim", "lpips", "n_views",
           "paper_psnr", "paper_ssim", "paper_lpips", "run", "error")

logger = logging.getLogger("eval_mipnerf360")


def scene_path(root: str, scene: str) -> str:
    """``ROOT/SCENE`` (release layout), or ``ROOT/SCENE.npz`` (converted) when only that exists."""
    folder = os.path.join(os.path.abspath(root), scene)
    npz = folder + ".npz"
    return npz if not os.path.isdir(folder) and os.path.isfile(npz) else folder


def check_scenes(root: str, scenes: Sequence[str]) -> Optional[str]:
    """One line saying what is wrong with ``--root`` / ``--scenes`` (not a folder, scenes with neither
    ``SCENE/poses_bounds.npy`` nor ``SCENE.npz``), or None; checked before anything runs, ``--dry-run`` included."""
    if not os.path.isdir(root):
        return f"--root {root} is not a folder (it should hold the scenes: SCENE/ release folders or SCENE.npz)"
    missing = [s for s in scenes if not os.path.isfile(os.path.join(root, s, "poses_bounds.npy"))
               and not os.path.isfile(os.path.join(root, s + ".npz"))]
    if missing:
        return (f"no scene {' '.join(missing)} under {root} (expected SCENE/poses_bounds.npy with SCENE/images_N/, or "
                "SCENE.npz); pass --scenes with the scenes you have")
    return None


def scene_values(scene: str) -> Dict[str, float]:
    p = PROTOCOL[scene]
    return {"view_idx": p.view_idx, "precomputed_scale": p.precomputed_scale,
            "gt_to_pred_scale": p.manual_gt_to_pred_scale}


def build_runs(scene: str, values: Dict[str, float], args: argparse.Namespace) -> List[LaunchRun]:
    """The launch.py run of ``scene`` (one); its ``save/metrics.json`` is the result. ``--dry-run`` prints it."""
    overrides = [
        f"data.scene.scene_dir={scene_path(args.root, scene)}",
        f"system.guidance.precomputed_scale={values['precomputed_scale']}",
        f"data.scene.manual_gt_to_pred_scale={values['gt_to_pred_scale']}",
        f"data.scene.view_idx={values['view_idx']}",
        *PROTOCOL_OVERRIDES,
        *_model_overrides(args),
    ]
    if args.steps:
        overrides += [f"trainer.max_steps={args.steps}", f"trainer.val_check_interval={args.steps}"]
    return [_launch_run(CONFIG, "--train", MODE, scene, overrides, args)]


def collect_row(scene: str, values: Dict[str, float], runs: List[LaunchRun], error: Optional[str], mode: str):
    """The table row of ``scene`` (eval_dtu's, with the scene's name and the ZeroNVS README's numbers)."""
    row = eval_dtu.collect_row(scene, values, runs, error, mode)
    row["scene"] = row["scan"]
    paper = PAPER_RESULTS.get(scene)
    if paper is not None:
        row.update(paper_psnr=paper[0], paper_ssim=paper[1], paper_lpips=paper[2])
    return row


def evaluate_scene(scene: str, values: Dict[str, float], args: argparse.Namespace) -> Dict[str, object]:
    """Run ``scene`` (the launcher's job, in a worker process); returns its table row."""
    runs = build_runs(scene, values, args)
    path = scene_path(args.root, scene)
    error = f"scene not found: {path} (nor {path}.npz)" if not os.path.exists(path) else eval_dtu.run_scan(scene, runs)
    return collect_row(scene, values, runs, error, MODE)


def write_tables(out: str, rows: List[Dict[str, object]], args: argparse.Namespace) -> Dict[str, str]:
    """Write ``mipnerf360.md`` and ``mipnerf360.csv`` in ``out``; returns their paths."""
    from threestudio.utils.io import write_bytes_atomic

    mean = mean_row(rows, MODE)
    mean["scene"] = "mean"
    table = rows + [mean]
    stem = os.path.join(out, "mipnerf360")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in table:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k, "")) for k in COLUMNS})
    write_bytes_atomic(stem + ".csv", buf.getvalue().encode())
    lines = [
        "# Mip-NeRF 360 novel view synthesis (ZeroNVS protocol)",
        "",
        f"Input: the `view_idx`-th view by angle to the focus point; scored: every other view at 256². Checkpoint: "
        f"`{args.ckpt or 'config default'}`. Steps: {args.steps or 'config default'}. Extra overrides: "
        f"`{' '.join(args.extra) or 'none'}`. \"ZeroNVS\" columns: the per-scene results of the ZeroNVS README.",
        "",
        "| scene | view_idx | precomputed scale | gt→pred scale | PSNR | SSIM | LPIPS | views | ZeroNVS PSNR | "
        "ZeroNVS SSIM | ZeroNVS LPIPS | run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in table:
        paper = f"{_fmt(row.get('paper_psnr'), 2)} | {_fmt(row.get('paper_ssim'))} | {_fmt(row.get('paper_lpips'))}"
        values = " | ".join(_fmt(row.get(k, ""), 2) for k in ("view_idx", "precomputed_scale", "gt_to_pred_scale"))
        if "error" in row:
            lines.append(f"| {row['scene']} | {values} | failed: {row['error']} | | | | {paper} | |")
        else:
            lines.append(f"| {row['scene']} | {values} | {_fmt(row['psnr'], 2)} | {_fmt(row['ssim'])} | "
                         f"{_fmt(row['lpips'])} | {row['n_views']} | {paper} | {row.get('run', '')} |")
    notes = [f"- {row['scene']}: LPIPS n/a: {row['lpips_note']}" for row in table if row.get("lpips_note")]
    lines += ["", *notes] if notes else []
    write_bytes_atomic(stem + ".md", ("\n".join(lines) + "\n").encode())
    return {"csv": stem + ".csv", "md": stem + ".md"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="folder holding the scenes (SCENE/ or SCENE.npz)")
    parser.add_argument("--scenes", nargs="+", default=list(SCENES), choices=SCENES,
                        help="scenes (default: the protocol's 7)")
    parser.add_argument("--out", required=True, help="output folder (tables, runs/, logs/)")
    parser.add_argument("--ckpt", help="ZeroNVS checkpoint or converted folder (system.guidance.pretrained_...)")
    parser.add_argument("--model-config", help="the checkpoint's latent-diffusion YAML")
    parser.add_argument("--steps", type=int, help="training steps (quick checks; the protocol's is 4000)")
    parser.add_argument("--extra", nargs="*", default=[], help="key=value overrides for every launch.py run")
    parser.add_argument("--dry-run", action="store_true", help="print the launch.py command lines; run nothing")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="local", help="local processes or a SLURM array")
    parser.add_argument("--gpus", default="", help="local: GPUs to spread the scenes over, e.g. 0,1,2,3 (default CPU)")
    parser.add_argument("--slurm-partition", help="slurm: partition")
    parser.add_argument("--slurm-time", help="slurm: time limit per scene (minutes or H:M:S)")
    parser.add_argument("--slurm-gpus-per-task", type=int, default=1, help="slurm: GPUs per scene (default 1)")
    parser.add_argument("--force", action="store_true", help="rerun scenes whose metrics already exist")
    eval_dtu.add_shared_arguments(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    eval_dtu.start_logging(args)
    eval_dtu.check_common_arguments(args)
    problem = eval_dtu.up_front_problem(args, check_scenes(args.root, list(dict.fromkeys(args.scenes))), CONFIG,
                                        "system.guidance")
    if problem is not None:  # with --dry-run too (a missing model file is a warning there): one line, exit 2
        print(f"error: {problem}", file=sys.stderr)
        return 2
    eval_dtu.use_lpips_weights(args)
    args.root, args.out, args.mode = os.path.abspath(args.root), os.path.abspath(args.out), MODE
    values = {scene: scene_values(scene) for scene in dict.fromkeys(args.scenes)}
    if args.dry_run:
        for scene, v in values.items():
            for run in build_runs(scene, v, args):
                print(shlex.join(run.cmd))
        return 0
    os.makedirs(args.out, exist_ok=True)
    from threestudio.utils.errors import UserError

    try:  # --out locked for the run; signals: forwarded to the runs, waited for, one line
        with eval_dtu.out_lock(args.out), eval_dtu.stopped_in_one_line(args.out, "scene") as stopped:
            rows = eval_dtu.run_scans(args, values, build=build_runs, evaluate=evaluate_scene, collect=collect_row,
                                      unit="scene")
            if not stopped:
                paths = write_tables(args.out, rows, args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if stopped:
        return stopped[0]
    mean = mean_row(rows, MODE)
    logger.info("mean over %d scene(s): PSNR %s, SSIM %s, LPIPS %s; tables %s and %s",
                sum("error" not in r for r in rows), _fmt(mean["psnr"], 2), _fmt(mean["ssim"]),
                _fmt(mean["lpips"]), paths["md"], paths["csv"])
    failed = [r for r in rows if "error" in r]
    for r in failed:
        logger.error("scene %s: %s", r["scene"], r["error"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
