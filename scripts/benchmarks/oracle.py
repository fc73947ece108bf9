"""Oracle SDS check: held-out orbit PSNR of single-image SDS against the oracle prior, an inverted-pose control,
the PSNR-vs-steps curve, and held-out PSNR against field evaluations per step for a few renderer settings.

Each run is ``scripts/oracle_run.py``'s ``run_oracle_sds`` (what ``scripts/oracle_sds.py`` runs). The control runs the
same with ``zeronvs_diffusion.camera.relative_pose`` monkeypatched to return the inverse relative pose — a
benchmark/test-only patch, not a user option. ``--renderers S+P,...`` adds runs on the first scene with S samples
per ray and P proposal samples (the quality-per-work table).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import logging
import os
from typing import Any, Dict, Iterator, List

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    default_scenes = sorted(glob.glob(os.path.join(ROOT, "configs", "oracle_scenes", "*.yaml")))
    parser.add_argument("--scenes", nargs="+", default=default_scenes, help="scene YAMLs (default: all shipped)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--height", type=int, default=32)
    parser.add_argument("--eval-every", type=int, default=50, help="curve resolution of the good runs (0: off)")
    parser.add_argument("--no-control", action="store_true", help="skip the inverted-pose control runs")
    parser.add_argument("--no-good", action="store_true", help="skip the good runs (e.g. only the control)")
    parser.add_argument("--renderers", default="", help="quality-per-work runs on the first scene, e.g. 16+16,32+32")
    parser.add_argument("--out", default=os.path.join(ROOT, "outputs", "oracle_bench"))
    parser.add_argument("overrides", nargs="*", help="config overrides key=value for every run")


@contextlib.contextmanager
def inverted_relative_pose() -> Iterator[None]:
    """Make the guidance embed the inverse relative pose (target → cond instead of cond → target)."""
    import zeronvs_diffusion.camera as camera

    original = camera.relative_pose
    camera.relative_pose = lambda cond_c2w, target_c2w: original(target_c2w, cond_c2w)
    try:
        yield
    finally:
        camera.relative_pose = original


def _run(scene: str, out: str, args: argparse.Namespace, extra: List[str], eval_every: int) -> Dict[str, Any]:
    from oracle_run import run_oracle_sds  # scripts/ is on sys.path (scripts/bench.py)

    return run_oracle_sds(scene, out, steps=args.steps, height=args.height, overrides=[*args.overrides, *extra],
                          eval_every=eval_every)


def run(args: argparse.Namespace) -> Dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")  # the curve as it goes
    results: Dict[str, Any] = {"scenes": {}, "quality_per_work": []}
    for scene in args.scenes:
        name = os.path.splitext(os.path.basename(scene))[0]
        entry = results["scenes"].setdefault(name, {})
        if not args.no_good:
            entry["good"] = _run(scene, os.path.join(args.out, name, "good"), args, [], args.eval_every)
        if not args.no_control:
            with inverted_relative_pose():
                entry["control"] = _run(scene, os.path.join(args.out, name, "control"), args, [], 0)
    for setting in filter(None, args.renderers.split(",")):
        samples, proposal = (int(v) for v in setting.split("+"))
        extra = [f"system.renderer.num_samples_per_ray={samples}",
                 f"system.renderer.num_samples_per_ray_proposal={proposal}"]
        r = _run(args.scenes[0], os.path.join(args.out, f"work_{samples}_{proposal}"), args, extra, 0)
        results["quality_per_work"].append({"samples_per_ray": samples, "proposal_samples": proposal, **r})
    return results
