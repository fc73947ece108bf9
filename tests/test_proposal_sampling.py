"""Proposal sampling and the proposal loss against a reference of nerfacc 0.5.3 (tests/nerfacc_reference.py)."""

from __future__ import annotations

import math

import pytest
import torch

from tests import nerfacc_reference as ref
from threestudio.models.renderers.rendering import interlevel_loss, render_weights, sample_pdf, spacing_to_distance
from threestudio.models.renderers.samplers import interval_midpoints, sample_importance, sample_proposal

D = torch.float64


def rows(*values):
    return torch.tensor([list(v) for v in values], dtype=D)


# ---------------------------------------------------------------- hand-checked cases
@pytest.mark.parametrize(
    "bins, weights, expected",
    [
        # the whole ray [0, 1]: points at 1/8, 3/8, 5/8, 7/8, edges halfway
        ([0.0, 1.0], [1.0], [0.0, 0.25, 0.5, 0.75, 1.0]),
        # empty ray: the leftover transmittance puts all mass in the last interval [0.5, 1]
        ([0.0, 0.5, 1.0], [0.0, 0.0], [0.5, 0.625, 0.75, 0.875, 1.0]),
        # fully opaque first interval: all mass in [0, 0.5]
        ([0.0, 0.5, 1.0], [1.0, 0.0], [0.0, 0.125, 0.25, 0.375, 0.5]),
        # all mass in the last interval (opaque there): the same CDF as the empty ray
        ([0.0, 0.5, 1.0], [0.0, 1.0], [0.5, 0.625, 0.75, 0.875, 1.0]),
        # half the mass in [0, 0.2], the rest left over in the last interval [0.2, 1] (worked out in the test)
        ([0.0, 0.2, 1.0], [0.5, 0.0], None),
    ],
)
def test_sample_pdf_hand_checked(bins, weights, expected):
    n = 4
    edges = sample_pdf(rows(bins), rows(weights), n, randomized=False)[0].tolist()
    reference, _ = ref.importance_sampling(bins, [0.0] + [min(sum(weights[: i + 1]), 1.0) for i in
                                                          range(len(weights) - 1)] + [1.0], n, 0.5)
    if expected is None:
        # CDF [0, 0.5, 1]: u = 1/8, 3/8 → t = 0.05, 0.15; u = 5/8, 7/8 → t = 0.2 + 0.8·(1/4), 0.2 + 0.8·(3/4)
        points = [0.05, 0.15, 0.4, 0.8]
        expected = [max(0.05 - 0.05, 0.0), 0.1, 0.275, 0.6, min(0.8 + 0.2, 1.0)]
        assert ref.importance_sampling(bins, [0.0, 0.5, 1.0], n, 0.5)[1] == pytest.approx(points)
    assert edges == pytest.approx(expected, abs=1e-12)
    assert reference == pytest.approx(expected, abs=1e-12)


def test_sample_pdf_edges_stay_inside_the_previous_range():
    bins = rows([0.2, 0.3, 0.5, 0.9])
    for weights in ([0.3, 0.3, 0.1], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]):
        edges = sample_pdf(bins, rows(weights), 7, randomized=False)
        assert edges.shape == (1, 8) and (edges[:, 1:] >= edges[:, :-1]).all()
        assert edges.min() >= 0.2 and edges.max() <= 0.9
    assert sample_pdf(bins, rows([0.3, 0.3, 0.1]), 1, randomized=False).tolist() == [[0.2, 0.9]]


def test_randomized_sampling_draws_one_offset_per_ray():
    n_rays, n = 64, 8
    bins = torch.linspace(0, 1, 6, dtype=D).expand(n_rays, -1)
    weights = torch.softmax(torch.randn(n_rays, 5, dtype=D), -1) * 0.8
    torch.manual_seed(3)
    edges = sample_pdf(bins, weights, n, randomized=True)
    torch.manual_seed(3)
    biases = torch.rand(n_rays, 1, dtype=D)[:, 0].tolist()  # the one draw per ray the sampler made
    cdf = torch.cat([torch.zeros(n_rays, 1, dtype=D), weights[:, :-1].cumsum(-1), torch.ones(n_rays, 1, dtype=D)], -1)
    for r in range(n_rays):
        expected, _ = ref.importance_sampling(bins[r].tolist(), cdf[r].tolist(), n, biases[r])
        assert edges[r].tolist() == pytest.approx(expected, abs=1e-12)
    # on the whole ray the points are (i + b)/n: every inner interval is exactly 1/n long, b varies over rays
    whole = sample_pdf(torch.tensor([[0.0, 1.0]], dtype=D).expand(n_rays, -1), torch.ones(n_rays, 1, dtype=D), n, True)
    inner = whole[:, 2:-1] - whole[:, 1:-2]
    assert torch.allclose(inner, torch.full_like(inner, 1.0 / n))
    assert whole[:, 1].std() > 0.02


# ---------------------------------------------------------------- sample_proposal vs PropNetEstimator.sampling
def blob_density(center, scale, floor=0.0):
    center = torch.tensor(center, dtype=D)

    def density(points):
        return scale * torch.exp(-((points - center) ** 2).sum(-1, keepdim=True) / 0.05) + floor

    return density


def reference_sigma_fn(density, rays_o, rays_d):
    def sigma(t0, t1):  # nerfacc's prop_sigma_fn: the density at the interval midpoint
        point = rays_o + rays_d * ((t0 + t1) / 2.0)
        return float(density(point[None])[0, 0])

    return sigma


def camera_rays(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    rays_o = torch.tensor([2.5, 0.3, 0.2], dtype=D).expand(n, -1).clone()
    target = torch.randn(n, 3, generator=g, dtype=D) * 0.4
    rays_d = torch.nn.functional.normalize(target - rays_o, dim=-1)
    rays_d[:3] = torch.tensor([0.0, 0.0, 1.0], dtype=D)  # a few rays that miss the blobs entirely
    return rays_o, rays_d


@pytest.mark.parametrize("sampling_type, near, far", [("lindisp", 0.5, 1000.0), ("uniform", 0.5, 5.0)])
@pytest.mark.parametrize("n_levels", [1, 2])
def test_sample_proposal_equals_nerfacc_prop_net_sampling(sampling_type, near, far, n_levels):
    rays_o, rays_d = camera_rays()
    densities = [blob_density([0.0, 0.0, 0.0], 40.0, 0.01), blob_density([0.1, -0.1, 0.0], 80.0)][:n_levels]
    prop_samples = [32, 16][:n_levels]
    to_distance = lambda s: spacing_to_distance(s, near, far, sampling_type)  # noqa: E731
    s_final, levels = sample_proposal(rays_o, rays_d, densities, prop_samples, 24, to_distance, randomized=False,
                                      requires_grad=False, fast_paths="off")
    assert s_final.shape == (rays_o.shape[0], 25) and len(levels) == n_levels
    for r in range(rays_o.shape[0]):
        sigma_fns = [reference_sigma_fn(d, rays_o[r], rays_d[r]) for d in densities]
        final, ref_levels = ref.prop_net_sampling(sigma_fns, prop_samples, 24, near, far, sampling_type)
        assert s_final[r].tolist() == pytest.approx(final, abs=1e-5)
        for (s_level, _), (ref_edges, _) in zip(levels, ref_levels):
            assert s_level[r].tolist() == pytest.approx(ref_edges, abs=1e-5)
    # float32, as in training: the same edges to 1e-5
    s32, _ = sample_proposal(rays_o.float(), rays_d.float(), [lambda p, d=d: d(p.double()).float() for d in densities],
                             prop_samples, 24, to_distance, randomized=False, requires_grad=False, fast_paths="off")
    assert torch.allclose(s32.double(), s_final, atol=1e-5)


def test_rays_that_miss_spend_their_samples_at_the_far_end():
    """nerfacc's CDF puts the leftover transmittance into the last interval: an empty ray's final samples all lie in
    the proposal's last interval (towards far), not spread from near to far."""
    rays_o, rays_d = camera_rays()
    to_distance = lambda s: spacing_to_distance(s, 0.5, 1000.0, "lindisp")  # noqa: E731
    empty = lambda p: torch.zeros(p.shape[0], 1, dtype=p.dtype)  # noqa: E731
    s_final, levels = sample_proposal(rays_o, rays_d, [empty], [64], 64, to_distance, False, False, "off")
    assert torch.allclose(s_final[:, 0], levels[0][0][:, -2].to(D))
    assert torch.allclose(s_final[:, -1], torch.ones(rays_o.shape[0], dtype=D))


def test_sample_importance_starts_like_nerfacc_and_merges_both_levels():
    rays_o, rays_d = camera_rays(n=6)
    density = blob_density([0.0, 0.0, 0.0], 40.0, 0.01)
    to_distance = lambda s: spacing_to_distance(s, 0.5, 5.0, "uniform")  # noqa: E731
    s = sample_importance(rays_o, rays_d, density, 8, 16, to_distance, randomized=False, fast_paths="off")
    assert s.shape == (6, 9 + 17) and (s[:, 1:] >= s[:, :-1]).all()
    for r in range(6):
        sigma = reference_sigma_fn(density, rays_o[r], rays_d[r])
        fine, levels = ref.prop_net_sampling([sigma], [8], 16, 0.5, 5.0, "uniform")
        assert s[r].tolist() == pytest.approx(sorted(levels[0][0] + fine), abs=1e-9)


# ---------------------------------------------------------------- interlevel_loss vs _pdf_loss
def weights_on(edges_s, density, rays_o, rays_d, to_distance):
    points, deltas = interval_midpoints(rays_o, rays_d, to_distance(edges_s))
    sigmas = density(points.reshape(-1, 3)).reshape(deltas.shape)
    return render_weights(sigmas, deltas, "off")[0], sigmas


def test_interlevel_loss_equals_nerfacc_pdf_loss():
    rays_o, rays_d = camera_rays()
    to_distance = lambda s: spacing_to_distance(s, 0.5, 1000.0, "lindisp")  # noqa: E731
    proposal = blob_density([0.0, 0.0, 0.0], 30.0, 0.02)
    nerf = blob_density([0.05, 0.0, 0.0], 120.0)
    s_final, levels = sample_proposal(rays_o, rays_d, [proposal], [32], 24, to_distance, False, False, "off")
    s_env = levels[0][0]
    w_env, sig_env = weights_on(s_env, proposal, rays_o, rays_d, to_distance)
    w, sig = weights_on(s_final, nerf, rays_o, rays_d, to_distance)
    loss = interlevel_loss(s_final, w, s_env, w_env)
    per_ray = []
    for r in range(rays_o.shape[0]):
        to_t = lambda s: ref.stot(s, 0.5, 1000.0, "lindisp")  # noqa: E731
        cdf_q = ref.cdf_from_densities(s_final[r].tolist(), sig[r].tolist(), to_t)
        cdf_k = ref.cdf_from_densities(s_env[r].tolist(), sig_env[r].tolist(), to_t)
        per_ray.append(ref.pdf_loss(s_final[r].tolist(), cdf_q, s_env[r].tolist(), cdf_k))
    expected = sum(per_ray) / len(per_ray)
    assert expected > 1e-4  # the NeRF's blob is not inside the proposal's envelope everywhere
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_interlevel_loss_hand_checked():
    t = rows([0.0, 0.5, 1.0])
    # empty NeRF ray (its mass, the leftover transmittance, sits in [0.5, 1]) against an envelope that is opaque in
    # [0, 0.5] (no envelope mass beyond): the last interval misses all its mass → (1 − 0)² / (1 + 1e-7) / 2 intervals
    assert interlevel_loss(t, rows([0.0, 0.0]), t, rows([1.0, 0.0])).item() == pytest.approx(0.5 / (1 + 1e-7))
    # the other way round: NeRF opaque in [0, 0.5], envelope empty → the first interval misses its mass
    # (the envelope edge 0.6 lies beyond the NeRF's 0.5: a NeRF edge exactly on an envelope edge would take the
    # next envelope interval into its bound, nerfacc's "right" search)
    t_env = rows([0.0, 0.6, 1.0])
    assert interlevel_loss(t, rows([1.0, 0.0]), t_env, rows([0.0, 0.0])).item() == pytest.approx(0.5 / (1 + 1e-7))
    assert interlevel_loss(t, rows([1.0, 0.0]), t, rows([0.0, 0.0])).item() == 0.0
    # all NeRF mass in the last interval, envelope the same → nothing to penalise
    assert interlevel_loss(t, rows([0.0, 1.0]), t, rows([0.0, 0.0])).item() == 0.0
    # an envelope edge inside the NeRF interval: the bound spans every envelope interval it overlaps
    t_env = rows([0.0, 0.25, 0.75, 1.0])
    # (NeRF [0, 0.5] holds 0.3 ≤ envelope [0, 0.75] 0.3; NeRF [0.5, 1] holds 0.7 ≤ envelope [0.25, 1] 1.0)
    assert interlevel_loss(t, rows([0.3, 0.3]), t_env, rows([0.0, 0.3, 0.0])).item() == 0.0
    # the NeRF's first interval [0, 0.5] holds 0.3 but the envelope's intervals it overlaps hold 0.25 + 0 → penalised
    loss = interlevel_loss(t, rows([0.3, 0.3]), t_env, rows([0.25, 0.0, 0.0]))
    assert loss.item() == pytest.approx(((0.3 - 0.25) ** 2 / (0.3 + 1e-7) + 0.0) / 2)


def test_interlevel_loss_trains_only_the_envelope():
    t = torch.linspace(0, 1, 9, dtype=D).expand(3, -1)
    w = (torch.softmax(torch.randn(3, 8, dtype=D), -1) * 0.9).requires_grad_(True)
    w_env = torch.zeros(3, 8, dtype=D)
    w_env[:, 0] = 0.5
    w_env.requires_grad_(True)
    loss = interlevel_loss(t, w, t, w_env)
    loss.backward()
    assert w.grad is None and w_env.grad.abs().sum() > 0
    assert math.isfinite(loss.item())
