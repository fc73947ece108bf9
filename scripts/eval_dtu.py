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
every scan finished, 1 otherwise; 2 for bad input, checked before anything runs (``--dry-run`` included, where
missing weights are a warning): ``--root`` and the scans' folders, the diffusion model's checkpoint and YAML, the
options. A failed run is listed with its log's last error line. SIGTERM, SIGHUP or SIGINT (Ctrl-C) is forwarded to
the running launch.py runs, which the script waits for, then it exits 143 / 129 / 130 with one line. A run that a
signal stopped, or that left no
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

**Few views** (``--views N``, N = 3, 6 or 9; RegNeRF's DTU split, which ReconFusion and CAT3D use): the inputs are
the first N of ``FEW_VIEW_INPUTS`` [25, 22, 28, 40, 44, 48, 0, 8, 13], the test views ``FEW_VIEW_TARGETS`` (25
views), the same 15 scans and scales. ``sds`` is the "ZeroNVS*" baseline: SDS from the N inputs, each SDS sample
conditioned on the input nearest to its camera (``posed-inputs-datamodule``, ``system.guidance.input_selection:
nearest``); ``nvs`` samples each test view from its nearest input; ``nvs+nerf`` trains the NeRF on the N inputs plus
those samples. Test views render with their own cameras at 400×300 (``data.scene_intrinsics: calibrated``). In
``sds`` mode the scans' object masks give RegNeRF's masked metrics too (threestudio/utils/metrics.py says how);
tables ``dtu_{mode}_{N}views.{md,csv}`` put CAT3D's Table 1 rows (ZeroNVS*, ReconFusion, CAT3D) beside the mean.
``--views 1`` (default) is ZeroNVS's own protocol above.

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
from typing import Dict, Iterator, List, NoReturn, Optional, Sequence

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

from threestudio.utils.paths import user_path  # noqa: E402

INPUT_VIEW = 25
# RegNeRF's DTU few-view split (ReconFusion / CAT3D): inputs are the first N of FEW_VIEW_INPUTS
FEW_VIEW_INPUTS = [25, 22, 28, 40, 44, 48, 0, 8, 13]
FEW_VIEW_TARGETS = [1, 2, 9, 10, 11, 12, 14, 15, 23, 24, 26, 27, 29, 30, 31, 32, 33, 34, 35, 41, 42, 43, 45, 46, 47]
VIEW_COUNTS = (1, 3, 6, 9)
# CAT3D (arXiv 2405.10314v1) Table 1, DTU, PSNR / SSIM / LPIPS (its ZeroNVS* and ReconFusion rows from ReconFusion)
CAT3D_TABLE = {
    "ZeroNVS*": {3: (16.71, 0.716, 0.223), 6: (17.70, 0.737, 0.205), 9: (17.92, 0.745, 0.200)},
    "ReconFusion": {3: (20.74, 0.875, 0.124), 6: (23.62, 0.904, 0.105), 9: (24.62, 0.921, 0.094)},
    "CAT3D": {3: (22.02, 0.844, 0.121), 6: (24.28, 0.899, 0.095), 9: (25.92, 0.928, 0.073)},
}
EXCLUDED_VIEWS = [3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 36, 37, 38, 39]
N_VIEWS = 49
DTU_SCALE = 2.02  # ZeroNVS's view_synthesis.scale: DTU translations are divided by it
DEFAULT_POSE_SCALE = 1.0 / DTU_SCALE
MODES = ("nvs", "sds", "nvs+nerf")
# per mode: the config and section of the diffusion model its runs load (checked up front, see check_model)
MODEL_SECTION = {"sds": (SDS_CONFIG, "system.guidance"), "nvs": (NVS_CONFIG, "system.diffusion_model"),
                 "nvs+nerf": (NVS_CONFIG, "system.diffusion_model")}
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


class BadInput(SystemExit):
    """Bad command-line input: exit code 2; ``str()`` is the message (already printed as one ``error:`` line)."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def bad_input(message: str) -> NoReturn:
    """Print ``error: message`` (one line) and exit with code 2."""
    print(f"error: {message}", file=sys.stderr)
    raise BadInput(message)


def protocol_targets(views: int = 1) -> List[int]:
    """The target views of the protocol: with one view all but the input view and the excluded ones, with N > 1
    RegNeRF's 25 test views."""
    if views > 1:
        return list(FEW_VIEW_TARGETS)
    return [i for i in range(N_VIEWS) if i != INPUT_VIEW and i not in EXCLUDED_VIEWS]


def protocol_inputs(views: int = 1) -> List[int]:
    """The input views: view 25 alone (ZeroNVS's protocol), or the first N of RegNeRF's split."""
    return list(FEW_VIEW_INPUTS[:views]) if views > 1 else [INPUT_VIEW]


def run_name(mode: str, views: int) -> str:
    """The run folder / log name of a mode: ``sds``, ``nvs``, ``nvs_nerf``, with ``_{N}v`` for N > 1 views."""
    return mode.replace("+", "_") + (f"_{views}v" if views > 1 else "")


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
            bad_input(f"{option} takes one number or SCAN=VALUE pairs, got {item!r}")
        scan, value = item.split("=", 1)
        if not scan.strip().isdigit() or int(scan) not in out:
            bad_input(f"{option} {item!r}: scan {scan} is not in --scans")
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
                logger.warning("scan %d has no manual_gt_to_pred_scale in ZeroNVS's table: using 1.0, so pose_scale = "
                               "1 / (%.2f · 1.0) = %.4f (--gt-to-pred-scale %d=S or --pose-scale %d=P sets it)",
                               scan, DTU_SCALE, DEFAULT_POSE_SCALE, scan, scan)
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
        bad_input(f"{option} value {text!r} is not a number")
    if not value > 0:
        bad_input(f"{option} must be positive, got {value}")
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


def check_model(args: argparse.Namespace, config: str, section: str) -> Optional[str]:
    """One line naming the diffusion-model file the runs would not find — the checkpoint or its latent-diffusion YAML,
    from ``--ckpt`` / ``--model-config``, else from ``config``'s ``section`` (with ``--extra`` applied) — or None.
    Checked before anything runs: a missing file would fail every run the same way (exit 2; ``--dry-run`` warns and
    still prints the commands)."""
    from omegaconf import OmegaConf

    from threestudio.utils.config import load_config
    from threestudio.utils.errors import UserError
    from zeronvs_diffusion.errors import missing_file_message

    try:
        cfg = load_config(config, cli_args=[*_model_overrides(args, section), *args.extra])
    except UserError as e:
        return str(e)
    ckpt = OmegaConf.select(cfg.system, section.split(".", 1)[1] + ".pretrained_model_name_or_path")
    yaml = OmegaConf.select(cfg.system, section.split(".", 1)[1] + ".pretrained_config")
    if not isinstance(ckpt, str) or ckpt.startswith("oracle:"):  # the runs' own checks report anything else
        return None
    given = "--ckpt" if args.ckpt else f"{section}.pretrained_model_name_or_path of {os.path.basename(config)}"
    if ckpt != "random" and not os.path.exists(ckpt):
        return missing_file_message(f"checkpoint ({given})", ckpt)
    if os.path.isdir(ckpt):  # a converted folder holds its own config
        return None
    given = "--model-config" if args.model_config else f"{section}.pretrained_config of {os.path.basename(config)}"
    if not yaml:
        return f"{ckpt} needs its latent-diffusion YAML: pass --model-config (zeronvs_config.yaml)"
    if not os.path.isfile(yaml):
        return missing_file_message(f"latent-diffusion YAML ({given})", yaml)
    return None


def up_front_problem(args: argparse.Namespace, scene_problem: Optional[str], config: str, section: str
                     ) -> Optional[str]:
    """What stops the script before any run (one line, exit 2): ``scene_problem`` (bad ``--root`` / scans), else a
    missing diffusion-model file (:func:`check_model`). With ``--dry-run`` a missing model file is one warning line
    instead: the printed commands are what one runs once the weights are there."""
    if scene_problem is not None:
        return scene_problem
    model_problem = check_model(args, config, section)
    if model_problem is not None and args.dry_run:
        print(f"warning: the runs would stop at once: {model_problem}", file=sys.stderr)
        return None
    return model_problem


def _model_overrides(args: argparse.Namespace, section: str = "system.guidance") -> List[str]:
    """``--ckpt`` / ``--model-config`` as overrides of the model section (``system.guidance`` of the SDS system,
    ``system.diffusion_model`` of nvs-system)."""
    out = []
    if args.ckpt:
        ckpt = args.ckpt if args.ckpt == "random" else os.path.abspath(args.ckpt)  # "random": tiny test models
        out.append(f"{section}.pretrained_model_name_or_path={ckpt}")
    if args.model_config:
        # README's `--model-config configs/diffusion_tiny.yaml` works from any folder (threestudio/utils/paths.py)
        out.append(f"{section}.pretrained_config={os.path.abspath(user_path(args.model_config))}")
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
    views = getattr(args, "views", 1)
    inputs, targets = _list(protocol_inputs(views)), _list(protocol_targets(views))
    if args.mode == "sds":
        # the protocol's input, targets and excluded views are configs/zeronvs_dtu.yaml's data.scene keys; few
        # views: RegNeRF's split, test views with their own cameras, the object masks for the masked metrics
        overrides = [f"data.scene.scene_dir={scene}", f"data.scene.pose_scale={pose_scale}",
                     *_model_overrides(args, "system.guidance")]
        if views > 1:
            overrides += [f"data.scene.input_views={inputs}", f"data.scene.target_views={targets}",
                          "data.scene.use_masks=true", "data.scene_intrinsics=calibrated"]
        if args.steps:
            overrides += [f"trainer.max_steps={args.steps}", f"trainer.val_check_interval={args.steps}"]
        return [_launch_run(SDS_CONFIG, "--train", run_name("sds", views), scan, overrides, args)]
    common = [
        f"data.scene_dir={scene}",
        f"data.input_views={inputs}",
        # one view: every view that is neither the input nor excluded; few views: RegNeRF's test views
        f"data.target_views={targets if views > 1 else 'null'}",
        f"data.excluded_views={_list(EXCLUDED_VIEWS)}",
        f"data.pose_scale={pose_scale}",
    ]
    steps = [f"system.sampling.steps={args.steps}"] if args.steps else []
    model = _model_overrides(args, "system.diffusion_model")
    nvs = _launch_run(NVS_CONFIG, "--test", run_name("nvs", views), scan, common + model + steps, args)
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
    return [nvs, _launch_run(NERF_CONFIG, "--train", run_name("nvs_nerf", views), scan, overrides, args)]


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


def last_error_line(log: str) -> Optional[str]:
    """The last ``error: ...`` line of a run's log (launch.py's one-line message), else its last line that names an
    error or exception (a traceback's last line), else None."""
    try:
        with open(log, errors="replace") as f:
            lines = [line.strip() for line in f.read().splitlines()[-400:] if line.strip()]
    except OSError:
        return None
    for marker in (lambda ln: ln.startswith("error:"), lambda ln: "Error" in ln or "Exception" in ln):
        found = [ln for ln in lines if marker(ln)]
        if found:
            return found[-1][:300]
    return None


def stage_finished(run: LaunchRun) -> bool:
    return os.path.isfile(os.path.join(run.trial, STAGE_DONE))


def finish_stage(run: LaunchRun, code: int) -> Optional[str]:
    """After ``run`` exited: an error message, or None after writing its completion marker (last)."""
    from threestudio.utils.io import write_json_atomic

    if code != 0:
        cause = last_error_line(run.log)
        return f"run failed ({describe_exit(code)}){': ' + cause if cause else ''}; log: {run.log}"
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
    return collect_row(scan, scales, runs, error, args.mode, getattr(args, "views", 1))


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

    views = getattr(args, "views", 1)
    build, evaluate = build or build_runs, evaluate or evaluate_scan
    collect = collect or (lambda *row_args: collect_row(*row_args, views=views))
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


def collect_row(scan: int, scales: Dict[str, float], runs: List[LaunchRun], error: Optional[str], mode: str,
                views: int = 1):
    """The table row of ``scan``: its metrics from the last run's ``metrics.json`` (with the masked metrics when it
    has them), or an ``error``. ZeroNVS's per-scene results go beside ``--views 1`` rows only."""
    row: Dict[str, object] = {"scan": scan, "mode": mode, **scales}
    paper = PAPER_SDS_RESULTS.get(scan) if views == 1 else None
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
        run=runs[-1].trial, **{key: metrics[key] for key in MASKED_COLUMNS if key in metrics},
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
    for key in MASKED_COLUMNS:
        if done and all(key in r for r in done):
            out[key] = _mean([r[key] for r in done])
    return out


def _fmt(value: object, digits: int = 4) -> str:
    if value is None or value == "":
        return "n/a" if value is None else ""
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


MASKED_COLUMNS = ("psnr_masked", "ssim_masked", "lpips_masked")
COLUMNS = ("scan", "mode", "gt_to_pred_scale", "pose_scale", "psnr", "ssim", "lpips", *MASKED_COLUMNS, "n_views",
           "paper_psnr", "paper_ssim", "paper_lpips", "run", "error")


def write_tables(out: str, mode: str, rows: List[Dict[str, object]], args: argparse.Namespace) -> Dict[str, str]:
    """Write ``dtu_{mode}.md`` and ``dtu_{mode}.csv`` (``dtu_{mode}_{N}views.*`` for N > 1 views) in ``out``;
    returns their paths."""
    views = getattr(args, "views", 1)
    table = rows + [mean_row(rows, mode)]
    from threestudio.utils.io import write_bytes_atomic

    stem = os.path.join(out, f"dtu_{mode.replace('+', '_')}" + (f"_{views}views" if views > 1 else ""))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in table:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k, "")) for k in COLUMNS})
    write_bytes_atomic(stem + ".csv", buf.getvalue().encode())
    setup = (f"Checkpoint: `{args.ckpt or 'config default'}`. Steps: {args.steps or 'config default'}. Extra "
             f"overrides: `{' '.join(args.extra) or 'none'}`. Pose scale = 1 / (2.02 · gt→pred scale) unless set.")
    if views > 1:
        lines = _few_view_table(mode, views, table, setup)
    else:
        lines = _single_view_table(mode, table, setup)
    notes = [f"- {row['scan']}: LPIPS n/a: {row['lpips_note']}" for row in table if row.get("lpips_note")]
    lines += ["", *notes] if notes else []
    write_bytes_atomic(stem + ".md", ("\n".join(lines) + "\n").encode())
    return {"csv": stem + ".csv", "md": stem + ".md"}


def _single_view_table(mode: str, table: List[Dict[str, object]], setup: str) -> List[str]:
    lines = [
        f"# DTU novel view synthesis: mode `{mode}`",
        "",
        f"Input view {INPUT_VIEW}; targets: every view except {INPUT_VIEW} and {EXCLUDED_VIEWS} "
        f"({len(protocol_targets())} views per scan). {setup} \"ZeroNVS\" columns: the per-scene results the ZeroNVS "
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
    return lines


def _few_view_table(mode: str, views: int, table: List[Dict[str, object]], setup: str) -> List[str]:
    masked = "masked metrics: RegNeRF's rule with the scans' object masks" if mode == "sds" else (
        "masked metrics are computed in `--mode sds` only (n/a here)")
    lines = [
        f"# DTU few-view novel view synthesis: {views} views, mode `{mode}`",
        "",
        f"Inputs {protocol_inputs(views)} (RegNeRF's split, as ReconFusion and CAT3D); test views "
        f"{FEW_VIEW_TARGETS} ({len(FEW_VIEW_TARGETS)} per scan) at 400×300 with their own cameras; {masked}. "
        f"{setup} Reference rows: CAT3D (arXiv 2405.10314v1) Table 1, {views} views (its ZeroNVS* and ReconFusion "
        "rows are ReconFusion's).",
        "",
        "| scan | gt→pred scale | pose scale | PSNR | SSIM | LPIPS | masked PSNR | masked SSIM | masked LPIPS | views "
        "| run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in table:
        scales = f"{_fmt(row.get('gt_to_pred_scale', ''), 2)} | {_fmt(row.get('pose_scale', ''))}"
        if "error" in row:
            lines.append(f"| {row['scan']} | {scales} | failed: {row['error']} | | | | | | | |")
            continue
        masked_cells = " | ".join(
            _fmt(row.get(key), 2 if key == "psnr_masked" else 4) if key in row else "n/a" for key in MASKED_COLUMNS
        )
        lines.append(
            f"| {row['scan']} | {scales} | {_fmt(row['psnr'], 2)} | {_fmt(row['ssim'])} | {_fmt(row['lpips'])} | "
            f"{masked_cells} | {row['n_views']} | {row.get('run', '')} |"
        )
    for method, values in CAT3D_TABLE.items():
        psnr_value, ssim_value, lpips_value = values[views]
        lines.append(f"| {method} (CAT3D Table 1) | | | {psnr_value:.2f} | {ssim_value:.3f} | {lpips_value:.3f} | "
                     "| | | | |")
    return lines


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
    parser.add_argument("--views", type=int, choices=VIEW_COUNTS, default=1,
                        help="input views: 1 = ZeroNVS's protocol (view 25); 3, 6, 9 = RegNeRF's few-view split")
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


def check_common_arguments(args: argparse.Namespace) -> None:
    """``--steps``, ``--extra``, ``--gpus`` and ``--slurm-time`` of both eval scripts: one line, exit 2."""
    if args.steps is not None and args.steps < 1:
        bad_input("--steps must be >= 1")
    for item in args.extra:
        if "=" not in item:
            bad_input(f"--extra takes key=value overrides, got {item!r}")
    from launcher import parse_gpus, parse_slurm_time

    from threestudio.utils.errors import UserError

    try:
        parse_gpus(args.gpus), parse_slurm_time(args.slurm_time)
    except UserError as e:
        bad_input(str(e))


def use_lpips_weights(args: argparse.Namespace) -> None:
    """Check ``--lpips-weights DIR`` and make it absolute (every launch.py run gets it, see :func:`_launch_run`)."""
    if args.lpips_weights:
        from launch import check_lpips_folder  # the repository root is on sys.path

        problem = check_lpips_folder(args.lpips_weights)
        if problem:
            bad_input(problem)
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
    check_common_arguments(args)
    problem = up_front_problem(args, check_scenes(args.root, args.scans), *MODEL_SECTION[args.mode])
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
    from threestudio.utils.errors import UserError

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
