"""Volume-rendering primitives, samplers and the nerf-volume-renderer end to end on tiny fields (CPU)."""

from __future__ import annotations

import math
import weakref

import pytest
import torch

import threestudio
from threestudio.models.renderers.rendering import (
    accumulate,
    interlevel_loss,
    render_weights,
    sample_pdf,
    spacing_to_distance,
)
from threestudio.models.renderers.samplers import sample_stratified
from threestudio.utils.errors import ConfigError

TINY_GRID = {"otype": "HashGrid", "n_levels": 4, "n_features_per_level": 2, "log2_hashmap_size": 10,
             "base_resolution": 4, "per_level_scale": 1.5}
TINY_MLP = {"otype": "VanillaMLP", "activation": "ReLU", "output_activation": "none", "n_neurons": 16,
            "n_hidden_layers": 1}


def make_renderer(estimator="proposal", geometry=None, material="no-material", background=None, **renderer_cfg):
    geometry_cfg = {"radius": 1.0, "normal_type": "analytic", "density_bias": "blob_magic3d",
                    "density_blob_scale": 5.0, "density_blob_std": 0.5,
                    "pos_encoding_config": TINY_GRID, "mlp_network_config": TINY_MLP, **(geometry or {})}
    geo = threestudio.find("implicit-volume")(geometry_cfg)
    mat_cfg = {"ambient_only_steps": 0} if material == "diffuse-with-point-light-material" else {}
    mat = threestudio.find(material)(mat_cfg)
    bg = threestudio.find("solid-color-background")(background or {"color": [0.2, 0.4, 0.6]})
    cfg = {"radius": 1.0, "estimator": estimator, "near_plane": 0.5, "far_plane": 6.0, "sampling_type": "uniform",
           "num_samples_per_ray": 16, "num_samples_per_ray_proposal": 16,
           "proposal_network_config": {"n_input_dims": 3, "n_output_dims": 1, "encoding_config": TINY_GRID,
                                       "network_config": TINY_MLP},
           **({"num_samples_per_ray_importance": 8} if estimator == "importance" else {}), **renderer_cfg}
    return threestudio.find("nerf-volume-renderer")(cfg, geo, mat, bg)


def camera_rays(n_views=1, height=4, width=5, distance=3.0, spread=0.1):
    """Rays (B, H, W, 3) from +x·distance looking at the origin, fanning out by ``spread``."""
    ys = torch.linspace(-spread, spread, height)
    zs = torch.linspace(-spread, spread, width)
    d = torch.stack([-torch.ones(height, width), ys[:, None].expand(-1, width), zs[None, :].expand(height, -1)], -1)
    d = torch.nn.functional.normalize(d, dim=-1)
    rays_d = d.expand(n_views, -1, -1, -1).clone()
    rays_o = torch.tensor([distance, 0.0, 0.0]).expand_as(rays_d).clone()
    return rays_o, rays_d


# ---------------------------------------------------------------- primitives
def test_render_weights_sum_at_most_one_and_closed_form():
    sigmas = torch.rand(7, 32) * 5
    deltas = torch.rand(7, 32) * 0.2
    weights, trans, alphas = render_weights(sigmas, deltas)
    assert (weights >= 0).all() and (weights.sum(-1) <= 1 + 1e-6).all()
    assert torch.allclose(weights.sum(-1), 1 - torch.exp(-(sigmas * deltas).sum(-1)), atol=1e-5)
    assert torch.allclose(trans[:, 0], torch.ones(7)) and torch.allclose(weights, trans * alphas)


def test_constant_density_slab_opacity_and_depth():
    """Density σ on [a, b], 0 elsewhere: opacity 1 − e^{−σL}, depth ∫ t σ e^{−σ(t−a)} dt."""
    sigma, a, b = 1.5, 2.0, 3.0
    L = b - a
    t = spacing_to_distance(sample_stratified(1, 5000, False, torch.device("cpu")), 0.0, 5.0, "uniform")  # (1, 5001)
    t_mid = 0.5 * (t[:, 1:] + t[:, :-1])
    sigmas = torch.where((t_mid > a) & (t_mid < b), torch.tensor(sigma), torch.tensor(0.0)).double()
    weights, _, _ = render_weights(sigmas, (t[:, 1:] - t[:, :-1]).double())
    opacity = accumulate(weights)
    depth = accumulate(weights, t_mid.double()[..., None])
    assert opacity.item() == pytest.approx(1 - math.exp(-sigma * L), abs=1e-4)
    expected_depth = a * (1 - math.exp(-sigma * L)) + 1 / sigma - math.exp(-sigma * L) * (L + 1 / sigma)
    assert depth.item() == pytest.approx(expected_depth, abs=2e-3)


def test_stratified_samples_cover_near_far_monotonically():
    for sampling_type in ("uniform", "lindisp"):
        t = spacing_to_distance(sample_stratified(9, 64, True, torch.device("cpu")), 0.5, 1000.0, sampling_type)
        assert t.shape == (9, 65)
        assert torch.allclose(t[:, 0], torch.tensor(0.5)) and torch.allclose(t[:, -1], torch.tensor(1000.0))
        assert (t[:, 1:] >= t[:, :-1]).all()
    # lindisp puts half the samples before the harmonic midpoint ~ 1/(0.5·(1/0.5 + 1/1000)) ≈ 1.0
    s_half = spacing_to_distance(torch.tensor([[0.5]]), 0.5, 1000.0, "lindisp")
    assert s_half.item() == pytest.approx(1 / (0.5 * (2.0 + 0.001)), rel=1e-5)
    with pytest.raises(ConfigError):
        spacing_to_distance(torch.zeros(1, 1), 0.5, 1.0, "log")


def test_sample_pdf_puts_samples_where_the_weights_are():
    bins = torch.linspace(0, 1, 11).expand(3, -1)
    weights = torch.zeros(3, 10)
    weights[:, 7] = 1.0  # all mass in [0.7, 0.8]
    new = sample_pdf(bins, weights, 64, randomized=True)
    assert new.shape == (3, 65) and (new[:, 1:] >= new[:, :-1]).all()
    # every interval lies inside the weighted bin (the outer edges up to half a spacing beyond its points): no
    # interval runs from near to the object or from it to far
    half_spacing = 0.1 / 64 / 2
    assert (new >= 0.7 - half_spacing - 1e-6).all() and (new <= 0.8 + half_spacing + 1e-6).all()
    # uniform weights summing to 1 → uniform edges
    uniform = sample_pdf(bins, torch.full((3, 10), 0.1), 20, randomized=False)
    assert torch.allclose(uniform, torch.linspace(0, 1, 21).expand(3, -1), atol=1e-5)


def test_interlevel_loss_zero_for_equal_and_positive_for_missed_mass():
    t = torch.linspace(0, 1, 17).expand(4, -1)
    w = torch.softmax(torch.randn(4, 16), -1) * 0.9
    assert interlevel_loss(t, w, t, w).item() == pytest.approx(0.0, abs=1e-7)
    # a coarser envelope with the same mass per coarse bin also bounds the fine weights
    t_coarse = t[:, ::2]
    w_coarse = w.reshape(4, 8, 2).sum(-1)
    assert interlevel_loss(t, w, t_coarse, w_coarse).item() == pytest.approx(0.0, abs=1e-7)
    # an envelope that puts its mass elsewhere is penalised, and the gradient reaches only the envelope
    w_env = torch.zeros(4, 16)
    w_env[:, 0] = 1.0
    w_env.requires_grad_(True)
    w_fine = w.clone().requires_grad_(True)
    loss = interlevel_loss(t, w_fine, t, w_env)
    assert loss.item() > 0
    loss.backward()
    assert w_fine.grad is None and w_env.grad.abs().sum() > 0


# ---------------------------------------------------------------- renderer
@pytest.mark.parametrize("estimator", ["proposal", "importance", "stratified"])
def test_renderer_outputs_train_and_eval(estimator):
    renderer = make_renderer(estimator, material="diffuse-with-point-light-material", return_comp_normal=True)
    rays_o, rays_d = camera_rays(n_views=2)
    renderer.train()
    out = renderer(rays_o, rays_d, light_positions=torch.tensor([[3.0, 1.0, 1.0]] * 2))
    samples_per_ray = {"proposal": 16, "stratified": 16, "importance": 8 + 16 + 1}[estimator]  # merged edge sets
    n = 2 * 4 * 5 * samples_per_ray
    for key, channels in [("comp_rgb", 3), ("comp_rgb_fg", 3), ("comp_rgb_bg", 3), ("opacity", 1), ("depth", 1),
                          ("comp_normal", 3)]:
        assert out[key].shape == (2, 4, 5, channels), key
    for key, channels in [("weights", 1), ("normal", 3), ("t_dirs", 3), ("points", 3)]:
        assert out[key].shape == (n, channels), key
    assert ("loss_proposal" in out) == (estimator == "proposal")
    assert (out["opacity"] <= 1 + 1e-5).all() and out["opacity"].max() > 0.5  # the blob is hit
    renderer.eval()
    with torch.no_grad():
        ev = renderer(rays_o, rays_d)
    assert set(ev) >= {"comp_rgb", "opacity", "depth", "comp_normal"} and "weights" not in ev
    assert ev["comp_rgb"].shape == (2, 4, 5, 3)


def test_background_composited_where_nothing_is_hit():
    renderer = make_renderer("stratified", geometry={"density_bias": -30.0})  # empty space
    rays_o, rays_d = camera_rays()
    renderer.eval()
    with torch.no_grad():
        out = renderer(rays_o, rays_d)
        override = renderer(rays_o, rays_d, bg_color=torch.tensor([[1.0, 0.0, 0.0]]))
    assert out["opacity"].max() < 1e-4
    assert torch.allclose(out["comp_rgb"], torch.tensor([0.2, 0.4, 0.6]).expand(1, 4, 5, 3), atol=1e-4)
    assert torch.allclose(override["comp_rgb"], torch.tensor([1.0, 0.0, 0.0]).expand(1, 4, 5, 3), atol=1e-4)


def test_random_background_augmentation_only_in_training():
    bg = threestudio.find("solid-color-background")({"color": [0.5, 0.5, 0.5], "random_aug": True,
                                                     "random_aug_prob": 1.0})
    dirs = torch.randn(3, 2, 2, 3)
    bg.train()
    colors = bg(dirs)
    assert not torch.allclose(colors, torch.full_like(colors, 0.5))
    assert torch.allclose(colors, colors[:, :1, :1].expand_as(colors))  # one colour per view
    bg.eval()
    assert torch.allclose(bg(dirs), torch.full((3, 2, 2, 3), 0.5))


def test_gradients_reach_the_hash_grid_and_proposal_loss_trains_only_proposal():
    renderer = make_renderer("proposal")
    geometry = renderer.geometry
    rays_o, rays_d = camera_rays()
    renderer.train()
    out = renderer(rays_o, rays_d)
    out["comp_rgb"].mean().backward(retain_graph=True)
    assert geometry.encoding.params.grad.abs().sum() > 0
    assert all(p.grad is None for p in renderer.proposal_network.parameters())

    geometry.zero_grad(set_to_none=True)
    out["loss_proposal"].backward()
    assert all(p.grad is None for p in geometry.parameters())
    assert sum(p.grad.abs().sum() for p in renderer.proposal_network.parameters()) > 0


def test_chunked_eval_equals_unchunked():
    renderer = make_renderer("proposal", material="diffuse-with-point-light-material", eval_chunk_size=7)
    rays_o, rays_d = camera_rays(n_views=2)
    renderer.eval()
    with torch.no_grad():
        chunked = renderer(rays_o, rays_d)
        renderer.cfg.eval_chunk_size = 10_000
        whole = renderer(rays_o, rays_d)
    for key in ("comp_rgb", "opacity", "depth", "comp_normal"):
        assert torch.allclose(chunked[key], whole[key], atol=1e-5), key


def _saved_bytes_and_grads(renderer, rays_o, rays_d):
    """Bytes of the distinct storages that the autograd graph still holds after one training render (parameters
    excluded), and the gradients of a loss using rgb, normals and the proposal loss (same random samples)."""
    saved = []

    def pack(t):
        kept = t.detach()  # (returning t itself would make saved outputs and their nodes a reference cycle)
        saved.append(weakref.ref(kept))
        return kept

    renderer.train()
    renderer.zero_grad(set_to_none=True)
    renderer.geometry.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = renderer(rays_o, rays_d, shading="diffuse")  # (the random shading choice uses Python's RNG)
    params = list(renderer.geometry.named_parameters()) + list(renderer.proposal_network.named_parameters())
    param_storages = {p.untyped_storage().data_ptr() for _, p in params}
    alive = {}
    for ref in saved:
        t = ref()
        if t is not None and t.untyped_storage().data_ptr() not in param_storages:
            alive[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    facing = (out["normal"] * out["t_dirs"]).sum(-1, keepdim=True).clamp_min(0.0)
    loss = out["comp_rgb"].square().mean() + out["loss_proposal"] + (out["weights"] * facing**2).sum()
    loss.backward()
    return sum(alive.values()), {name: p.grad.clone() for name, p in params}


def test_recomputed_fields_give_the_same_gradients_with_far_less_saved():
    renderer = make_renderer("proposal", material="diffuse-with-point-light-material")
    rays_o, rays_d = camera_rays(n_views=2)
    whole_bytes, whole = _saved_bytes_and_grads(renderer, rays_o, rays_d)
    renderer.cfg.grad_checkpoint_chunk_size = 100  # 2·4·5 rays × 16 samples = 640 samples: 7 chunks, the last short
    chunked_bytes, chunked = _saved_bytes_and_grads(renderer, rays_o, rays_d)
    assert whole.keys() == chunked.keys()
    for name in whole:
        assert whole[name].abs().sum() > 0, name
        assert torch.allclose(chunked[name], whole[name], rtol=1e-5, atol=1e-9), name
    # the hash grids' corner indices and lerp differences (and the analytic normals' second graph) are no longer
    # kept until the backward: only the fields' inputs and outputs
    assert chunked_bytes < 0.25 * whole_bytes, (chunked_bytes, whole_bytes)


def test_negative_checkpoint_chunk_is_a_config_error():
    with pytest.raises(ConfigError, match="grad_checkpoint_chunk_size"):
        make_renderer("proposal", grad_checkpoint_chunk_size=-1)


def test_unknown_estimator_is_a_config_error():
    with pytest.raises(ConfigError, match="estimator"):
        make_renderer("occgrid")


@pytest.mark.slow  # trains (hundreds of steps)
@pytest.mark.parametrize("estimator", ["importance", "proposal"])
def test_tiny_fit_converges_to_colour_and_opacity(estimator):
    """A few hundred Adam steps fit 8 rays to a dark target colour over a white background, which needs full opacity
    (the proposal estimator trains its network jointly through loss_proposal). Over a black background any opacity
    ≥ 0.9 reaches the colour, and a density head whose ReLUs died passed on the opacity the constant density
    softplus(0) gives over the whole ray."""
    torch.manual_seed(0)
    renderer = make_renderer(estimator, geometry={"density_bias": 0.0, "normal_type": None},
                             background={"color": [1.0, 1.0, 1.0]}, sampling_type="uniform")
    rays_o, rays_d = camera_rays(height=2, width=4)
    target = torch.tensor([0.9, 0.3, 0.1])
    params = list(renderer.parameters())  # the proposal network (if any); geometry follows
    params += list(renderer.geometry.parameters())
    optimizer = torch.optim.Adam(params, lr=0.03)
    renderer.train()
    for _ in range(150):
        out = renderer(rays_o, rays_d)
        loss = ((out["comp_rgb"] - target) ** 2).mean() + out.get("loss_proposal", 0.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    renderer.eval()
    with torch.no_grad():
        out = renderer(rays_o, rays_d)
    assert torch.allclose(out["comp_rgb"], target.expand_as(out["comp_rgb"]), atol=0.03)
    assert out["opacity"].min() > 0.95


def test_checkpoints_from_before_the_proposal_network_rename_load():
    """``proposal_networks.0.*`` (the one-element ModuleList of older checkpoints) loads as ``proposal_network.*``."""
    torch.manual_seed(0)
    source, target = make_renderer(), make_renderer()
    old = {k.replace("proposal_network.", "proposal_networks.0."): v for k, v in source.state_dict().items()}
    assert any(k.startswith("proposal_networks.0.") for k in old)
    target.load_state_dict(old)
    for (name, a), b in zip(source.proposal_network.state_dict().items(),
                            target.proposal_network.state_dict().values()):
        assert torch.equal(a, b), name
    assert make_renderer(estimator="stratified").proposal_network is None
