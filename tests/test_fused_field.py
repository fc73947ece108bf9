"""The fused NeRF-field kernel (threestudio/kernels/fused_field.py: hash grid + density and feature MLPs in one Triton
kernel) against the pure-PyTorch ``implicit-volume`` field, run on CPU tensors by Triton's interpreter
(TRITON_INTERPRET=1, set by tests/conftest.py).

Relative errors are max |fused − reference| / max |reference| over a tensor, both in float32. The grids have dense
coarse levels and hashed fine ones (a small table), the point counts are not multiples of the kernel's block, and the
bounded case puts points outside [0, 1] after contraction and on cell borders.
"""

from __future__ import annotations

import copy
import importlib
import os

import pytest
import torch

import threestudio
from threestudio.kernels import KERNELS
from threestudio.utils import fast_paths

if importlib.util.find_spec("triton") is None:  # a requirement on Linux; CI must have it
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("triton is not installed (requirements.txt): the kernel tests cannot run", pytrace=False)
    pytest.skip("triton is not installed", allow_module_level=True)

TOLERANCE = 1e-5
SMALL_GRID = {"otype": "HashGrid", "n_levels": 5, "n_features_per_level": 2, "log2_hashmap_size": 10,
              "base_resolution": 4, "per_level_scale": 1.5}  # levels 0-2 dense, 3-4 hashed
# 3 features per level: padded to 4 in the kernel's gathers
PADDED_GRID = {"otype": "HashGrid", "n_levels": 3, "n_features_per_level": 3, "log2_hashmap_size": 7,
               "base_resolution": 3, "per_level_scale": 2.0}
PAPER_GRID = {"otype": "HashGrid", "n_levels": 16, "n_features_per_level": 2, "log2_hashmap_size": 12,
              "base_resolution": 16, "per_level_scale": 1.447269237440378}  # the paper's levels, a small table


def mlp(n_neurons: int, n_hidden_layers: int = 1) -> dict:
    return {"otype": "VanillaMLP", "activation": "ReLU", "output_activation": "none", "n_neurons": n_neurons,
            "n_hidden_layers": n_hidden_layers}


@pytest.fixture(scope="module")
def kernel():
    """The fused-field module, run by Triton's interpreter; the selection admits CPU tensors meanwhile."""
    import triton.language as tl

    if type(tl.zeros).__name__ != "InterpretedFunction":
        pytest.fail("triton was imported before TRITON_INTERPRET=1 was set; run the tests with TRITON_INTERPRET=1",
                    pytrace=False)
    module = importlib.import_module(KERNELS["fused_field"])
    admit_checked(module)
    yield module
    fast_paths.admit_interpreted_kernels(False)


def admit_checked(module) -> None:
    """Admit interpreted kernels and take the fused field as checked on the CPU: its self-check (8 s through the
    interpreter) has its own test (test_self_check_passes_and_catches_a_wrong_kernel); each test here compares the
    kernel with the reference itself."""
    fast_paths.admit_interpreted_kernels(True)
    fast_paths._kernel_cache[("fused_field", "cpu")] = module


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value - reference).abs().max() / reference.abs().max()).item()


def geometries(grid: dict, n_neurons: int, n_hidden_layers: int = 1, **cfg):
    """A random ``implicit-volume`` field in mode auto and a copy of it on the reference path."""
    torch.manual_seed(0)
    config = {"radius": 1.0, "density_blob_scale": 5.0, "pos_encoding_config": grid, "mlp_network_config":
              mlp(n_neurons, n_hidden_layers), "normal_type": "analytic", "analytic_normal_method": "explicit",
              **cfg}
    fast = threestudio.find("implicit-volume")(config, fast_paths="auto")
    with torch.no_grad():
        fast.encoding.params.uniform_(-1.0, 1.0)  # mixed signs before the ReLUs
    reference = copy.deepcopy(fast)
    reference.fast_paths = reference.encoding.fast_paths = "off"
    return fast, reference


def world_points(geometry, n: int, unbounded: bool) -> torch.Tensor:
    """Random points in and beyond the box; bounded fields also get points on the cell borders of the dense
    levels (contracted · scale + 0.5 integral) and points whose contracted coordinates leave [0, 1]."""
    gen = torch.Generator().manual_seed(3)
    points = torch.rand(n, 3, generator=gen) * 3.0 - 1.5
    if unbounded:
        return points
    scales = geometry.encoding.scales[geometry.encoding.is_dense].tolist()
    borders = torch.cat([((torch.arange(int(s) + 2) - 0.5) / s).clamp(0.0, 1.0) for s in scales])
    on_borders = borders[torch.randint(len(borders), (n // 3, 3), generator=gen)] * 2.0 - 1.0  # bbox [-1, 1]
    corners = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0], [1.3, -1.2, 0.1]])
    return torch.cat([points, on_borders, corners])


def outputs_and_grads(geometry, points: torch.Tensor, normals: bool, loss_on: str = "all"):
    """The field's outputs at points and the gradients of a fixed random-weighted loss on them w.r.t. every
    parameter (and the points, without normals: the explicit-normals path takes no point gradient)."""
    points = points.clone().requires_grad_(not normals)
    out = geometry(points, output_normal=normals)
    gen = torch.Generator().manual_seed(4)
    names = ["density", "features"] + (["normal"] if normals else [])
    loss = sum((out[k] * torch.randn(out[k].shape, generator=gen)).sum() for k in names
               if loss_on == "all" or k == loss_on)
    inputs = list(geometry.parameters()) + ([] if normals else [points])
    grads = torch.autograd.grad(loss, inputs, allow_unused=True, materialize_grads=True)
    return [out[k].detach() for k in names], list(grads)


def counting(monkeypatch, kernel) -> list:
    """Record the calls of the fused kernel's public functions (after its self-check, which calls them too)."""
    assert fast_paths.triton_kernels("fused_field", "auto", torch.device("cpu")) is kernel
    calls = []
    for name in ("field", "field_with_normals"):
        original = getattr(kernel, name)
        monkeypatch.setattr(kernel, name, lambda *a, _f=original, _n=name: calls.append(_n) or _f(*a))
    return calls


def assert_matches(fast_results, reference_results):
    for kind, got, want in zip(("outputs", "grads"), fast_results, reference_results):
        assert len(got) == len(want)
        for i, (value, expected) in enumerate(zip(got, want)):
            assert value.shape == expected.shape
            assert expected.abs().max() > 0, (kind, i)  # a comparison that can fail
            assert relative_error(value, expected) <= TOLERANCE, (kind, i, relative_error(value, expected))


# the quick loop takes the paper's depth (2 hidden layers); one hidden layer with the slow tests
ONE_AND_TWO_HIDDEN = [pytest.param(1, marks=pytest.mark.slow), 2]


@pytest.mark.parametrize("n_hidden_layers", ONE_AND_TWO_HIDDEN)
@pytest.mark.parametrize("unbounded", [True, False])
@pytest.mark.parametrize("normals", [False, True])
def test_fused_field_matches_the_reference(kernel, monkeypatch, unbounded, normals, n_hidden_layers):
    fast, reference = geometries(SMALL_GRID, 16, n_hidden_layers, unbounded=unbounded)
    assert fast.encoding.is_dense.tolist() == [True] * 3 + [False] * 2
    points = world_points(fast, 45, unbounded)
    assert points.shape[0] % kernel.BLOCK != 0 and points.shape[0] > kernel.BLOCK
    if not unbounded:
        contracted = fast._contract(points)
        assert ((contracted < 0) | (contracted > 1)).any()  # clamped coordinates: zero Jacobian there
    calls = counting(monkeypatch, kernel)
    fast_results = outputs_and_grads(fast, points, normals)
    assert calls == ["field_with_normals" if normals else "field"]
    reference_results = outputs_and_grads(reference, points, normals)
    assert len(calls) == 1  # the reference did not take the kernel
    assert_matches(fast_results, reference_results)


@pytest.mark.parametrize("normals", [False, True])
def test_padded_features_match_the_reference(kernel, monkeypatch, normals):
    fast, reference = geometries(PADDED_GRID, 16, unbounded=False)
    assert fast.encoding.is_dense.tolist() == [True, False, False]
    points = world_points(fast, 20, unbounded=False)
    calls = counting(monkeypatch, kernel)
    assert_matches(outputs_and_grads(fast, points, normals), outputs_and_grads(reference, points, normals))
    assert len(calls) == 1


@pytest.mark.parametrize("n_hidden_layers", ONE_AND_TWO_HIDDEN)
def test_gradients_through_the_normals_alone(kernel, monkeypatch, n_hidden_layers):
    """A loss on the normals only: its gradient reaches the table (through the Jacobian's corner-weight
    derivatives) and every layer of the density head, and not the feature head."""
    fast, reference = geometries(SMALL_GRID, 16, n_hidden_layers, unbounded=False)
    points = world_points(fast, 40, unbounded=False)
    calls = counting(monkeypatch, kernel)
    fast_results = outputs_and_grads(fast, points, True, loss_on="normal")
    reference_results = outputs_and_grads(reference, points, True, loss_on="normal")
    assert calls == ["field_with_normals"]
    grads, n_density = fast_results[1], 2 + n_hidden_layers  # the table and the density head's layers
    assert [float(g.abs().max()) > 0 for g in grads] == [True] * n_density + [False] * (1 + n_hidden_layers)
    assert_matches((fast_results[0], grads[:n_density]), (reference_results[0], reference_results[1][:n_density]))
    assert all(g.abs().max() == 0 for g in reference_results[1][n_density:])


def test_no_point_gradient_through_the_normals_output(kernel):
    fast, _ = geometries(SMALL_GRID, 16)
    x = torch.rand(8, 3, requires_grad=True)
    with pytest.raises(RuntimeError, match="no gradient w.r.t. the points"):
        kernel.field_with_normals(fast.encoding, fast.density_network, fast.feature_network, x)


@pytest.mark.parametrize(
    "change",
    [{"mlp_network_config": mlp(16, 3)},  # three hidden layers
     {"mlp_network_config": {**mlp(16), "activation": "Sigmoid"}},
     {"mlp_network_config": {**mlp(24)}},  # not a power of two
     {"mlp_network_config": {**mlp(16), "output_activation": "Sigmoid"}},
     {"pos_encoding_config": {**SMALL_GRID, "n_features_per_level": 9}},  # above 8 features per level
     {"n_feature_dims": 0}],
)
def test_unsupported_fields_take_the_reference(kernel, monkeypatch, change):
    config = {"radius": 1.0, "pos_encoding_config": SMALL_GRID, "mlp_network_config": mlp(16), "normal_type": None,
              **change}
    geometry = threestudio.find("implicit-volume")(config, fast_paths="auto")
    calls = counting(monkeypatch, kernel)
    out = geometry(torch.rand(10, 3))
    assert calls == [] and out["density"].shape == (10, 1)


def test_the_cpu_default_is_the_reference(kernel, monkeypatch):
    fast, _ = geometries(SMALL_GRID, 16)
    calls = counting(monkeypatch, kernel)
    fast_paths.admit_interpreted_kernels(False)  # the real rule: CUDA tensors only
    try:
        fast(torch.rand(10, 3), output_normal=True)
        fast.fast_paths = "off"
        admit_checked(kernel)
        fast(torch.rand(10, 3), output_normal=True)
    finally:
        admit_checked(kernel)
    assert calls == []


@pytest.mark.slow  # two self-checks through the interpreter (16 s)
def test_self_check_passes_and_catches_a_wrong_kernel(kernel, monkeypatch):
    kernel.self_check("cpu")
    hash_grid = importlib.import_module(KERNELS["hash_grid"])
    monkeypatch.setattr(hash_grid, "_PRIMES", (1, 2654435761, 805459863))  # a wrong hash for the fine levels
    monkeypatch.setattr(hash_grid, "_primes_on", {})
    with pytest.raises(RuntimeError, match="differs from the reference"):
        kernel.self_check("cpu")


@pytest.mark.slow  # 7-13 s each through the interpreter
@pytest.mark.parametrize("n_neurons, n_hidden_layers", [
    (32, 2),  # configs/zeronvs.yaml's heads
    (64, 1),  # issue 30's example
])
@pytest.mark.parametrize("normals", [False, True])
def test_paper_shapes_match_the_reference(kernel, monkeypatch, normals, n_neurons, n_hidden_layers):
    """The paper's 16 levels × 2 features (a small table, so that the fine levels hash) and MLP widths."""
    fast, reference = geometries(PAPER_GRID, n_neurons, n_hidden_layers)
    assert fast.encoding.is_dense.any() and not fast.encoding.is_dense.all()
    points = world_points(fast, 40, unbounded=True)
    calls = counting(monkeypatch, kernel)
    assert_matches(outputs_and_grads(fast, points, normals), outputs_and_grads(reference, points, normals))
    assert len(calls) == 1


def test_the_tracer_counts_gathered_rows_atomics_and_mlp_flops(kernel):
    """bench.py trace's accounting of a fused-field launch (threestudio/profiling/step_trace.py): of the table only
    the rows the points' corners gather (read; the gradient's: atomically added, read + write), a placeholder
    passed twice counts once, and the MLP FLOPs of the kernel's ``launch_flops``."""
    from threestudio.profiling import step_trace

    n, n_levels, h = 1000, 16, 32
    table, grad_table = torch.empty(2**19 * n_levels * 2), torch.empty(2**19 * n_levels * 2)
    x, scales, dz, dzf = torch.empty(n, 3), torch.empty(n_levels), torch.empty(n, h), torch.empty(n, h)
    named = {"x_ptr": x, "table_ptr": table, "dz_ptr": dz, "dzf_ptr": dzf, "u_ptr": dz, "grad_table_ptr": grad_table,
             "scales_ptr": scales, "n_points": n, "n_levels": n_levels, "N_CORNERS": 8, "F": 2, "H": h,
             "NORMALS": False, "POINTS_GRAD": False}
    rows = n * n_levels * 8
    expected = (x.numel() + rows * 2 + 2 * n * h + rows * 2 * 2 + n_levels) * 4
    assert step_trace._launch_traffic("_fused_field_levels_backward_kernel", named) == expected
    # its FLOPs: per encoding column the column's gradient and both first layers' weight gradients, 8·H
    launch = kernel._fused_field_levels_backward_kernel
    assert step_trace._launch_flops(getattr(launch, "fn", launch), named) == n * n_levels * 2 * 8 * h
    forward = dict(named, TWO_HIDDEN=True, CP=16)
    e = n_levels * 2
    assert kernel.launch_flops("_fused_field_kernel", forward) == n * (4 * e * h + 4 * h * h + 2 * h + 2 * h * 16)
