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


def nerfacc_cdf(weights: Tensor) -> Tensor:
    """CDF (R, K+1) at the edges of K intervals from their compositing weights (R, K), nerfacc's convention
    ``1 − [transmittance…, 0]``: [0, w_0, w_0 + w_1, …, 1]. The transmittance left at the far end of the ray
    (1 − Σ w) falls into the last interval, so an empty ray has all its mass there."""
    inner = torch.cumsum(weights[:, :-1], dim=-1).clamp(max=1.0)
    zeros, ones = torch.zeros_like(weights[:, :1]), torch.ones_like(weights[:, :1])
    return torch.cat([zeros, inner, ones], dim=-1)


def sample_pdf(bins: Tensor, weights: Tensor, n_samples: int, randomized: bool) -> Tensor:
    """Resample ``n_samples`` intervals from compositing weights as nerfacc's ``importance_sampling``.

    bins (R, K+1) sorted interval edges, weights (R, K) ≥ 0 the compositing weights on them (Σ ≤ 1; the rest of the
    mass goes to the last interval, :func:`nerfacc_cdf`) → new edges (R, n_samples + 1). ``n_samples`` points are
    drawn at the quantiles (i + b)/n of the piecewise-linear CDF (b = 0.5, or with ``randomized`` one uniform b per
    ray); the edges are the midpoints between consecutive points, the first and last half a spacing beyond the end
    points, clamped to [bins[:, 0], bins[:, -1]]. With one sample the edges are the bins' ends. No gradient flows.
    """
    bins, weights = bins.detach(), weights.detach()
    cdf = nerfacc_cdf(weights)
    n_rays, last = bins.shape[0], bins.shape[-1] - 1
    u_floor, u_ceil = cdf[:, :1], cdf[:, -1:]
    u_step = (u_ceil - u_floor) / n_samples
    if randomized:
        bias = torch.rand(n_rays, 1, device=bins.device, dtype=bins.dtype)
    else:
        bias = torch.full((n_rays, 1), 0.5, device=bins.device, dtype=bins.dtype)
    sample_ids = torch.arange(n_samples, device=bins.device, dtype=bins.dtype)
    u = u_floor + (sample_ids + bias) * u_step  # (R, n)
    # first CDF edge above u among all but the last edge ("right" search): cdf[p − 1] <= u < cdf[p]
    p = torch.searchsorted(cdf[:, :-1].contiguous(), u.contiguous(), right=True)
    p0, p1 = (p - 1).clamp(0, last), p.clamp(0, last)
    u_lo, u_hi = cdf.gather(-1, p0), cdf.gather(-1, p1)
    t_lo, t_hi = bins.gather(-1, p0), bins.gather(-1, p1)
    flat = (u_hi - u_lo) < 1e-10
    slope = (t_hi - t_lo) / torch.where(flat, torch.ones_like(u_hi), u_hi - u_lo)
    points = torch.where(flat, (t_lo + t_hi) * 0.5, (u - u_lo) * slope + t_lo)
    return edges_around_points(points, bins[:, :1], bins[:, -1:])


def edges_around_points(points: Tensor, t_min: Tensor, t_max: Tensor) -> Tensor:
    """Interval edges (R, n+1) around sorted sample points (R, n): midpoints between neighbours, the outer edges
    half a neighbour spacing beyond the end points, clamped to [t_min, t_max] (R, 1) (one point: [t_min, t_max])."""
    if points.shape[-1] == 1:
        return torch.cat([t_min, t_max], dim=-1)
    middle = (points[:, 1:] + points[:, :-1]) * 0.5
    first = torch.maximum(points[:, :1] - (points[:, 1:2] - points[:, :1]) * 0.5, t_min)
    final = torch.minimum(points[:, -1:] + (points[:, -1:] - points[:, -2:-1]) * 0.5, t_max)
    return torch.cat([first, middle, final], dim=-1)


def outer_weights(t: Tensor, t_env: Tensor, cdf_env: Tensor) -> Tensor:
    """Upper bound on the mass of each interval of t (R, S+1) given the envelope's CDF cdf_env (R, P+1) at its
    edges t_env (R, P+1): the envelope mass from the envelope edge at or below each interval's start to the first
    envelope edge above its end (mip-NeRF 360's ``outer``, as nerfacc's ``searchsorted``) → (R, S)."""
    last = t_env.shape[-1] - 1
    idx = torch.searchsorted(t_env[:, :-1].contiguous(), t.contiguous(), right=True)  # cdf edge above t, in [0, P]
    idx_lo = (idx - 1).clamp(0, last)  # last envelope edge <= t
    idx_hi = idx.clamp(0, last)
    return cdf_env.gather(-1, idx_hi[:, 1:]) - cdf_env.gather(-1, idx_lo[:, :-1])


def interlevel_loss(t: Tensor, w: Tensor, t_env: Tensor, w_env: Tensor, eps: float = 1e-7) -> Tensor:
    """The proposal loss of nerfacc's ``PropNetEstimator`` (``_pdf_loss``, mip-NeRF 360's ``lossfun_outer``):
    penalise NeRF mass above the proposal envelope.

    t (R, S+1), w (R, S): the NeRF's edges and raw compositing weights (detached here: only the proposal learns);
    t_env (R, P+1), w_env (R, P): the proposal's. Both sides use :func:`nerfacc_cdf` (the transmittance left past
    the far end counts in the last interval). Edges in any common monotonic spacing. Mean over all NeRF intervals.
    """
    cdf = nerfacc_cdf(w.detach())
    mass = cdf[:, 1:] - cdf[:, :-1]
    bound = outer_weights(t.detach(), t_env.detach(), nerfacc_cdf(w_env))
    return (torch.clamp(mass - bound, min=0.0) ** 2 / (mass + eps)).mean()
