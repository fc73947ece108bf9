"""Triton kernels (threestudio/kernels) against the pure-PyTorch reference, run on CPU tensors by Triton's interpreter
(TRITON_INTERPRET=1), and the run-time selection between them (threestudio.utils.fast_paths).

The interpreter executes each program of a launch in Python: sizes are small (a couple of blocks per launch).
Relative errors are max |kernel − reference| / max |reference| over a tensor, in float32.
"""

from __future__ import annotations

import copy
import importlib
import logging
import os
import subprocess
import sys

import pytest
import torch

import threestudio
from threestudio.kernels import KERNELS
from threestudio.models.networks import HashGrid
from threestudio.models.renderers import rendering
from threestudio.utils import fast_paths

if importlib.util.find_spec("triton") is None:  # a requirement on Linux; CI must have it
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("triton is not installed (requirements.txt): the kernel tests cannot run", pytrace=False)
    pytest.skip("triton is not installed", allow_module_level=True)

TOLERANCE = 1e-5
TINY_MLP = {"otype": "VanillaMLP", "activation": "ReLU", "output_activation": "none", "n_neurons": 16,
            "n_hidden_layers": 1}


@pytest.fixture(scope="module")
def kernels():
    """The kernel modules, run by Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1 before anything
    imports triton); the selection admits CPU tensors meanwhile. Undone after this file's tests."""
    import triton.language as tl

    if type(tl.zeros).__name__ != "InterpretedFunction":
        pytest.fail("triton was imported before TRITON_INTERPRET=1 was set; run the tests with TRITON_INTERPRET=1 "
                    "(tests/conftest.py sets it unless the variable is already set to something else)", pytrace=False)
    modules = {name: importlib.import_module(module_name) for name, module_name in KERNELS.items()}
    fast_paths.admit_interpreted_kernels(True)
    yield modules
    fast_paths.admit_interpreted_kernels(False)


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value - reference).abs().max() / reference.abs().max()).item()


def random_grid(n_input_dims: int, log2_hashmap_size: int, n_features: int = 2, n_levels: int = 3) -> HashGrid:
    grid = HashGrid(n_input_dims, n_levels=n_levels, n_features_per_level=n_features,
                    log2_hashmap_size=log2_hashmap_size, base_resolution=4, per_level_scale=2.0, fast_paths="auto")
    with torch.no_grad():
        grid.params.uniform_(-1.0, 1.0)
    return grid


def grid_points(grid: HashGrid, n: int) -> torch.Tensor:
    """Random points, points on cell borders of every level (x·scale + 0.5 integral), border/random mixes, the
    corners of [0, 1]^d and points outside it."""
    d = grid.n_input_dims
    borders = torch.cat([((torch.arange(int(s) + 2) - 0.5) / s).clamp(0.0, 1.0) for s in grid.scales.tolist()])
    random = torch.rand(n, d)
    on_borders = borders[torch.randint(len(borders), (n, d))]
    mixed = random.clone()
    mixed[:, 0] = on_borders[:, 0]
    special = torch.tensor([[0.0] * d, [1.0] * d, [-0.25] * d, [1.5] * d])
    outside = torch.rand(n // 2, d) * 1.6 - 0.3
    return torch.cat([random, on_borders, mixed, special, outside]).contiguous()


def through(tensor: torch.Tensor, function: str, depth: int = 3) -> bool:
    """Whether ``tensor``'s autograd graph reaches a node called ``function`` within ``depth`` steps."""
    nodes = [tensor.grad_fn]
    for _ in range(depth):
        if any(type(n).__name__ == function for n in nodes):
            return True
        nodes = [m for n in nodes if n is not None for m, _ in n.next_functions]
    return False


def encoding_and_table_grads(grid: HashGrid, x: torch.Tensor, jacobian: bool):
    """Outputs of ``grid`` (or of its Jacobian path) at x and the table gradient for fixed random output grads."""
    outputs = grid.forward_with_jacobian(x) if jacobian else (grid(x),)
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(o.shape, generator=gen) for o in outputs]
    (table_grad,) = torch.autograd.grad(outputs, grid.params, grads)
    return [o.detach() for o in outputs], table_grad, outputs[0]


@pytest.mark.parametrize(
    "n_input_dims, log2_hashmap_size, n_features, dense_levels",
    [
        (3, 6, 2, [True, False, False]),  # resolutions 4, 8, 16: 64, 512, 4096 dense entries
        # the other layouts (seconds each through Triton's interpreter) in the full suite
        pytest.param(3, 9, 2, [True, True, False], marks=pytest.mark.slow),
        pytest.param(3, 12, 2, [True, True, True], marks=pytest.mark.slow),
        # 16, 64, 256 entries; 3 features (padded to 4 in the kernel)
        pytest.param(2, 5, 3, [True, False, False], marks=pytest.mark.slow),
    ],
)
def test_hash_grid_kernels_match_the_reference(kernels, n_input_dims, log2_hashmap_size, n_features, dense_levels):
    grid = random_grid(n_input_dims, log2_hashmap_size, n_features)
    assert grid.is_dense.tolist() == dense_levels
    reference = copy.deepcopy(grid)
    reference.fast_paths = "off"
    x = grid_points(grid, 40 if log2_hashmap_size == 6 else 24)
    if log2_hashmap_size == 6:
        assert x.shape[0] > kernels["hash_grid"].BLOCK  # more than one program, the last one partly masked
    for jacobian in (False, True):
        outs, table_grad, out = encoding_and_table_grads(grid, x, jacobian)
        ref_outs, ref_table_grad, ref_out = encoding_and_table_grads(reference, x, jacobian)
        kernel = "_EncodeWithJacobianBackward" if jacobian else "_EncodeBackward"
        assert through(out, kernel) and not through(ref_out, kernel)
        for out, ref in zip(outs, ref_outs):
            assert relative_error(out, ref) <= TOLERANCE
        assert relative_error(table_grad, ref_table_grad) <= TOLERANCE
    # outside [0, 1] the Jacobian along the clamped axis is zero, as the reference's
    outside = (x < 0.0) | (x > 1.0)
    assert outside.any() and outs[1].transpose(1, 2)[outside].abs().max() == 0


def test_hash_grid_uses_the_reference_when_off_or_when_the_input_needs_a_gradient(kernels):
    grid = random_grid(3, 9)
    x = torch.rand(20, 3)
    assert through(grid(x), "_EncodeBackward")
    assert not through(grid(x.requires_grad_(True)), "_EncodeBackward")  # autograd normals: the reference
    grid.fast_paths = "off"
    assert not through(grid(x.detach()), "_EncodeBackward")
    with pytest.raises(RuntimeError, match="no gradient w.r.t. its input"):
        kernels["hash_grid"].encode(random_grid(3, 9), torch.rand(4, 3, requires_grad=True))


def test_explicit_normals_through_the_kernels_match_the_reference(kernels, monkeypatch):
    cfg = {"radius": 1.0, "normal_type": "analytic", "analytic_normal_method": "explicit", "density_blob_scale": 5.0,
           "pos_encoding_config": {"otype": "HashGrid", "n_levels": 3, "n_features_per_level": 2,
                                   "log2_hashmap_size": 9, "base_resolution": 4, "per_level_scale": 2.0},
           "mlp_network_config": TINY_MLP}
    fast = threestudio.find("implicit-volume")(cfg, fast_paths="auto")
    with torch.no_grad():
        fast.encoding.params.uniform_(-1.0, 1.0)
    # the grid's kernels (encoding + Jacobian) with the heads in PyTorch: the field's fused kernel, which the
    # geometry would take in mode auto, is tested in tests/test_fused_field.py
    fast.fast_paths = "off"
    reference = copy.deepcopy(fast)
    reference.encoding.fast_paths = "off"
    points = torch.rand(100, 3) * 2.4 - 1.2  # inside and beyond the unit box (contracted)
    results = []
    assert fast_paths.triton_kernels("hash_grid", "auto", points.device) is kernels["hash_grid"]  # its self-check
    calls = []
    original = kernels["hash_grid"].encode_with_jacobian
    monkeypatch.setattr(kernels["hash_grid"], "encode_with_jacobian", lambda *a: calls.append(1) or original(*a))
    for geometry, grid_kernel_calls in ((fast, 1), (reference, 1)):
        out = geometry(points, output_normal=True)
        assert len(calls) == grid_kernel_calls  # the fast geometry took the grid's kernel, the reference did not
        loss = (out["density"] * out["features"]).sum() + (out["normal"] * torch.linspace(-1, 1, 3)).sum()
        params = [p for p in geometry.parameters() if p.requires_grad]
        results.append([out["density"], out["normal"], out["features"], *torch.autograd.grad(loss, params)])
    for value, expected in zip(*results):
        assert relative_error(value.detach(), expected.detach()) <= TOLERANCE


@pytest.mark.parametrize("n_rays, n_samples, channels", [(130, 9, 3), (7, 1, 1)])
def test_compositing_kernels_match_the_reference(kernels, n_rays, n_samples, channels):
    sigmas = torch.rand(n_rays, n_samples) * 20.0
    sigmas[::3, ::2] = 0.0  # empty samples
    sigmas[1::5, -1:] = 1e4  # opaque: transmittance underflows behind them
    deltas = torch.rand(n_rays, n_samples) * 0.3
    values = torch.rand(n_rays, n_samples, channels)
    gen = torch.Generator().manual_seed(2)
    grads = [torch.randn(n_rays, n_samples, generator=gen) for _ in range(3)] + [torch.randn(n_rays, channels)]
    results = []
    for mode in ("auto", "off"):
        inputs = [t.clone().requires_grad_(True) for t in (sigmas, deltas, values)]
        weights, trans, alphas = rendering.render_weights(inputs[0], inputs[1], fast_paths=mode)
        composited = rendering.accumulate(weights, inputs[2], fast_paths=mode)
        assert through(weights, "_RenderWeightsBackward", 1) == through(composited, "_AccumulateBackward", 1)
        assert through(composited, "_AccumulateBackward", 1) == (mode == "auto")
        input_grads = torch.autograd.grad([weights, trans, alphas, composited], inputs, grads)
        results.append([weights, trans, alphas, composited, *input_grads])
    for value, expected in zip(*results):
        assert relative_error(value.detach(), expected.detach()) <= TOLERANCE
    # only the weights' gradient (the renderer's case): the other outputs' gradients are absent
    inputs = [t.clone().requires_grad_(True) for t in (sigmas, deltas)]
    g_fast = torch.autograd.grad(rendering.render_weights(*inputs, fast_paths="auto")[0], inputs, grads[0])
    g_ref = torch.autograd.grad(rendering.render_weights(*inputs, fast_paths="off")[0], inputs, grads[0])
    for value, expected in zip(g_fast, g_ref):
        assert relative_error(value, expected) <= TOLERANCE


def test_renderer_with_kernels_matches_the_reference(kernels, monkeypatch):
    geometry_cfg = {"radius": 1.0, "normal_type": None, "density_blob_scale": 5.0,
                    "pos_encoding_config": {"otype": "HashGrid", "n_levels": 3, "n_features_per_level": 2,
                                            "log2_hashmap_size": 8, "base_resolution": 4, "per_level_scale": 2.0},
                    "mlp_network_config": TINY_MLP}
    renderer_cfg = {"radius": 1.0, "estimator": "stratified", "near_plane": 1.0, "far_plane": 5.0,
                    "sampling_type": "uniform", "num_samples_per_ray": 12, "randomized": False}
    rays_d = torch.nn.functional.normalize(torch.tensor([-1.0, 0.0, 0.0]) + 0.2 * torch.randn(1, 3, 4, 3), dim=-1)
    rays_o = torch.tensor([3.0, 0.0, 0.0]).expand_as(rays_d)
    # the fused field taken as checked: its self-check (8 s through the interpreter) runs in the slow
    # test_self_checks_pass_and_catch_a_wrong_kernel, and this test compares with the reference itself
    fast_paths._kernel_cache[("fused_field", "cpu")] = kernels["fused_field"]
    calls = []
    for module, name in ((kernels["hash_grid"], "encode"), (kernels["fused_field"], "field"),
                         (kernels["compositing"], "render_weights"), (kernels["compositing"], "accumulate")):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _f=original, _n=name: calls.append(_n) or _f(*a))
    results = []
    for mode in ("auto", "off"):
        calls.clear()
        torch.manual_seed(0)
        geometry = threestudio.find("implicit-volume")(geometry_cfg, fast_paths=mode)
        material = threestudio.find("no-material")({})
        background = threestudio.find("solid-color-background")({"color": [0.2, 0.4, 0.6]})
        renderer = threestudio.find("nerf-volume-renderer")(renderer_cfg, geometry, material, background,
                                                            fast_paths=mode)
        out = renderer(rays_o, rays_d)
        # the field: grid and heads fused (threestudio/kernels/fused_field.py; tests/test_fused_field.py)
        used = {"field", "render_weights", "accumulate"} if mode == "auto" else set()
        assert set(calls) == used and renderer.fast_paths == mode
        loss = out["comp_rgb"].square().sum() + out["depth"].sum() + out["opacity"].sum()
        results.append([out["comp_rgb"], out["depth"], out["opacity"],
                        *torch.autograd.grad(loss, list(geometry.parameters()))])
    for value, expected in zip(*results):
        assert relative_error(value.detach(), expected.detach()) <= TOLERANCE


@pytest.mark.slow  # every kernel's self-check through Triton's interpreter
def test_self_checks_pass_and_catch_a_wrong_kernel(kernels, monkeypatch):
    for module in kernels.values():
        module.self_check("cpu")
    monkeypatch.setattr(kernels["hash_grid"], "_PRIMES", (1, 2654435761, 805459863))  # a wrong hash
    monkeypatch.setattr(kernels["hash_grid"], "_primes_on", {})
    with pytest.raises(RuntimeError, match="differs from the reference"):
        kernels["hash_grid"].self_check("cpu")


# ---------------------------------------------------------------- selection and fallback (no interpreter needed)
@pytest.fixture
def fresh_selection(monkeypatch, caplog):
    was_admitted = fast_paths.interpreted_kernels_admitted()
    fast_paths.reset_selection()
    caplog.set_level(logging.INFO, logger=fast_paths.__name__)
    yield caplog
    fast_paths.admit_interpreted_kernels(was_admitted)


def test_auto_on_the_cpu_uses_the_reference_and_says_why_once(fresh_selection, monkeypatch):
    fast_paths.admit_interpreted_kernels(False)  # the real rule: CUDA only
    grid = HashGrid(3, n_levels=2, log2_hashmap_size=8, base_resolution=4, fast_paths="auto")
    for _ in range(2):
        grid(torch.rand(5, 3))
        assert rendering.render_weights(torch.rand(2, 3), torch.rand(2, 3))[0].grad_fn is None
    assert fast_paths.triton_kernels("hash_grid", "auto", torch.device("cpu")) is None
    lines = [r.getMessage() for r in fresh_selection.records]
    assert len(lines) == 1 and "CUDA devices only" in lines[0] and "PyTorch reference" in lines[0]
    assert fast_paths.triton_kernels("hash_grid", "off", torch.device("cuda")) is None


def test_triton_that_does_not_import_falls_back_with_one_line(fresh_selection, monkeypatch):
    monkeypatch.setattr(fast_paths, "_probe_cache", {"triton": False})
    for name in KERNELS:
        assert fast_paths.triton_kernels(name, "auto", "cuda:0") is None
    lines = [r.getMessage() for r in fresh_selection.records]
    assert len(lines) == 1 and "Triton does not import" in lines[0]
    assert fast_paths.triton_kernel_status() == {f"{name}@cuda:0": False for name in KERNELS}


def test_a_failing_self_check_falls_back_to_the_reference(kernels, fresh_selection, monkeypatch):
    def broken(device):
        raise RuntimeError("encode differs from the reference by 3.00e-01 (relative)")

    monkeypatch.setattr(kernels["hash_grid"], "self_check", broken)
    grid = random_grid(3, 9)
    expected = copy.deepcopy(grid)
    expected.fast_paths = "off"
    x = torch.rand(10, 3)
    for _ in range(2):
        out = grid(x)
        assert not through(out, "_EncodeBackward") and torch.equal(out, expected(x))
    lines = [r.getMessage() for r in fresh_selection.records]
    assert len(lines) == 1 and "hash_grid kernels failed their self-check" in lines[0] and "3.00e-01" in lines[0]


@pytest.mark.slow  # a fresh interpreter
def test_no_module_imports_triton_at_import_time():
    # (lightning and diffusers import triton themselves when it is installed: the NeRF modules are checked here)
    code = (
        "import sys, torch, threestudio.kernels, threestudio.models.renderers.nerf_volume_renderer\n"
        "import threestudio.models.geometry.implicit_volume as g\n"
        "from threestudio.models.renderers.rendering import render_weights\n"
        "geometry = g.ImplicitVolume({'normal_type': 'analytic', 'analytic_normal_method': 'explicit'}, "
        "fast_paths='auto')\n"
        "geometry(torch.rand(4, 3), output_normal=True)\n"
        "render_weights(torch.rand(2, 3), torch.rand(2, 3), fast_paths='auto')\n"
        "print('triton' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_systems_pass_their_mode_to_the_components():
    from threestudio.utils.config import load_config

    for mode, expected in (("auto", "auto"), ("false", "off")):  # YAML false = off
        cfg = load_config(os.path.join(os.path.dirname(__file__), "..", "configs", "smoke.yaml"),
                          cli_args=[f"system.fast_paths={mode}"])
        system = threestudio.find(cfg.system_type)(cfg.system)
        grids = [system.geometry.encoding, system.renderer.proposal_network[0]]
        assert system.cfg.fast_paths == expected and system.renderer.fast_paths == expected
        assert all(grid.fast_paths == expected for grid in grids)
