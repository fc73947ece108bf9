"""Where to put samples along rays: stratified, importance (coarse-to-fine on the field) or proposal networks.

All samplers work in the normalised spacing s ∈ [0, 1] of :mod:`.rendering` and return interval edges
(R, S+1); ``to_distance`` maps s to distances along the ray (near/far and uniform/lindisp spacing). The
importance sampler follows ZeroNVS's ``ImportanceEstimator`` (coarse samples from the field itself, merged with
the fine ones); the proposal sampler follows nerfacc 0.5.3's ``PropNetEstimator.sampling`` (a small density network
proposes, only the fine samples are rendered). Both resample with :func:`.rendering.sample_pdf` (nerfacc's
``importance_sampling``), starting from the one interval [0, 1] with a uniform CDF: the first level's points lie at
(i + b)/n, its edges at the midpoints (the first edge ≥ 0, the last ≤ 1).
"""

from __future__ import annotations

from typing import Callable, List, Sequence, Tuple

import torch
from torch import Tensor

from threestudio.models.renderers.rendering import render_weights, sample_pdf, unit_edges

DensityFn = Callable[[Tensor], Tensor]  # points (..., 3) -> density (..., 1)
ToDistance = Callable[[Tensor], Tensor]  # spacing s (R, K) -> distance t (R, K)


def interval_midpoints(rays_o: Tensor, rays_d: Tensor, t_edges: Tensor) -> Tuple[Tensor, Tensor]:
    """Points (R, S, 3) at the interval midpoints and the interval lengths (R, S), from edges t (R, S+1)."""
    t_mid = 0.5 * (t_edges[:, 1:] + t_edges[:, :-1])
    return rays_o[:, None, :] + rays_d[:, None, :] * t_mid[..., None], t_edges[:, 1:] - t_edges[:, :-1]


def interval_weights(
    rays_o: Tensor,
    rays_d: Tensor,
    s_edges: Tensor,
    density_fn: DensityFn,
    to_distance: ToDistance,
    fast_paths: str = "auto",
) -> Tensor:
    """Compositing weights (R, S) of the density field ``density_fn`` on the intervals s_edges (R, S+1)
    (``fast_paths``: the mode of :func:`.rendering.render_weights`)."""
    points, deltas = interval_midpoints(rays_o, rays_d, to_distance(s_edges))
    sigmas = density_fn(points.reshape(-1, 3)).reshape(deltas.shape)
    return render_weights(sigmas, deltas, fast_paths)[0]


def sample_stratified(n_rays: int, n_samples: int, randomized: bool, device: torch.device) -> Tensor:
    """Stratified edges s (n_rays, n_samples + 1)."""
    return unit_edges(n_rays, n_samples, randomized, device=device)


def _whole_ray(n_rays: int, device: torch.device, dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
    """The starting level of nerfacc's estimators: one interval [0, 1] per ray, edges (R, 2), all mass in it (R, 1)."""
    edges = torch.tensor([0.0, 1.0], device=device, dtype=dtype).expand(n_rays, -1)
    return edges, torch.ones(n_rays, 1, device=device, dtype=dtype)


@torch.no_grad()
def sample_importance(
    rays_o: Tensor,
    rays_d: Tensor,
    density_fn: DensityFn,
    n_coarse: int,
    n_fine: int,
    to_distance: ToDistance,
    randomized: bool,
    fast_paths: str = "auto",
) -> Tensor:
    """Coarse stratified samples weighted by the field itself (no gradient), then ``n_fine`` importance samples;
    returns the sorted union of both edge sets (R, n_coarse + n_fine + 2)."""
    s_coarse = sample_pdf(*_whole_ray(rays_o.shape[0], rays_o.device, rays_o.dtype), n_coarse, randomized)
    weights = interval_weights(rays_o, rays_d, s_coarse, density_fn, to_distance, fast_paths)
    s_fine = sample_pdf(s_coarse, weights, n_fine, randomized)
    return torch.sort(torch.cat([s_coarse, s_fine], dim=-1), dim=-1).values


def sample_proposal(
    rays_o: Tensor,
    rays_d: Tensor,
    proposal_density_fns: Sequence[DensityFn],
    proposal_samples: Sequence[int],
    n_fine: int,
    to_distance: ToDistance,
    randomized: bool,
    requires_grad: bool,
    fast_paths: str = "auto",
) -> Tuple[Tensor, List[Tuple[Tensor, Tensor]]]:
    """Resample through each proposal density in turn, then draw ``n_fine`` intervals (nerfacc's
    ``PropNetEstimator.sampling``: every level and the final draw use :func:`.rendering.sample_pdf` on the previous
    level's compositing weights, the first level on the whole ray [0, 1]; ``randomized`` = its ``stratified``).

    Returns the final edges s (R, n_fine + 1) and, per proposal level, its (edges (R, P+1), weights (R, P)) — with
    a graph into the proposal network when ``requires_grad`` — for :func:`.rendering.interlevel_loss`.
    """
    if not proposal_density_fns or len(proposal_density_fns) != len(proposal_samples):
        raise ValueError("sample_proposal needs one sample count per proposal density function")
    levels: List[Tuple[Tensor, Tensor]] = []
    previous = _whole_ray(rays_o.shape[0], rays_o.device, rays_o.dtype)
    for density_fn, n_samples in zip(proposal_density_fns, proposal_samples):
        s = sample_pdf(*previous, n_samples, randomized)
        with torch.set_grad_enabled(requires_grad):
            weights = interval_weights(rays_o, rays_d, s, density_fn, to_distance, fast_paths)
        previous = (s, weights)
        levels.append(previous)
    return sample_pdf(*previous, n_fine, randomized), levels
