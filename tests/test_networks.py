"""Hash grid, MLP, factories and fast-path selection (pure PyTorch, CPU)."""

from __future__ import annotations

import math

import pytest
import torch

from threestudio.models import networks
from threestudio.models.networks import (
    HashGrid,
    VanillaMLP,
    create_network_with_input_encoding,
    get_activation,
    get_encoding,
    get_mlp,
    trunc_exp,
)
from threestudio.utils import fast_paths
from threestudio.utils.errors import ConfigError

TINY_GRID = dict(n_levels=3, n_features_per_level=2, log2_hashmap_size=6, base_resolution=2, per_level_scale=2.0)


def test_hash_grid_shapes_and_backward():
    grid = HashGrid(3, **TINY_GRID)
    x = torch.rand(50, 3, requires_grad=True)
    y = grid(x)
    assert y.shape == (50, 6) and y.dtype == torch.float32
    assert grid.n_output_dims == 6
    y.square().sum().backward()
    assert grid.params.grad is not None and grid.params.grad.abs().sum() > 0
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # leading dimensions are kept
    assert grid(torch.rand(2, 5, 3)).shape == (2, 5, 6)


def test_hash_grid_levels_dense_then_hashed():
    grid = HashGrid(3, **TINY_GRID)
    # resolutions 2, 4, 8 vertices per axis: 8 and 64 entries fit a 64-row table, 512 do not
    assert grid.is_dense.tolist() == [True, True, False]
    assert grid.level_sizes == [8, 64, 64]
    assert grid.params.numel() == (8 + 64 + 64) * 2
    # tcnn-like init: uniform in ±1e-4
    assert grid.params.abs().max() <= 1e-4


def test_hash_grid_level_scales_are_tcnn_float32():
    """tiny-cuda-nn computes exp2f(level · log2f(per_level_scale)) · base_resolution − 1 in float32: level 15 of the
    paper grid (max resolution 4096) has scale 4094.9985, not 4095, and 4096 vertices per axis."""
    grid = HashGrid(3, n_levels=16, n_features_per_level=2, log2_hashmap_size=12, base_resolution=16,
                    per_level_scale=1.447269237440378)
    assert grid.scales[15].item() == 4094.99853515625
    assert grid.scales[0].item() == 15.0 and grid.scales[1].item() == pytest.approx(22.156307, abs=1e-6)
    assert grid.resolutions[15].item() == 4096
    exact = 16 * 1.447269237440378**15 - 1.0
    assert abs(exact - 4095.0) < 1e-9 and torch.tensor(exact, dtype=torch.float32).item() == 4095.0


def test_hash_grid_gradcheck_table_and_inputs():
    grid = HashGrid(3, **TINY_GRID).double()
    with torch.no_grad():
        grid.params.uniform_(-1, 1)
    # keep points away from cell boundaries, where trilinear interpolation has kinks
    x = (torch.rand(6, 3, dtype=torch.float64) * 0.8 + 0.1).requires_grad_(True)

    params = grid.params.detach().clone().requires_grad_(True)

    def f(params, x):
        return torch.func.functional_call(grid, {"params": params}, (x,))

    assert torch.autograd.gradcheck(lambda p: f(p, x.detach()), (params,), eps=1e-6, atol=1e-5)
    assert torch.autograd.gradcheck(lambda xx: f(params.detach(), xx), (x,), eps=1e-7, atol=1e-5)


def test_hash_grid_interpolates_vertices_exactly():
    """At a vertex of a dense level the output is that vertex's table row; between vertices it is linear."""
    grid = HashGrid(1, n_levels=1, n_features_per_level=1, log2_hashmap_size=8, base_resolution=5, per_level_scale=1.0)
    with torch.no_grad():
        grid.params.copy_(torch.arange(grid.params.numel(), dtype=torch.float32))
    scale = 4.0  # base_resolution - 1
    # position p = x·scale + 0.5; vertex k sits at x = (k − 0.5)/scale
    x = torch.tensor([[0.5 / scale], [1.5 / scale], [1.0 / scale]])
    assert torch.allclose(grid(x)[:, 0], torch.tensor([1.0, 2.0, 1.5]), atol=1e-5)


def test_hashed_level_matches_dense_level_without_collisions():
    """A level hashed into a table large enough to hold every vertex behaves like a dense one (same interpolation,
    different row order): fill both tables from the same per-vertex values and compare outputs."""
    level = dict(n_levels=1, n_features_per_level=2, log2_hashmap_size=10, base_resolution=6, per_level_scale=1.0)
    dense, hashed = HashGrid(2, **level), HashGrid(2, **level)
    # force the spatial hash, into a 1024-row table
    hashed.is_dense.fill_(False)
    hashed.level_sizes_t.fill_(1024)
    hashed.params = torch.nn.Parameter(torch.zeros(1024 * 2))
    res = int(dense.resolutions[0])
    vertices = torch.stack(torch.meshgrid(torch.arange(res), torch.arange(res), indexing="ij"), -1).reshape(-1, 2)
    dense_rows = vertices[:, 0] + vertices[:, 1] * res
    hashed_rows = (vertices[:, 0] * 1) ^ (vertices[:, 1] * 2654435761)
    hashed_rows = hashed_rows % 1024
    assert hashed_rows.unique().numel() == vertices.shape[0], "test setup: the hash must be collision-free here"
    values = torch.randn(vertices.shape[0], 2)
    with torch.no_grad():
        dense.params.view(-1, 2)[dense_rows] = values
        hashed.params.view(-1, 2)[hashed_rows] = values
    x = torch.rand(100, 2)
    assert torch.allclose(dense(x), hashed(x), atol=1e-6)


def test_vanilla_mlp_layers_and_activation():
    mlp = VanillaMLP(8, 3, n_neurons=16, n_hidden_layers=2, activation="ReLU", output_activation="sigmoid")
    assert len(mlp.layers) == 3 and all(layer.bias is None for layer in mlp.layers)
    y = mlp(torch.randn(10, 8))
    assert y.shape == (10, 3) and (y > 0).all() and (y < 1).all()


def test_factories_build_torch_modules_without_tcnn():
    enc = get_encoding(3, {"otype": "HashGrid", **TINY_GRID})
    assert isinstance(enc, HashGrid)
    assert isinstance(get_mlp(6, 1, {"otype": "VanillaMLP", "n_neurons": 8, "n_hidden_layers": 1}), VanillaMLP)
    # a tcnn-only MLP type falls back to the PyTorch MLP when tinycudann is absent
    assert isinstance(get_mlp(6, 1, {"otype": "FullyFusedMLP", "n_neurons": 8, "n_hidden_layers": 1}), VanillaMLP)
    net = create_network_with_input_encoding(
        3, 1, {"otype": "HashGrid", **TINY_GRID}, {"otype": "VanillaMLP", "n_neurons": 8, "n_hidden_layers": 1}
    )
    assert net(torch.rand(4, 3)).shape == (4, 1)
    with pytest.raises(ConfigError, match="otype"):
        get_encoding(3, {"otype": "Frequency"})
    with pytest.raises(ConfigError, match="n_neuron"):
        get_mlp(3, 1, {"otype": "VanillaMLP", "n_neuron": 8})


def test_fast_paths_fall_back_when_tcnn_missing(monkeypatch):
    monkeypatch.setattr(fast_paths, "_cuda_available", lambda: True)
    monkeypatch.setattr(fast_paths, "_probe_cache", {"tinycudann": False})
    assert fast_paths.use_tcnn("auto") is False
    # pretend tinycudann works: "auto" uses it, "off" does not (the mode is an argument, not a process-wide state)
    monkeypatch.setattr(fast_paths, "_probe_cache", {"tinycudann": True})
    assert fast_paths.use_tcnn("auto") is True and fast_paths.use_tcnn("off") is False
    assert isinstance(networks.get_encoding(3, {"otype": "HashGrid", **TINY_GRID}, fast_paths="off"), HashGrid)
    # YAML reads a bare `off` as false
    assert fast_paths.parse_fast_paths(False) == "off" and fast_paths.parse_fast_paths("auto") == "auto"
    with pytest.raises(ConfigError, match="fast_paths"):
        fast_paths.parse_fast_paths("fast")


def test_fast_path_probe_never_raises(monkeypatch):
    monkeypatch.setattr(fast_paths, "_probe_cache", {})
    assert fast_paths._package_usable("surely_not_an_installed_module_xyz") is False


def test_trunc_exp_forward_and_clamped_gradient():
    x = torch.tensor([0.0, 1.0, 30.0], requires_grad=True)
    y = trunc_exp(x)
    assert torch.allclose(y, torch.exp(x.detach()))
    y.sum().backward()
    assert torch.allclose(x.grad, torch.tensor([1.0, math.e, math.exp(15.0)]))
    assert get_activation("shifted_trunc_exp")(torch.tensor([1.0])).item() == pytest.approx(1.0)
    with pytest.raises(ConfigError):
        get_activation("swish9")
