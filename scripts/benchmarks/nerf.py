"""NeRF render throughput: rays/s for forward + backward at the paper's hash grid + proposal configuration.

Builds the geometry, material, background and renderer of ``--config`` (default configs/zeronvs.yaml, the paper's:
16-level hash grid, analytic normals, proposal sampling with 64 + 64 samples per ray, lindisp, near 0.5, far 1000),
then times full training steps (render, RGB + proposal + orientation loss, backward, Adam) on random rays through
the scene's inner ball.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from typing import Any, Dict

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "zeronvs.yaml"),
                        help="pipeline config whose system.geometry/material/background/renderer are timed")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--rays", type=int, default=None, help="rays per step (default: 512 on CPU, 16384 on CUDA)")
    parser.add_argument("--iters", type=int, default=None, help="timed steps (default: 3 on CPU, 20 on CUDA)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--fast-paths", choices=["auto", "off"], default="auto",
                        help="off = pure PyTorch even where tiny-cuda-nn is installed")
    parser.add_argument("--grad-checkpoint-chunk", type=int, default=None,
                        help="renderer.grad_checkpoint_chunk_size (samples per checkpointed chunk; 0 = keep the "
                             "whole graph; default: the config's)")
    parser.add_argument("--normal-method", default="autograd", choices=["autograd", "explicit"],
                        help="geometry.analytic_normal_method (explicit: no double backward through the grid)")
    parser.add_argument("--normal-type", default="analytic", choices=["analytic", "finite_difference", "none"],
                        help="geometry.normal_type (analytic = paper: double backward through the hash grid)")


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


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
    fast_paths.set_fast_paths(args.fast_paths)
    torch.manual_seed(0)

    system = config_to_primitive(load_config(args.config).system)
    geometry_cfg = dict(system["geometry"], normal_type=None if args.normal_type == "none" else args.normal_type,
                        analytic_normal_method=args.normal_method)
    geometry = threestudio.find(system["geometry_type"])(geometry_cfg)
    # shading is timed, as after ZeroNVS's ambient-only phase
    material = threestudio.find(system["material_type"])(dict(system["material"], ambient_only_steps=0))
    background = threestudio.find(system["background_type"])(system["background"])
    renderer_cfg = dict(system["renderer"])
    if args.grad_checkpoint_chunk is not None:
        renderer_cfg["grad_checkpoint_chunk_size"] = args.grad_checkpoint_chunk
    renderer = threestudio.find(system["renderer_type"])(renderer_cfg, geometry, material, background)
    for module in (geometry, material, background, renderer):
        module.to(device).train()
    params = list(geometry.parameters()) + list(renderer.proposal_networks.parameters())
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
        "tcnn": fast_paths.use_tcnn() if on_gpu else False,
        "normal_type": args.normal_type,
        "analytic_normal_method": args.normal_method,
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
