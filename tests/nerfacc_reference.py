"""A per-ray, plain-Python reference of nerfacc 0.5.3's proposal sampling and proposal loss, for the tests.

Written from reading nerfacc's source (``nerfacc/estimators/prop_net.py``: ``PropNetEstimator.sampling``,
``_transform_stot``, ``compute_loss``, ``_pdf_loss``; ``nerfacc/cuda/csrc/pdf.cu``: ``importance_sampling_kernel``,
``compute_intervels_kernel``, ``searchsorted_kernel``; ``nerfacc/volrend.py``: ``render_transmittance_from_density``)
— not a copy, and no nerfacc dependency. One ray at a time, Python floats (double precision), loops instead of
tensor ops, so that it shares no code path with :mod:`threestudio.models.renderers`.
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple

Edges = List[float]


def cdf_from_densities(s_edges: Edges, sigmas: Sequence[float], to_t: Callable[[float], float]) -> Edges:
    """1 − [T_0, …, T_{n−1}, 0] with T_i = exp(−Σ_{j<i} σ_j (t_{j+1} − t_j)) (nerfacc's CDF at the edges)."""
    t = [to_t(s) for s in s_edges]
    cdf, optical_depth = [], 0.0
    for i, sigma in enumerate(sigmas):
        cdf.append(1.0 - math.exp(-optical_depth))
        optical_depth += sigma * (t[i + 1] - t[i])
    cdf.append(1.0)
    return cdf


def upper_bound(values: Sequence[float], start: int, end: int, x: float) -> int:
    """First index in [start, end) whose value is > x, or end (the kernels' binary search)."""
    while start < end:
        mid = start + (end - start) // 2
        if not values[mid] > x:
            start = mid + 1
        else:
            end = mid
    return start


def importance_sampling(edges: Edges, cdf: Edges, n: int, bias: float) -> Tuple[Edges, List[float]]:
    """One ray of ``importance_sampling_kernel`` + ``compute_intervels_kernel``: n points at CDF quantiles
    (i + bias)/n, then the edges (n + 1) between them."""
    last = len(edges) - 1
    u_floor, u_ceil = cdf[0], cdf[last]
    u_step = (u_ceil - u_floor) / n
    points = []
    for i in range(n):
        u = u_floor + (i + bias) * u_step
        p = upper_bound(cdf, 0, last, u)
        p0, p1 = max(min(p - 1, last), 0), max(min(p, last), 0)
        if cdf[p1] - cdf[p0] < 1e-10:
            points.append((edges[p0] + edges[p1]) * 0.5)
        else:
            points.append((u - cdf[p0]) * ((edges[p1] - edges[p0]) / (cdf[p1] - cdf[p0])) + edges[p0])
    out = [max(points[0] - (points[1] - points[0]) * 0.5, edges[0])]
    out += [(points[i] + points[i - 1]) * 0.5 for i in range(1, n)]
    out.append(min(points[-1] + (points[-1] - points[-2]) * 0.5, edges[last]))
    return out, points


def stot(s: float, near: float, far: float, sampling_type: str) -> float:
    """``_transform_stot``: normalised spacing → distance."""
    if sampling_type == "uniform":
        return s * far + (1 - s) * near
    return 1.0 / (s * (1.0 / far) + (1 - s) * (1.0 / near))


def prop_net_sampling(
    sigma_fns: Sequence[Callable[[float, float], float]],
    prop_samples: Sequence[int],
    num_samples: int,
    near: float,
    far: float,
    sampling_type: str,
    biases: Optional[Sequence[float]] = None,
) -> Tuple[Edges, List[Tuple[Edges, Edges]]]:
    """``PropNetEstimator.sampling`` for one ray: final s-edges and, per level, its (s-edges, CDF).

    ``sigma_fns[k](t_start, t_end)`` is level k's density of an interval. ``biases`` (one per draw, levels then the
    final one) replace the 0.5 of evaluation (nerfacc draws them per ray in training).
    """
    biases = list(biases) if biases is not None else [0.5] * (len(prop_samples) + 1)
    to_t = lambda s: stot(s, near, far, sampling_type)  # noqa: E731
    edges, cdf = [0.0, 1.0], [0.0, 1.0]
    levels = []
    for k, (sigma_fn, n) in enumerate(zip(sigma_fns, prop_samples)):
        edges, _ = importance_sampling(edges, cdf, n, biases[k])
        t = [to_t(s) for s in edges]
        sigmas = [sigma_fn(t[i], t[i + 1]) for i in range(n)]
        cdf = cdf_from_densities(edges, sigmas, to_t)
        levels.append((edges, cdf))
    final, _ = importance_sampling(edges, cdf, num_samples, biases[-1])
    return final, levels


def pdf_loss(query: Edges, cdf_query: Edges, key: Edges, cdf_key: Edges, eps: float = 1e-7) -> float:
    """``_pdf_loss`` of one ray, averaged over its query intervals (the ``.mean()`` of ``compute_loss`` over equal
    rays)."""
    last = len(key) - 1
    left, right = [], []
    for q in query:  # searchsorted_kernel: key[left] <= q < key[right], clamped to the key's edges
        p = upper_bound(key, 0, last, q)
        left.append(max(min(p - 1, last), 0))
        right.append(max(min(p, last), 0))
    total = 0.0
    for i in range(len(query) - 1):
        w = cdf_query[i + 1] - cdf_query[i]
        w_outer = cdf_key[right[i + 1]] - cdf_key[left[i]]
        total += max(w - w_outer, 0.0) ** 2 / (w + eps)
    return total / (len(query) - 1)
