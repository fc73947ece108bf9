"""NeRF render throughput: rays/s for forward + backward at the paper's hash grid + proposal configuration.

Builds the geometry, material, background and renderer of ``--config`` (default configs/zeronvs.yaml, the paper's:
16-level hash grid, analytic normals, proposal sampling with 64 + 64 samples per ray, lindisp, near 0.5, far 1000),
then times full training steps (render, RGB + proposal + orientation loss, backward, Adam) on random rays through
the scene's inner ball. ``--backend torch`` is the pure-PyTorch reference (``system.fast_paths=off``); ``triton``
is ``fast_paths=auto``: the Triton kernels on CUDA (tiny-cuda-nn instead where it is installed). The result says
which kernels passed their self-check and ran (``triton_kernels``). ``--encoding-only`` times just the geometry's
hash grid at ``--samples`` points: forward + backward into the table, and the Jacobian path (explicit normals).
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from typing import Any, Dict

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BACKENDS = {"torch": "off", "triton": "auto"}  # --backend -> system.fast_paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "zeronvs.yaml"),
                        help="pipeline config whose system.geometry/material/background/renderer are timed")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--rays", type=int, default=None, help="rays per step (default: 512 on CPU, 16384 on CUDA)")
    parser.add_argument("--iters", type=int, default=None, help="timed steps (default: 3 on CPU, 20 on CUDA)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="triton",
                        help="torch = the pure-PyTorch reference (fast_paths off); triton = fast_paths auto (the "
                             "Triton kernels on CUDA)")
    parser.add_argument("--encoding-only", action="store_true",
                        help="time only the geometry's hash grid (encode + table backward, and the Jacobian path)")
    parser.add_argument("--samples", type=int, default=None,
                        help="points per encoding step with --encoding-only (default: 2^20 on CUDA, 2^16 on CPU)")
    parser.add_argument("--grad-checkpoint-chunk", type=int, default=None,
                        help="renderer.grad_checkpoint_chunk_size (samples per checkpointed chunk; 0 = keep the "
                             "whole graph; default: the config's)")
    parser.add_argument("--normal-method", default=None, choices=["autograd", "explicit"],
                        help="geometry.analytic_normal_method (default: the config's; explicit: no double backward "
                        "through the grid)")
    parser.add_argument("--normal-type", default="analytic", choices=["analytic", "finite_difference", "none"],
                        help="geometry.normal_type (analytic = paper: double backward through the hash grid)")


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _kernel_status(args: argparse.Namespace, device) -> Dict[str, bool]:
    """Which Triton kernels ran; a warning on stderr when ``--backend triton`` on CUDA fell back to the reference."""
    import sys

    from threestudio.utils import fast_paths

    status = fast_paths.triton_kernel_status()
    if args.backend == "triton" and device.type == "cuda" and not (status and all(status.values())):
        print(f"warning: --backend triton, but not every Triton kernel ran ({status}); see the log", file=sys.stderr)
    return status


def run(args: argparse.Namespace) -> Dict[str, Any]:
    import torch

    import threestudio
    from threestudio.utils import fast_paths
    from threestudio.utils.config import config_to_primitive, load_config
    from threestudio.utils.loss import orientation_loss

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    on_gpu = device.type == "cuda"
    n_rays = args.rays or (16384 if on_gpu else 512)
    iters = args.iters or (20 if on_gpu else 3)
    mode = BACKENDS[args.backend]
    torch.manual_seed(0)

    system = config_to_primitive(load_config(args.config).system)
    if args.encoding_only:
        return _time_encoding(args, system, mode, device)
    normal_method = args.normal_method or system["geometry"].get("analytic_normal_method", "autograd")
    geometry_cfg = dict(system["geometry"], normal_type=None if args.normal_type == "none" else args.normal_type,
                        analytic_normal_method=normal_method)
    geometry = threestudio.find(system["geometry_type"])(geometry_cfg, fast_paths=mode)
    # shading is timed, as after ZeroNVS's ambient-only phase
    material = threestudio.find(system["material_type"])(dict(system["material"], ambient_only_steps=0))
    background = threestudio.find(system["background_type"])(system["background"])
    renderer_cfg = dict(system["renderer"])
    if args.grad_checkpoint_chunk is not None:
        renderer_cfg["grad_checkpoint_chunk_size"] = args.grad_checkpoint_chunk
    renderer = threestudio.find(system["renderer_type"])(renderer_cfg, geometry, material, background, fast_paths=mode)
    for module in (geometry, material, background, renderer):
        module.to(device).train()
    params = list(geometry.parameters()) + list(renderer.proposal_network.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-3)

    # rays from cameras 1.5-2 units away aimed through the inner ball, as in ZeroNVS's random views
    origins = torch.nn.functional.normalize(torch.randn(n_rays, 3, device=device), dim=-1) * 1.8
    targets = torch.randn(n_rays, 3, device=device) * 0.3
    rays_o = origins.reshape(1, 1, n_rays, 3)
    rays_d = torch.nn.functional.normalize(targets - origins, dim=-1).reshape(1, 1, n_rays, 3)
    light = torch.tensor([[3.0, 3.0, 3.0]], device=device)
    target_rgb = torch.rand(1, 1, n_rays, 3, device=device)

    def step() -> None:
        out = renderer(rays_o, rays_d, light_positions=light)
        loss = ((out["comp_rgb"] - target_rgb) ** 2).mean() + out["loss_proposal"]
        if "normal" in out:
            loss = loss + 1e-3 * orientation_loss(out["weights"], out["normal"], out["t_dirs"], out["opacity"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    _sync(device)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    seconds = (time.perf_counter() - start) / iters
    result = {
        "device": str(device),
        "backend": args.backend,
        "tcnn": fast_paths.use_tcnn(mode) if on_gpu else False,
        "triton_kernels": _kernel_status(args, device),
        "normal_type": args.normal_type,
        "analytic_normal_method": normal_method,
        "rays_per_step": n_rays,
        "config": args.config,
        "samples_per_ray": renderer.cfg.num_samples_per_ray + renderer.cfg.num_samples_per_ray_proposal,
        "grad_checkpoint_chunk_size": renderer.cfg.grad_checkpoint_chunk_size,
        "timed_steps": iters,
        "seconds_per_step": round(seconds, 4),
        "rays_per_second": round(n_rays / seconds, 1),
    }
    if on_gpu:
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    else:  # the whole process's peak resident memory (KiB on Linux)
        result["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return result


def _time_encoding(args: argparse.Namespace, system: Dict[str, Any], mode: str, device) -> Dict[str, Any]:
    """Seconds per forward + table backward of the geometry's hash grid, plain and with its input Jacobian."""
    import torch

    from threestudio.models.networks import get_encoding

    grid = get_encoding(3, system["geometry"]["pos_encoding_config"], fast_paths=mode).to(device)
    n = args.samples or (2**20 if device.type == "cuda" else 2**16)
    iters = args.iters or (20 if device.type == "cuda" else 3)
    x = torch.rand(n, 3, device=device)

    def encode() -> None:
        grid(x).square().sum().backward()

    def jacobian() -> None:
        value, jac = grid.forward_with_jacobian(x)
        (value.square().sum() + jac.square().sum()).backward()

    result: Dict[str, Any] = {"device": str(device), "backend": args.backend, "samples": n, "timed_steps": iters,
                              "encoding": type(grid).__name__, "n_levels": getattr(grid, "n_levels", None)}
    for name, fn in (("encode_fwd_bwd", encode), ("jacobian_fwd_bwd", jacobian)):
        if name == "jacobian_fwd_bwd" and not hasattr(grid, "forward_with_jacobian"):
            continue
        for _ in range(args.warmup):
            fn()
        _sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        _sync(device)
        seconds = (time.perf_counter() - start) / iters
        result[f"{name}_s"] = round(seconds, 5)
        result[f"{name}_samples_per_s"] = round(n / seconds)
    result["triton_kernels"] = _kernel_status(args, device)
    if device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return result
