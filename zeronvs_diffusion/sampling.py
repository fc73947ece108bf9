"""DDIM sampling of novel views with classifier-free guidance (ZeroNVS's direct sampling)."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from zeronvs_diffusion.camera import Number
from zeronvs_diffusion.prior import DiffusionPrior


def ddim_sample_latents(
    model: DiffusionPrior,
    c_crossattn: Tensor,
    c_concat: Tensor,
    steps: int = 50,
    eta: float = 1.0,
    guidance_scale: float = 3.0,
    generator: Optional[torch.Generator] = None,
    x_T: Optional[Tensor] = None,
    on_step: Optional[Callable[[int], None]] = None,
) -> Tensor:
    """DDIM from noise to scaled latents (N,C,h,w) given conditionings (N,1,context) and (N,C,h,w).

    The unconditional branch uses zeros for both conditionings (after the projection), batched as
    [uncond; cond]; guidance_scale 1 skips it. ``x_T`` (N,C,h,w) replaces the initial noise.
    ``on_step(i)`` is called after step i (0-based), e.g. to advance a progress bar.
    """
    from diffusers import DDIMScheduler

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    scheduler = DDIMScheduler.from_config(model.scheduler.config)  # set_timesteps mutates: use a private copy
    scheduler.set_timesteps(steps, device=model.device)
    n = c_crossattn.shape[0]
    shape = (n, model.latent_channels) + tuple(c_concat.shape[-2:])
    if x_T is None:
        latents = torch.randn(shape, generator=generator, device=generator.device if generator else "cpu")
    else:
        if tuple(x_T.shape) != shape:
            raise ValueError(f"x_T must have shape {shape}, got {tuple(x_T.shape)}")
        latents = x_T
    latents = latents.to(device=model.device, dtype=torch.float32)
    use_cfg = guidance_scale != 1.0
    if use_cfg:
        c_crossattn = torch.cat([torch.zeros_like(c_crossattn), c_crossattn])
        c_concat = torch.cat([torch.zeros_like(c_concat), c_concat])
    for i, t in enumerate(scheduler.timesteps):
        x_in = torch.cat([latents, latents]) if use_cfg else latents
        eps = model.predict_eps(x_in, t, c_crossattn, c_concat)
        if use_cfg:
            eps_uncond, eps_cond = eps.chunk(2)
            eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
        latents = scheduler.step(eps, t, latents, eta=eta, generator=generator).prev_sample
        if on_step is not None:
            on_step(i)
    return latents


@torch.no_grad()
def sample_views(
    model: DiffusionPrior,
    cond_img01: Tensor,
    cond_c2w: Tensor,
    target_c2w: Tensor,
    fov_deg: Number,
    scale: Number,
    steps: int = 50,
    eta: float = 1.0,
    guidance_scale: float = 3.0,
    generator: Optional[torch.Generator] = None,
    x_T: Optional[Tensor] = None,
    on_step: Optional[Callable[[int], None]] = None,
) -> Tensor:
    """Novel views (N,3,H,W) in [0,1] of ``cond_img01`` at N target cameras.

    Args:
        cond_img01: (1 or N, H, W, 3) condition image(s) in [0,1] (RGBA is composited on white).
        cond_c2w: (1 or N, 4, 4) OpenGL camera-to-world of the condition view(s).
        target_c2w: (N, 4, 4) cameras to render.
        fov_deg, scale: field of view (deg) and scene scale, scalars or (N,).
        steps, eta, guidance_scale: DDIM settings (ZeroNVS's direct sampling: 50, 1.0, 3.0).
        generator, x_T: seed the noise, or give the initial latents (N,C,h,w).
        on_step: called with the step index after every DDIM step (progress).
    """
    c_crossattn, c_concat = model.conditionings(cond_img01, cond_c2w, target_c2w, fov_deg, scale)
    latents = ddim_sample_latents(model, c_crossattn, c_concat, steps, eta, guidance_scale, generator, x_T, on_step)
    return ((model.decode(latents).float() + 1.0) / 2.0).clamp(0.0, 1.0)
