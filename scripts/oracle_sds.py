#!/usr/bin/env python
"""Single-image SDS against the weight-free oracle prior of a known world; held-out orbit PSNR / SSIM.

    python scripts/oracle_sds.py --scene configs/oracle_scenes/tabletop.yaml [--steps N] [--height H]
        [--json OUT] [--out DIR] [--eval-every K] [--input-views K] [--oracle-knowledge full|visible] [key=value ...]

Runs configs/zeronvs.yaml's system, datamodule, random cameras, timestep schedule and SDS weighting (schedules
compressed to --steps) through the runner (a trial in OUT/oracle/) with a CPU-sized NeRF at H px (--full-nerf keeps
the config's NeRF and resolution stages; the oracle then works at the last stage's size), the input image being
the world rendered at the input camera. Prints and optionally writes JSON with heldout_psnr, heldout_ssim,
input_psnr, steps, wall_s (and scale, field_evals, curve, heldout_png: the picture, trial_dir), and names the picture
on stderr. ``--input-views K`` runs few-view SDS from K posed cameras (posed-inputs-datamodule);
``--oracle-knowledge visible`` makes the prior blind where its conditioning view does not see. See
docs/GUIDANCE.md, "The oracle prior", and docs/MULTIVIEW.md, "Few views".
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # oracle_run.py beside this script


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scene", required=True, help="oracle scene YAML (configs/oracle_scenes/*.yaml)")
    p.add_argument("--steps", type=int, default=400, help="SDS training steps (default 400)")
    p.add_argument("--height", type=int, default=32, help="render and oracle resolution in px (default 32)")
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "zeronvs.yaml"), help="pipeline config")
    p.add_argument("--out", default=None, help="work folder (default outputs/oracle/<scene name>)")
    p.add_argument("--json", default=None, help="also write the result as JSON here")
    p.add_argument("--eval-every", type=int, default=0, help="held-out PSNR every K steps into 'curve' (0: off)")
    p.add_argument("--orbit-views", type=int, default=12, help="views of the held-out orbit (default 12)")
    p.add_argument("--full-nerf", action="store_true", help="keep the config's NeRF and resolution stages")
    p.add_argument("--oracle-knowledge", choices=("full", "visible"), default="full",
                   help="full: the prior knows the whole world; visible: only what its conditioning view sees "
                   "(elsewhere the uninformative mean colour), as a real prior (default full)")
    p.add_argument("--input-views", type=int, default=None, metavar="K",
                   help="K posed input cameras through posed-inputs-datamodule: the scene's input camera, then "
                   "K-1 more at its elevation and distance, azimuths 360°·i/K (default: the single-image run)")
    p.add_argument("--quiet", action="store_true", help="no progress bar; warnings, errors and the result only")
    p.add_argument("overrides", nargs="*", help="config overrides key=value (they win over the script's)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.input_views is not None and args.input_views < 1:
        print("error: --input-views must be >= 1", file=sys.stderr)
        raise SystemExit(2)
    from threestudio.utils.threads import set_cpu_thread_defaults

    set_cpu_thread_defaults()  # before torch is imported (docs/PERFORMANCE.md, "CPU threads")
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("lightning.pytorch").propagate = False  # it prints its own lines: only once
    if args.quiet:
        from threestudio.utils.progress import set_quiet

        set_quiet()
    from oracle_run import run_oracle_sds

    from threestudio.utils.errors import UserError
    from threestudio.utils.noise import silence_unactionable_warnings

    silence_unactionable_warnings("train")
    from threestudio.utils.io import write_json_atomic
    from threestudio.utils.paths import user_path

    # README's configs/oracle_scenes/*.yaml (and --config configs/...) also from another folder
    args.scene, args.config = user_path(args.scene), user_path(args.config)
    name = os.path.splitext(os.path.basename(args.scene))[0]
    out_dir = args.out or os.path.join("outputs", "oracle", name)
    try:
        result = run_oracle_sds(
            args.scene, out_dir, steps=args.steps, height=args.height, overrides=args.overrides,
            config_path=args.config, cpu_sized=not args.full_nerf, orbit_views=args.orbit_views,
            eval_every=args.eval_every, input_views=args.input_views, knowledge=args.oracle_knowledge,
        )
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(result, indent=2))
    if args.json:
        write_json_atomic(args.json, result)
    # where to look (stderr: stdout stays one JSON document)
    print(f"held-out orbit picture: {result['heldout_png']} (trial: {result['trial_dir']})", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
