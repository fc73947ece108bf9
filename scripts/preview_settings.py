#!/usr/bin/env python
"""Preview scale and elevation for your own image: diffusion-only novel views, nothing trained.

    python scripts/preview_settings.py IMAGE [--fov F] [--elevation E] --scales 0.5 0.7 1.0 1.4 \\
        [--elevations 10 31 50] [--ckpt zeronvs.ckpt --model-config zeronvs_config.yaml] --out DIR

For every candidate scale (× elevation) the ZeroNVS model samples the input at a few azimuth offsets on the
orbit through the input camera (the nvs-system's DDIM sampler). Writes DIR/preview.png, one labelled row per
candidate, and DIR/preview.json (the settings, the fov used and where it came from, timing). Pick the row whose
views look like plausible turns of the scene, then pass its values to launch_inference.sh (--scale,
--elevation, --fov). ``--ckpt random --model-config configs/diffusion_tiny.yaml`` runs a tiny random model
(CPU tests; its images mean nothing). Without --fov the fov comes from the image's EXIF focal length, else 52.55
(the bundled example skimage:motorcycle_left: its calibrated 28.21).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script: make the repository's packages importable
    sys.path.insert(0, ROOT)
SCRIPTS = os.path.dirname(os.path.abspath(__file__))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", help="input image (RGB or RGBA), or skimage:NAME")
    parser.add_argument("--fov", type=float, help="vertical fov of the square crop (default: EXIF, else 52.55)")
    parser.add_argument("--elevation", type=float, default=None,
                        help="input camera elevation (default 31; the bundled example: its suggested one)")
    parser.add_argument("--elevations", type=float, nargs="+", help="candidate elevations (default: --elevation)")
    parser.add_argument("--scales", type=float, nargs="+", required=True, help="candidate scales, e.g. 0.5 0.7 1.0")
    parser.add_argument("--azimuths", type=float, nargs="+", default=[-90.0, -45.0, 45.0, 90.0, 180.0],
                        help="azimuth offsets of the sampled views, degrees")
    parser.add_argument("--ckpt", default="zeronvs.ckpt", help="zeronvs.ckpt, a converted folder, or random")
    parser.add_argument("--model-config", default=None, help="the checkpoint's YAML (default ./zeronvs_config.yaml)")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    parser.add_argument("--guidance-scale", type=float, default=3.0, help="classifier-free guidance (default 3)")
    parser.add_argument("--eta", type=float, default=1.0,
                        help="DDIM eta (default 1, as ZeroNVS; 0: deterministic, rows differ by their settings only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--out", required=True, help="output folder (preview.png, preview.json)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar; warnings and errors only")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Raise UserError for values the preview cannot use (before the model loads)."""
    from threestudio.utils.errors import UserError

    if any(not 0 < s < math.inf for s in args.scales):
        raise UserError(f"--scales must be positive finite numbers, got {args.scales}")
    if any(not math.isfinite(a) for a in args.azimuths):
        raise UserError(f"--azimuths must be finite numbers of degrees, got {args.azimuths}")
    if not math.isfinite(args.guidance_scale) or not 0 <= args.eta < math.inf:
        raise UserError(f"--guidance-scale must be finite and --eta >= 0, got {args.guidance_scale} and {args.eta}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"--out {args.out} is an existing file; give a folder (it is created)")
    if args.device is not None:
        check_device(args.device)
    if args.fov is not None and not 0 < args.fov < 180:
        raise UserError(f"--fov must lie in (0, 180) degrees, got {args.fov}")
    if any(not -90 <= e <= 90 for e in args.elevations):
        raise UserError(f"--elevation(s) must lie in [-90, 90], got {args.elevations}")
    if args.steps < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")
    from threestudio.utils.paths import user_path
    from zeronvs_diffusion.errors import missing_file_message

    if args.model_config is None and os.path.isfile("zeronvs_config.yaml"):
        args.model_config = "zeronvs_config.yaml"
    # README's `--model-config configs/diffusion_tiny.yaml` also from another folder (threestudio/utils/paths.py)
    args.ckpt = args.ckpt if args.ckpt == "random" else user_path(args.ckpt)
    args.model_config = None if args.model_config is None else user_path(args.model_config)
    if args.ckpt != "random" and not os.path.exists(args.ckpt):
        raise UserError(missing_file_message("checkpoint (--ckpt)", args.ckpt)
                        + " (or --ckpt random --model-config configs/diffusion_tiny.yaml: a tiny random model)")
    if args.model_config is not None and not os.path.isfile(args.model_config):
        raise UserError(missing_file_message("model config (--model-config)", args.model_config))


def check_device(device: str) -> None:
    """UserError for a --device torch cannot use here (cuda without CUDA, a bad name)."""
    import torch

    from threestudio.utils.errors import UserError

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {device!r} is not a device name; use cpu or cuda (cuda:N)") from None
    if parsed.type == "cuda" and (not torch.cuda.is_available() or (parsed.index or 0) >= torch.cuda.device_count()):
        raise UserError(f"--device {device}: CUDA is not available here ({torch.cuda.device_count()} GPU(s)); "
                        "use --device cpu")
    if parsed.type not in ("cpu", "cuda"):
        raise UserError(f"--device {device}: use cpu or cuda")


def input_view(image: str, fov: float | None) -> tuple:
    """(image (1, S, S, 3) on white, vertical fov, a line saying where the fov came from)."""
    from omegaconf import OmegaConf

    from threestudio.data.single_image import auto_fovy
    from threestudio.utils.image import composite, crop_to_square, load_image

    fovy, source = (fov, "--fov") if fov is not None else auto_fovy(OmegaConf.create({"image_path": image}))
    rgba = crop_to_square(load_image(image, min_side=512), "center_crop")
    return composite(rgba, 1.0)[None], float(fovy), source


def main(argv=None) -> int:
    import logging

    args = build_parser().parse_args(argv)
    from threestudio.utils.threads import set_cpu_thread_defaults

    set_cpu_thread_defaults()  # before torch is imported (docs/PERFORMANCE.md, "CPU threads")
    from threestudio.data.examples import example_camera

    example = example_camera(args.image)
    if args.elevation is None:
        args.elevation = example.elevation_deg if example is not None else 31.0
    args.elevations = args.elevations or [args.elevation]
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="[%(levelname)s] %(name)s: %(message)s")
    if args.quiet:
        from threestudio.utils.progress import set_quiet

        set_quiet()
    from threestudio.utils.errors import UserError

    try:
        check_args(args)
        image01, fovy, fov_source = input_view(args.image, args.fov)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import torch

    import zeronvs_diffusion
    from threestudio.utils.image import resize_image
    from threestudio.utils.io import write_json_atomic

    sys.path.insert(0, SCRIPTS)
    try:
        from preview import candidates, sample_candidates, save_contact_sheet  # scripts/preview.py
    finally:
        sys.path.pop(0)

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = zeronvs_diffusion.load_model(args.ckpt, config=args.model_config, device=device)
    side = model.conditioning.vae_resolution
    image01 = resize_image(image01, side, side).clamp(0, 1)
    cands = candidates(args.scales, args.elevations)
    started = time.perf_counter()
    views = sample_candidates(model, image01, fovy, cands, args.azimuths, steps=args.steps,
                              guidance_scale=args.guidance_scale, eta=args.eta, seed=args.seed)
    seconds = time.perf_counter() - started
    os.makedirs(args.out, exist_ok=True)
    title = (f"{os.path.basename(args.image)}: vertical fov {fovy:.2f}° ({fov_source}), {args.steps} DDIM steps, "
             f"guidance {args.guidance_scale:g}, model {os.path.basename(os.path.normpath(args.ckpt))}")
    sheet = save_contact_sheet(os.path.join(args.out, "preview.png"), image01, views, cands, args.azimuths, title)
    write_json_atomic(os.path.join(args.out, "preview.json"), {
        "image": args.image, "fovy_deg": fovy, "fov_source": fov_source, "scales": args.scales,
        "elevations": args.elevations, "azimuths_deg": args.azimuths, "steps": args.steps,
        "guidance_scale": args.guidance_scale, "eta": args.eta, "seed": args.seed, "ckpt": args.ckpt, "device": device,
        "rows": [{"row": i, "scale": c.scale, "elevation_deg": c.elevation_deg} for i, c in enumerate(cands)],
        "sheet": os.path.basename(sheet), "sampling_seconds": round(seconds, 2),
    })
    print(f"wrote {sheet} ({len(cands)} candidates × {len(args.azimuths)} views in {seconds:.1f} s on {device}) "
          f"and {os.path.join(args.out, 'preview.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
