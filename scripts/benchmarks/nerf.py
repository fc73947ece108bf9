"""NeRF render throughput: rays/s for forward + backward at the paper's hash grid + proposal configuration.

Builds the ZeroNVS paper geometry (16-level hash grid, analytic normals), diffuse material, random background and
proposal renderer (64 proposal + 64 rendered samples per ray, lindisp, near 0.5, far 1000), then times full
training steps (render, RGB + proposal loss, backward) on random rays through the scene's inner ball.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Dict

PAPER_GEOMETRY = {
    "radius": 2.0, "normal_type": "analytic", "density_bias": "blob_magic3d", "density_activation": "softplus",
    "density_blob_scale": 5.0, "density_blob_std": 0.5,
    "pos_encoding_config": {"otype": "HashGrid", "n_levels": 16, "n_features_per_level": 2, "log2_hashmap_size": 19,
                            "base_resolution": 16, "per_level_scale": 1.447269237440378},
    "mlp_network_config": {"otype": "VanillaMLP", "activation": "ReLU", "output_activation": "none",
                           "n_neurons": 32, "n_hidden_layers": 2},
}
PAPER_MATERIAL = {"ambient_only_steps": 0, "textureless_prob": 0.05, "albedo_activation": "sigmoid"}
PAPER_BACKGROUND = {"color": [0.5, 0.5, 0.5], "learned": False, "random_aug": True, "random_aug_prob": 1.0}
PAPER_RENDERER = {
    "radius": 2.0, "return_comp_normal": True, "estimator": "proposal", "near_plane": 0.5, "far_plane": 1000.0,
    "sampling_type": "lindisp", "num_samples_per_ray": 64, "num_samples_per_ray_importance": 32,
    "num_samples_per_ray_proposal": 64,
    "proposal_network_config": {
        "n_input_dims": 3, "n_output_dims": 1,
        "encoding_config": {"otype": "HashGrid", "n_levels": 5, "n_features_per_level": 2, "log2_hashmap_size": 17,
                            "base_resolution": 16, "per_level_scale": 1.681792830507429},
        "network_config": {"otype": "VanillaMLP", "activation": "ReLU", "output_activation": "none",
                           "n_neurons": 64, "n_hidden_layers": 1},
    },
    "prop_optimizer_config": {"name": "Adam", "args": {"lr": 0.005, "eps": 1.0e-15, "weight_decay": 1.0e-6}},
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--rays", type=int, default=None, help="rays per step (default: 512 on CPU, 16384 on CUDA)")
    parser.add_argument("--iters", type=int, default=None, help="timed steps (default: 3 on CPU, 20 on CUDA)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--fast-paths", choices=["auto", "off"], default="auto",
                        help="off = pure PyTorch even where tiny-cuda-nn is installed")
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

    geometry_cfg = dict(PAPER_GEOMETRY, normal_type=None if args.normal_type == "none" else args.normal_type)
    geometry = threestudio.find("implicit-volume")(geometry_cfg)
    material = threestudio.find("diffuse-with-point-light-material")(PAPER_MATERIAL)
    background = threestudio.find("solid-color-background")(PAPER_BACKGROUND)
    renderer = threestudio.find("nerf-volume-renderer")(PAPER_RENDERER, geometry, material, background)
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
            loss = loss + 1e-3 * (out["weights"].detach() * (out["normal"] * out["t_dirs"]).sum(-1, keepdim=True)
                                  .clamp_min(0) ** 2).sum() / n_rays
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
        "rays_per_step": n_rays,
        "samples_per_ray": PAPER_RENDERER["num_samples_per_ray"] + PAPER_RENDERER["num_samples_per_ray_proposal"],
        "timed_steps": iters,
        "seconds_per_step": round(seconds, 4),
        "rays_per_second": round(n_rays / seconds, 1),
    }
    if on_gpu:
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return result
