"""ZeroNVS diffusion throughput: CFG noise predictions/s, DDIM novel views/s, one SDS step (random full-size weights).

Builds the full-size model from zeronvs_config.yaml with random weights (no checkpoint needed), then times
  * UNet classifier-free-guidance noise predictions (cond + uncond in one batch) per second, per batch size;
  * DDIM novel views per second at 50 steps (measured with --steps, extrapolated from the per-step time);
  * one SDS step: VAE-encode a rendered 256² image, CFG noise prediction, backward of the latent gradient
    into the image; its time and peak memory;
  * with --dtype bf16 or fp16: the relative error ‖ε_half − ε_fp32‖ / ‖ε_fp32‖ of the CFG noise prediction
    (conditioning included) against the same random weights in fp32 (must be ≤ 2e-2), run after the timings so
    that the reported peak memory is the half-precision model's;
  * with --error-only: only that error (no timings; with --fixture DIR also the error of ε and of the VAE latents
    of a fixture checkpoint — ``DIR/model.ckpt``, ``config.yaml``, ``reference.pt``, e.g.
    ../shared/fixtures/zeronvs_tiny — in --dtype against the original implementation's fp32 reference outputs).
CPU defaults are small (batch 1, 2 steps) so the run takes a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from typing import Any, Callable, Dict, List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CONFIG = os.path.join(
    os.environ.get("ZERONVS_SHARED_DIR", os.path.join(os.path.dirname(ROOT), "shared")),
    "fixtures",
    "zeronvs_config.yaml",
)
DDIM_STEPS = 50
HALF_PRECISION_MAX_REL_ERROR = 2e-2  # issue 5: bf16/fp16 noise predictions within 2% of fp32


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="latent-diffusion YAML (zeronvs_config.yaml)")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps to run (default: 2 on CPU, 50 on CUDA)")
    parser.add_argument(
        "--batches",
        default=None,
        help="comma-separated batch sizes, views per batch (default: 1 on CPU, 1,16,32,64 on CUDA)",
    )
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None, help="default: fp32 CPU, fp16 CUDA")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument(
        "--compile-unet",
        default=None,
        metavar="MODE",
        help="torch.compile mode for the UNet (default, reduce-overhead, ...); the warm-up compiles",
    )
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats per measurement (after one warm-up)")
    parser.add_argument("--error-only", action="store_true",
                        help="only the half-precision ε error against fp32 (needs --dtype bf16 or fp16), no timings")
    parser.add_argument("--fixture", default=None, metavar="DIR",
                        help="with --error-only: also the error on a fixture checkpoint against its reference.pt")


def _timer(device: str) -> Callable[[], float]:
    import torch

    def now() -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    return now


def _peak_memory_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _cfg_eps(model: Any, batch: int, device: str, seed: int = 0) -> Any:
    """UNet noise prediction (2·batch, C, h, w) fp32 on the SDS's CFG batch [uncond; cond] at seeded inputs.

    The condition image, target cameras, noisy latents and timesteps (in [20, 980)) are drawn on the CPU from
    ``seed``, so every model sees the same inputs; the conditionings are computed by ``model`` itself.
    """
    import torch

    gen = torch.Generator(device="cpu").manual_seed(seed)
    res = model.conditioning.vae_resolution
    img = torch.rand(1, res, res, 3, generator=gen)
    target_c2w = torch.eye(4).repeat(batch, 1, 1)
    target_c2w[:, :3, 3] = torch.rand(batch, 3, generator=gen) - 0.5
    t = torch.randint(20, 980, (batch,), generator=gen).repeat(2).to(device)
    with torch.no_grad():
        c_crossattn, c_concat = model.conditionings(img, torch.eye(4)[None], target_c2w, 50.0, 0.7)
        x = torch.randn((2 * batch, model.latent_channels) + tuple(c_concat.shape[2:]), generator=gen).to(device)
        cross2 = torch.cat([torch.zeros_like(c_crossattn), c_crossattn])
        concat2 = torch.cat([torch.zeros_like(c_concat), c_concat])
        return model.predict_eps(x, t, cross2, concat2).float()


def half_precision_error(args: argparse.Namespace, half_model: Any, batch: int, device: str) -> Tuple[float, Any]:
    """‖ε_half − ε_fp32‖ / ‖ε_fp32‖ of :func:`_cfg_eps` for ``half_model`` and the same random weights in fp32,
    and the shape of ε."""
    import torch

    from zeronvs_diffusion import load_model

    reference = load_model("random", args.config, dtype="fp32", device=device)
    probe_fp32, probe_half = reference.unet.conv_in.weight, half_model.unet.conv_in.weight
    if not torch.equal(probe_fp32.to(probe_half.dtype), probe_half):
        raise RuntimeError("the fp32 reference model does not hold the half-precision model's weights")
    eps_fp32 = _cfg_eps(reference, batch, device)
    del reference
    eps_half = _cfg_eps(half_model, batch, device)
    return float((eps_half - eps_fp32).norm() / eps_fp32.norm()), tuple(eps_fp32.shape)


def fixture_errors(fixture: str, dtype_name: str) -> Dict[str, float]:
    """‖out − ref‖ / ‖ref‖ of the UNet's ε and the scaled VAE latents of ``fixture/model.ckpt`` loaded in
    ``dtype_name``, at the inputs of ``fixture/reference.pt`` (the original implementation's fp32 outputs)."""
    import torch

    from zeronvs_diffusion import load_model

    ref = torch.load(os.path.join(fixture, "reference.pt"), map_location="cpu", weights_only=True)
    model = load_model(os.path.join(fixture, "model.ckpt"), os.path.join(fixture, "config.yaml"), dtype=dtype_name)
    with torch.no_grad():
        eps = model.predict_eps(ref["x_noisy"], ref["t"], ref["c_crossattn"], ref["c_concat"]).float()
        latents = model.encode_concat(ref["img01"].permute(0, 2, 3, 1)).float() * model.conditioning.scale_factor
    return {"eps_rel_error_vs_reference": float((eps - ref["eps"]).norm() / ref["eps"].norm()),
            "latents_rel_error_vs_reference": float((latents - ref["latents_scaled"]).norm()
                                                    / ref["latents_scaled"].norm())}


def error_only(args: argparse.Namespace, device: str, dtype_name: str) -> Dict[str, Any]:
    """The --error-only run: ε error of the full-size random model in ``dtype_name`` against fp32 (CFG batch of
    the first batch size) and, with --fixture, the fixture's errors against its reference in both dtypes."""
    from zeronvs_diffusion import load_model

    if dtype_name == "fp32":
        raise SystemExit("--error-only compares a half precision with fp32: pass --dtype bf16 or fp16")
    batch = int((args.batches or "1").split(",")[0])
    result: Dict[str, Any] = {"device": device, "dtype": dtype_name, "batch": batch}
    if args.fixture:
        result["fixture"] = args.fixture
        result["fixture_errors"] = {name: fixture_errors(args.fixture, name) for name in ("fp32", dtype_name)}
        print(f"[diffusion] fixture {args.fixture}: {result['fixture_errors']}")
    error, eps_shape = half_precision_error(args, load_model("random", args.config, dtype=dtype_name, device=device),
                                            batch, device)
    result.update(eps_rel_error_vs_fp32=error, eps_shape=list(eps_shape), config=args.config)
    print(f"[diffusion] full-size random weights, {dtype_name} ε vs fp32 (CFG batch, ε {eps_shape}): {error:.2e}")
    return result


def run(args: argparse.Namespace) -> Dict[str, Any]:
    import torch

    from zeronvs_diffusion import load_model
    from zeronvs_diffusion.errors import CheckpointError
    from zeronvs_diffusion.sampling import ddim_sample_latents

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    on_cpu = device == "cpu"
    steps = args.steps or (2 if on_cpu else DDIM_STEPS)
    batches: List[int] = [int(b) for b in (args.batches or ("1" if on_cpu else "1,16,32,64")).split(",")]
    dtype_name = args.dtype or ("fp32" if on_cpu else "fp16")
    if not os.path.isfile(args.config):
        raise CheckpointError(
            f"{args.config} not found; pass --config zeronvs_config.yaml (shipped with the checkpoint)"
        )
    if args.error_only:
        return error_only(args, device, dtype_name)
    now = _timer(device)

    t0 = now()
    model = load_model("random", args.config, dtype=dtype_name, device=device)
    load_s = now() - t0
    res = model.conditioning.vae_resolution
    gen = torch.Generator(device="cpu").manual_seed(0)
    result: Dict[str, Any] = {
        "device": device,
        "dtype": dtype_name,
        "steps": steps,
        "batches": batches,
        "random_model_build_s": round(load_s, 2),
        "cfg_predictions_per_s": {},
        "ddim_views_per_s_50_steps": {},
    }
    print(f"[diffusion] {device} {dtype_name}: built random full-size model in {load_s:.1f}s")
    if args.compile_unet:
        model.compile_unet(args.compile_unet)
        result["compile_unet"] = args.compile_unet

    for batch in batches:
        img = torch.rand(1, res, res, 3, generator=gen)
        cond_c2w = torch.eye(4)[None]
        target_c2w = torch.eye(4).repeat(batch, 1, 1)
        target_c2w[:, 0, 3] = torch.linspace(-0.5, 0.5, batch)
        with torch.no_grad():
            c_crossattn, c_concat = model.conditionings(img, cond_c2w, target_c2w, 50.0, 1.0)
            cross2 = torch.cat([torch.zeros_like(c_crossattn), c_crossattn])
            concat2 = torch.cat([torch.zeros_like(c_concat), c_concat])
            x = torch.randn((2 * batch,) + tuple(c_concat.shape[1:]), generator=gen).to(device)
            t = torch.full((2 * batch,), 500, device=device)
            model.predict_eps(x, t, cross2, concat2)  # warm-up
            t0 = now()
            for _ in range(args.repeats):
                model.predict_eps(x, t, cross2, concat2)
            per_call = (now() - t0) / args.repeats
            result["cfg_predictions_per_s"][batch] = round(batch / per_call, 3)

            if args.compile_unet:  # compile for the sampler's inputs before timing it
                ddim_sample_latents(model, c_crossattn, c_concat, steps=1, eta=1.0, guidance_scale=3.0, generator=gen)
            t0 = now()
            latents = ddim_sample_latents(
                model, c_crossattn, c_concat, steps=steps, eta=1.0, guidance_scale=3.0, generator=gen
            )
            model.decode(latents)
            sample_s = now() - t0
        total_50 = sample_s + max(0, DDIM_STEPS - steps) * per_call
        result["ddim_views_per_s_50_steps"][batch] = round(batch / total_50, 4)
        print(
            f"[diffusion] batch {batch}: {batch / per_call:.2f} CFG predictions/s; DDIM {steps} steps + decode "
            f"{sample_s:.1f}s → {DDIM_STEPS}-step views/s ≈ {batch / total_50:.4f}"
        )

    # one SDS step at the first batch size
    batch = batches[0]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rgb = torch.rand(batch, res, res, 3, generator=gen).to(device).requires_grad_(True)
    with torch.no_grad():
        c_crossattn, c_concat = model.conditionings(
            rgb.detach()[:1], torch.eye(4)[None], torch.eye(4).repeat(batch, 1, 1), 50.0, 1.0
        )
    t0 = now()
    for _ in range(args.repeats):
        latents = model.encode_latents(rgb)
        with torch.no_grad():
            t = torch.randint(20, 980, (batch,), generator=gen).to(device)
            noise = torch.randn(latents.shape, generator=gen).to(device=device, dtype=latents.dtype)
            noisy = model.scheduler.add_noise(latents.detach(), noise, t)
            eps = model.predict_eps(
                torch.cat([noisy, noisy]),
                torch.cat([t, t]),
                torch.cat([torch.zeros_like(c_crossattn), c_crossattn]),
                torch.cat([torch.zeros_like(c_concat), c_concat]),
            )
            eps_u, eps_c = eps.chunk(2)
            grad = eps_u + 3.0 * (eps_c - eps_u) - noise
        (latents * grad).sum().backward()
        rgb.grad = None
    sds_s = (now() - t0) / args.repeats
    result["sds_step_s"] = round(sds_s, 3)
    result["sds_batch"] = batch
    result["peak_memory_mb"] = round(_peak_memory_mb(device), 1)
    result["peak_memory_kind"] = "torch.cuda.max_memory_allocated" if device == "cuda" else "process ru_maxrss"
    print(
        f"[diffusion] SDS step (batch {batch}, {res}² image): {sds_s:.2f}s; peak memory "
        f"{result['peak_memory_mb']:.0f} MiB ({result['peak_memory_kind']})"
    )

    if dtype_name != "fp32":
        error, eps_shape = half_precision_error(args, model, batch, device)
        ok = error <= HALF_PRECISION_MAX_REL_ERROR
        result.update(eps_rel_error_vs_fp32=error, eps_rel_error_max=HALF_PRECISION_MAX_REL_ERROR, eps_rel_error_ok=ok)
        print(
            f"[diffusion] {dtype_name} noise prediction vs fp32 (CFG batch, ε {eps_shape}): "
            f"relative error {error:.2e} {'≤' if ok else '>'} {HALF_PRECISION_MAX_REL_ERROR:g} "
            f"({'ok' if ok else 'TOO LARGE'})"
        )
    return result
