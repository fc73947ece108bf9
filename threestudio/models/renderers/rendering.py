"""Volume-rendering primitives on dense (n_rays, n_samples) tensors.

Samples are intervals between consecutive *edges* along each ray. Sampling happens in a normalised spacing
``s ∈ [0, 1]`` (the nerfacc/mip-NeRF 360 convention) that :func:`spacing_to_distance` maps onto ``[near, far]``:
``uniform`` (linear in distance) or ``lindisp`` (linear in inverse distance, i.e. disparity: dense near the camera,
sparse towards a far plane of, e.g., 1000). Distances are measured in units of ``‖rays_d‖``.

:func:`render_weights` and :func:`accumulate` take the fast-path mode (``"auto"``/``"off"``, the system's
``fast_paths``): in mode auto, float32 CUDA tensors go through the Triton kernels of
:mod:`threestudio.kernels.compositing` when they passed their self-check; the code below is the reference.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from threestudio.utils.errors import ConfigError
from threestudio.utils.fast_paths import parse_fast_paths, triton_kernels

SAMPLING_TYPES = ("uniform", "lindisp")


def spacing_to_distance(s: Tensor, near: Union[float, Tensor], far: Union[float, Tensor], sampling_type: str) -> Tensor:
    """Normalised spacing s (R, K) in [0, 1] → distances t (R, K) in [near, far]."""
    if sampling_type == "uniform":
        return near + (far - near) * s
    if sampling_type == "lindisp":
        return 1.0 / (1.0 / near * (1.0 - s) + 1.0 / far * s)
    raise ConfigError(f"unknown sampling_type {sampling_type!r}; use one of {SAMPLING_TYPES}")


def unit_edges(
    n_rays: int, n_samples: int, randomized: bool, device: Optional[torch.device] = None, dtype=torch.float32
) -> Tensor:
    """``n_samples`` intervals covering [0, 1]: edges (n_rays, n_samples + 1), 0 and 1 included.

    With ``randomized`` every interior edge moves uniformly within ±half a bin (stratified sampling).
    """
    edges = torch.linspace(0.0, 1.0, n_samples + 1, device=device, dtype=dtype).expand(n_rays, -1)
    if randomized and n_samples > 1:
        jitter = (torch.rand(n_rays, n_samples - 1, device=device, dtype=dtype) - 0.5) / n_samples
        edges = edges.clone()
        edges[:, 1:-1] += jitter
    return edges


def _compositing_kernels(fast_paths: str, *tensors: Tensor):
    """The Triton compositing kernels when they may take these tensors (mode auto, float32, one device), else None."""
    if parse_fast_paths(fast_paths) == "off" or any(t.dtype != torch.float32 for t in tensors):
        return None
    if any(t.device != tensors[0].device for t in tensors):
        return None
    return triton_kernels("compositing", fast_paths, tensors[0].device)


def render_weights(sigmas: Tensor, deltas: Tensor, fast_paths: str = "auto") -> Tuple[Tensor, Tensor, Tensor]:
    """Compositing weights from densities.

    sigmas, deltas (R, S) → weights (R, S) = T_i·α_i, transmittance T_i (R, S) = exp(−Σ_{j<i} σ_j δ_j) (light
    reaching sample i), alphas α_i (R, S) = 1 − exp(−σ_i δ_i). Σ_i weights = 1 − exp(−Σ σδ) ≤ 1.
    """
    kernels = _compositing_kernels(fast_paths, sigmas, deltas)
    if kernels is not None and sigmas.dim() == 2 and sigmas.shape == deltas.shape:
        return kernels.render_weights(sigmas, deltas)
    sigma_delta = sigmas * deltas
    alphas = 1.0 - torch.exp(-sigma_delta)
    accumulated = torch.cumsum(sigma_delta, dim=-1)
    transmittance = torch.exp(-torch.cat([torch.zeros_like(accumulated[:, :1]), accumulated[:, :-1]], dim=-1))
    return transmittance * alphas, transmittance, alphas


def accumulate(weights: Tensor, values: Optional[Tensor] = None, fast_paths: str = "auto") -> Tensor:
    """Σ_i w_i·v_i along rays: weights (R, S), values (R, S, C) → (R, C); values None → opacity (R, 1)."""
    if values is None:
        return weights.sum(dim=-1, keepdim=True)
    kernels = _compositing_kernels(fast_paths, weights, values)
    if kernels is not None and weights.dim() == 2 and values.dim() == 3 and values.shape[:2] == weights.shape:
        return kernels.accumulate(weights, values)
    return (weights[..., None] * values).sum(dim=-2)


def sample_pdf(bins: Tensor, weights: Tensor, n_samples: int, randomized: bool, eps: float = 1e-5) -> Tensor:
    """Inverse-CDF importance sampling of ``n_samples`` new intervals.

    bins (R, K+1) sorted interval edges, weights (R, K) ≥ 0 → new edges (R, n_samples + 1) spanning
    [bins[:, 0], bins[:, -1]], denser where the weights are larger (piecewise-constant pdf within each bin).
    A small ``eps`` mixes in a uniform pdf so empty rays still get spread samples. No gradient flows.
    """
    bins, weights = bins.detach(), weights.detach()
    pdf = weights + eps
    pdf = pdf / pdf.sum(dim=-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, dim=-1)], dim=-1).clamp(max=1.0)
    cdf[:, -1] = 1.0
    u = unit_edges(bins.shape[0], n_samples, randomized, device=bins.device, dtype=bins.dtype).contiguous()
    idx = torch.searchsorted(cdf.contiguous(), u, right=True)
    below = (idx - 1).clamp(0, cdf.shape[-1] - 1)
    above = idx.clamp(0, cdf.shape[-1] - 1)
    cdf_lo, cdf_hi = cdf.gather(-1, below), cdf.gather(-1, above)
    bin_lo, bin_hi = bins.gather(-1, below), bins.gather(-1, above)
    denom = cdf_hi - cdf_lo
    frac = torch.where(denom > 0, (u - cdf_lo) / denom.clamp_min(1e-12), torch.zeros_like(u))
    return bin_lo + frac * (bin_hi - bin_lo)


def outer_weights(t: Tensor, t_env: Tensor, w_env: Tensor) -> Tensor:
    """Upper bound on the weight of each interval of t (R, S+1) given weights w_env (R, P) on edges t_env (R, P+1):

    the sum of the envelope weights of every envelope interval that overlaps it (mip-NeRF 360's ``outer``) → (R, S).
    """
    cumulative = torch.cat([torch.zeros_like(w_env[:, :1]), torch.cumsum(w_env, dim=-1)], dim=-1)  # (R, P+1)
    idx = torch.searchsorted(t_env.contiguous(), t.contiguous(), right=True)  # first envelope edge > t
    last = t_env.shape[-1] - 1
    idx_lo = (idx - 1).clamp(0, last)  # last envelope edge <= t
    idx_hi = idx.clamp(0, last)
    return cumulative.gather(-1, idx_hi[:, 1:]) - cumulative.gather(-1, idx_lo[:, :-1])


def interlevel_loss(t: Tensor, w: Tensor, t_env: Tensor, w_env: Tensor, eps: float = 1e-7) -> Tensor:
    """mip-NeRF 360 proposal loss (``lossfun_outer``): penalise NeRF weights above the proposal envelope.

    t (R, S+1), w (R, S): the NeRF's edges and weights (detached here: only the proposal learns);
    t_env (R, P+1), w_env (R, P): the proposal's. Edges in any common monotonic spacing. Mean over all samples.
    """
    t, w = t.detach(), w.detach()
    bound = outer_weights(t, t_env.detach(), w_env)
    return (torch.clamp(w - bound, min=0.0) ** 2 / (w + eps)).mean()
