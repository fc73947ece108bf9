"""recomputed_map: chunked field evaluation whose graph is rebuilt in the backward gives fn's values and gradients."""

from __future__ import annotations

import pytest
import torch

from threestudio.models.networks import HashGrid, VanillaMLP
from threestudio.utils.recompute import recomputed_map


class _Field(torch.nn.Module):
    """Density with analytic normals: the normal is a create_graph gradient, as in the implicit volume."""

    def __init__(self) -> None:
        super().__init__()
        self.grid = HashGrid(3, n_levels=4, n_features_per_level=2, log2_hashmap_size=10, base_resolution=4,
                             per_level_scale=1.5, init_scale=0.5)
        self.mlp = VanillaMLP(8, 1, n_neurons=16, n_hidden_layers=1)

    def forward(self, x: torch.Tensor) -> dict:
        grad_enabled = torch.is_grad_enabled()
        with torch.enable_grad():
            p = x if x.requires_grad else x.detach().requires_grad_(True)
            density = torch.nn.functional.softplus(self.mlp(self.grid(p)))
            (normal,) = torch.autograd.grad(density, p, torch.ones_like(density), create_graph=grad_enabled)
        out = {"density": density, "normal": normal}
        return out if grad_enabled else {k: v.detach() for k, v in out.items()}


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to float32 rounding of sums taken in another order."""
    return bool((a - b).abs().max() <= 1e-6 * b.abs().max())


def _loss(out: dict) -> torch.Tensor:
    return (out["density"] ** 2).sum() + (out["normal"] ** 2).sum()


@pytest.mark.parametrize("chunk", [7, 50, 1000])
def test_values_and_parameter_gradients_match_direct_evaluation(chunk):
    torch.manual_seed(0)
    field = _Field()
    x = torch.rand(50, 3)
    direct = field(x)
    ref = torch.autograd.grad(_loss(direct), list(field.parameters()))
    out = recomputed_map(field, x, list(field.parameters()), chunk)
    assert torch.allclose(out["density"], direct["density"]) and torch.allclose(out["normal"], direct["normal"])
    _loss(out).backward()  # through .backward(): gradients accumulate into .grad
    for p, g in zip(field.parameters(), ref):
        assert g.abs().sum() > 0
        assert _close(p.grad, g)
    got = torch.autograd.grad(
        _loss(recomputed_map(field, x, list(field.parameters()), chunk)), list(field.parameters())
    )
    for a, b in zip(got, ref):  # through torch.autograd.grad as well
        assert _close(a, b)


def test_points_gradient_and_single_tensor_output():
    torch.manual_seed(0)
    mlp = VanillaMLP(3, 2, n_neurons=8, n_hidden_layers=1)
    x = torch.rand(20, 3, requires_grad=True)
    (ref,) = torch.autograd.grad(mlp(x).pow(2).sum(), x)
    out = recomputed_map(mlp, x, list(mlp.parameters()), 6)
    assert isinstance(out, torch.Tensor) and out.shape == (20, 2)
    (got,) = torch.autograd.grad(out.pow(2).sum(), x)
    assert _close(got, ref)


def test_the_backward_recomputes_under_the_forward_autocast():
    # a module that follows autocast (the fields' own MLPs are fp32 under any autocast, issue 17)
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16), torch.nn.ReLU(),
                              torch.nn.Linear(16, 1))
    x = torch.rand(64, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        direct = mlp(x)
    ref = torch.autograd.grad(direct.float().pow(2).sum(), list(mlp.parameters()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = recomputed_map(mlp, x, list(mlp.parameters()), 64)  # one chunk: bit-identical to the direct call
    assert out.dtype == torch.bfloat16
    got = torch.autograd.grad(out.float().pow(2).sum(), list(mlp.parameters()))  # backward outside autocast
    for a, b in zip(got, ref):
        assert torch.equal(a, b)


def test_without_grad_or_chunking_it_is_a_plain_call():
    mlp = VanillaMLP(3, 1, n_neurons=8, n_hidden_layers=1)
    x = torch.rand(10, 3)
    with torch.no_grad():
        assert recomputed_map(mlp, x, list(mlp.parameters()), 4).grad_fn is None
    assert recomputed_map(mlp, x, list(mlp.parameters()), 0).grad_fn is not None


def test_it_runs_on_the_meta_device():
    """Tracing without memory: meta tensors have no autocast; forward and backward still run (shapes only)."""
    with torch.device("meta"):
        mlp = VanillaMLP(3, 1, n_neurons=8, n_hidden_layers=1)
        x = torch.empty(10, 3)
    out = recomputed_map(mlp, x, list(mlp.parameters()), 4)
    out.sum().backward()
    assert out.shape == (10, 1) and all(p.grad is not None and p.grad.is_meta for p in mlp.parameters())
