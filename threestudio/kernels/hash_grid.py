"""Triton kernels of the multiresolution hash-grid encoding (:class:`threestudio.models.networks.HashGrid`).

Same levels, scales, dense indexing of coarse levels, spatial hash and corner convention as the reference; the
metadata is read from the grid's buffers. One program encodes a block of points at one level: per cell corner
(``2^d``, unrolled) the table row, the d-linear weight and, for the Jacobian, the weight's derivative along each
axis (the lerp along that axis replaced by ±scale). Backward: fp32 atomic adds into a zeroed fp32 table gradient.
The kernels give no gradient w.r.t. the input points: :class:`HashGrid` uses them only for inputs that do not
require one (the Jacobian replaces it for explicit analytic normals). Inputs: 1 to 3 dimensions, float32.

This module imports Triton; import it only through :func:`threestudio.utils.fast_paths.triton_kernels`.
"""

from __future__ import annotations

import copy
from typing import Any, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

BLOCK = 128
MAX_INPUT_DIMS = 3


@triton.jit
def _axis(x_ptr, points, mask, d: tl.constexpr, D: tl.constexpr, scale):
    """Cell (int64), position in the cell and inside-[0, 1] flag (float) along axis d for a block of points."""
    x = tl.load(x_ptr + points * D + d, mask=mask, other=0.0)
    inside = ((x >= 0.0) & (x <= 1.0)).to(tl.float32)
    x = tl.minimum(tl.maximum(x, 0.0), 1.0)
    pos = x * scale + 0.5
    cell = tl.floor(pos)
    return cell.to(tl.int64), pos - cell, inside


@triton.jit
def _vertex(c: tl.constexpr, d: tl.constexpr, cell, frac, scale, max_vertex):
    """Vertex coordinate of corner c along axis d (bit d of c set: the upper vertex), its lerp weight and the
    weight's derivative w.r.t. x_d."""
    if (c >> d) & 1:
        vertex = tl.minimum(cell + 1, max_vertex)
        weight = frac
        slope = tl.zeros_like(frac) + scale
    else:
        vertex = tl.minimum(cell, max_vertex)
        weight = 1.0 - frac
        slope = tl.zeros_like(frac) - scale
    return vertex, weight, slope


@triton.jit
def _next_axis(c: tl.constexpr, d: tl.constexpr, cell, frac, scale, max_vertex, stride, prime, dense_row, hashed):
    """Adds axis d of corner c to the dense row and the spatial hash; returns them with the axis' lerp weight and
    its derivative."""
    vertex, weight, slope = _vertex(c, d, cell, frac, scale, max_vertex)
    return dense_row + vertex * stride, hashed ^ (vertex * prime), weight, slope


@triton.jit
def _corner(c: tl.constexpr, D: tl.constexpr, cell0, frac0, cell1, frac1, cell2, frac2, scale, max_vertex,
            stride0, stride1, stride2, prime1, prime2, dense, hash_mask, offset):
    """Table row (int64), d-linear weight and its derivatives along axes 0..2 of corner c for a block of points
    (axes beyond D are ignored)."""
    v0, weight, dw0 = _vertex(c, 0, cell0, frac0, scale, max_vertex)
    dense_row = v0 * stride0
    hashed = v0  # the first prime is 1
    dw1 = dw0
    dw2 = dw0
    if D > 1:
        dense_row, hashed, w1, s1 = _next_axis(c, 1, cell1, frac1, scale, max_vertex, stride1, prime1, dense_row,
                                               hashed)
        dw0, dw1, weight = dw0 * w1, weight * s1, weight * w1
    if D > 2:
        dense_row, hashed, w2, s2 = _next_axis(c, 2, cell2, frac2, scale, max_vertex, stride2, prime2, dense_row,
                                               hashed)
        dw0, dw1, dw2, weight = dw0 * w2, dw1 * w2, weight * s2, weight * w2
    row = tl.where(dense, dense_row, hashed & hash_mask) + offset
    return row, weight, dw0, dw1, dw2


@triton.jit
def _level(level, scales_ptr, res_ptr, offsets_ptr, sizes_ptr, dense_ptr, strides_ptr, primes_ptr, D: tl.constexpr):
    """Per-level constants: scale, largest vertex coordinate, row offset, hash mask, dense flag, strides, primes."""
    scale = tl.load(scales_ptr + level)
    max_vertex = tl.load(res_ptr + level) - 1
    offset = tl.load(offsets_ptr + level)
    hash_mask = tl.load(sizes_ptr + level) - 1
    dense = tl.load(dense_ptr + level) != 0
    stride0 = tl.load(strides_ptr + level * D)
    stride1 = stride0
    stride2 = stride0
    prime1 = tl.load(primes_ptr)
    prime2 = prime1
    if D > 1:
        stride1 = tl.load(strides_ptr + level * D + 1)
        prime1 = tl.load(primes_ptr + 1)
    if D > 2:
        stride2 = tl.load(strides_ptr + level * D + 2)
        prime2 = tl.load(primes_ptr + 2)
    return scale, max_vertex, offset, hash_mask, dense, stride0, stride1, stride2, prime1, prime2


@triton.jit
def _points_axes(x_ptr, points, mask, scale, D: tl.constexpr):
    cell0, frac0, in0 = _axis(x_ptr, points, mask, 0, D, scale)
    cell1, frac1, in1 = cell0, frac0, in0
    cell2, frac2, in2 = cell0, frac0, in0
    if D > 1:
        cell1, frac1, in1 = _axis(x_ptr, points, mask, 1, D, scale)
    if D > 2:
        cell2, frac2, in2 = _axis(x_ptr, points, mask, 2, D, scale)
    return cell0, frac0, in0, cell1, frac1, in1, cell2, frac2, in2


@triton.jit
def _gather_corner(table_ptr, table_index, fmask, weight, dw0, dw1, dw2, value, jac0, jac1, jac2, D: tl.constexpr,
                   WITH_JACOBIAN: tl.constexpr):
    """Adds one cell corner's table rows (``table_index`` (BLOCK, FP)) times its d-linear weight to ``value`` and,
    WITH_JACOBIAN, times the weight's derivative along each axis to ``jac0..2`` (all (BLOCK, FP))."""
    corner = tl.load(table_ptr + table_index, mask=fmask, other=0.0)
    value += weight[:, None] * corner
    if WITH_JACOBIAN:
        jac0 += dw0[:, None] * corner
        if D > 1:
            jac1 += dw1[:, None] * corner
        if D > 2:
            jac2 += dw2[:, None] * corner
    return value, jac0, jac1, jac2


@triton.jit
def _hash_grid_kernel(x_ptr, table_ptr, value_ptr, jac_ptr, scales_ptr, res_ptr, offsets_ptr, sizes_ptr, dense_ptr,
                      strides_ptr, primes_ptr, n_points, n_out,
                      D: tl.constexpr, N_CORNERS: tl.constexpr, F: tl.constexpr, FP: tl.constexpr,
                      WITH_JACOBIAN: tl.constexpr, BACKWARD: tl.constexpr, BLOCK_N: tl.constexpr):
    """A block of points at one level (program axis 1).

    Forward: value[n, level·F + f] from the table (and jac[n, level·F + f, j] = ∂value/∂x_j, zero where x_j is
    clamped). BACKWARD: value/jac hold the output gradients and table the (fp32, zeroed) table gradient, which gets
    Σ over points and corners of weight·grad_value (+ Σ_j ∂weight/∂x_j·grad_jac_j) by atomic adds."""
    level = tl.program_id(1)
    points = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = points < n_points
    feats = tl.arange(0, FP)
    fmask = mask[:, None] & (feats[None, :] < F)
    scale, max_vertex, offset, hash_mask, dense, st0, st1, st2, pr1, pr2 = _level(
        level, scales_ptr, res_ptr, offsets_ptr, sizes_ptr, dense_ptr, strides_ptr, primes_ptr, D)
    cell0, frac0, in0, cell1, frac1, in1, cell2, frac2, in2 = _points_axes(x_ptr, points, mask, scale, D)
    out_index = points[:, None] * n_out + level * F + feats[None, :]
    value = tl.zeros([BLOCK_N, FP], dtype=tl.float32)
    jac0 = tl.zeros([BLOCK_N, FP], dtype=tl.float32)
    jac1 = tl.zeros([BLOCK_N, FP], dtype=tl.float32)
    jac2 = tl.zeros([BLOCK_N, FP], dtype=tl.float32)
    if BACKWARD:  # the output gradients, the Jacobian's masked where the input was clamped
        value = tl.load(value_ptr + out_index, mask=fmask, other=0.0)
        if WITH_JACOBIAN:
            jac0 = tl.load(jac_ptr + out_index * D, mask=fmask, other=0.0) * in0[:, None]
            if D > 1:
                jac1 = tl.load(jac_ptr + out_index * D + 1, mask=fmask, other=0.0) * in1[:, None]
            if D > 2:
                jac2 = tl.load(jac_ptr + out_index * D + 2, mask=fmask, other=0.0) * in2[:, None]
    for c in tl.static_range(N_CORNERS):
        row, weight, dw0, dw1, dw2 = _corner(c, D, cell0, frac0, cell1, frac1, cell2, frac2, scale, max_vertex,
                                             st0, st1, st2, pr1, pr2, dense, hash_mask, offset)
        table_index = row[:, None] * F + feats[None, :]
        if BACKWARD:
            contribution = weight[:, None] * value
            if WITH_JACOBIAN:
                contribution += dw0[:, None] * jac0
                if D > 1:
                    contribution += dw1[:, None] * jac1
                if D > 2:
                    contribution += dw2[:, None] * jac2
            tl.atomic_add(table_ptr + table_index, contribution, mask=fmask, sem="relaxed")
        else:
            value, jac0, jac1, jac2 = _gather_corner(table_ptr, table_index, fmask, weight, dw0, dw1, dw2, value, jac0,
                                                     jac1, jac2, D, WITH_JACOBIAN)
    if not BACKWARD:
        tl.store(value_ptr + out_index, value, mask=fmask)
        if WITH_JACOBIAN:
            tl.store(jac_ptr + out_index * D, jac0 * in0[:, None], mask=fmask)
            if D > 1:
                tl.store(jac_ptr + out_index * D + 1, jac1 * in1[:, None], mask=fmask)
            if D > 2:
                tl.store(jac_ptr + out_index * D + 2, jac2 * in2[:, None], mask=fmask)


_PRIMES = (1, 2654435761, 805459861)  # the reference's first three (threestudio.models.networks._HASH_PRIMES)
_primes_on: dict = {}


def _metadata(grid: Any, device: torch.device) -> Tuple[Tensor, ...]:
    """The grid's per-level buffers in the kernels' argument order, plus the hash primes on ``device``."""
    if device not in _primes_on:
        _primes_on[device] = torch.tensor(_PRIMES, dtype=torch.int64, device=device)
    return (grid.scales, grid.resolutions, grid.level_offsets, grid.level_sizes_t, grid.is_dense,
            grid.axis_strides.contiguous(), _primes_on[device])


def _launch_grid(n_points: int, grid: Any) -> Tuple[int, int]:
    return (triton.cdiv(max(n_points, 1), BLOCK), grid.n_levels)


def _constants(grid: Any) -> dict:
    """The kernels' compile-time constants for ``grid``."""
    d, f = grid.n_input_dims, grid.n_features_per_level
    return dict(D=d, N_CORNERS=2**d, F=f, FP=triton.next_power_of_2(f), BLOCK_N=BLOCK)


def _forward(x: Tensor, table: Tensor, grid: Any, with_jacobian: bool) -> Tuple[Tensor, Optional[Tensor]]:
    n = x.shape[0]
    out = torch.empty(n, grid.n_output_dims, dtype=torch.float32, device=x.device)
    jac = None
    if with_jacobian:
        jac = torch.empty(n, grid.n_output_dims, grid.n_input_dims, dtype=torch.float32, device=x.device)
    if n:
        _hash_grid_kernel[_launch_grid(n, grid)](
            x, table, out, out if jac is None else jac, *_metadata(grid, x.device), n, grid.n_output_dims,
            WITH_JACOBIAN=with_jacobian, BACKWARD=False, **_constants(grid),
        )
    return out, jac


def _table_grad(x: Tensor, grad_out: Tensor, grad_jac: Optional[Tensor], grid: Any, numel: int) -> Tensor:
    grad_table = torch.zeros(numel, dtype=torch.float32, device=x.device)
    n = x.shape[0]
    if n:
        _hash_grid_kernel[_launch_grid(n, grid)](
            x, grad_table, grad_out, grad_out if grad_jac is None else grad_jac, *_metadata(grid, x.device), n,
            grid.n_output_dims, WITH_JACOBIAN=grad_jac is not None, BACKWARD=True, **_constants(grid),
        )
    return grad_table


def _check_no_input_grad(ctx: Any) -> None:
    if ctx.needs_input_grad[0]:
        raise RuntimeError("the Triton hash grid gives no gradient w.r.t. its input points; use the reference")


class _Encode(torch.autograd.Function):
    """(x (N, D), table (T·F,)) → encoding (N, L·F); backward into the table only."""

    @staticmethod
    def forward(ctx, x: Tensor, table: Tensor, grid: Any) -> Tensor:  # type: ignore[override]
        _check_no_input_grad(ctx)
        out, _ = _forward(x, table, grid, with_jacobian=False)
        ctx.save_for_backward(x)
        ctx.grid = grid
        ctx.table_numel = table.numel()
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        if not ctx.needs_input_grad[1]:
            return None, None, None
        return None, _table_grad(x, grad_out.contiguous(), None, ctx.grid, ctx.table_numel), None


class _EncodeWithJacobian(torch.autograd.Function):
    """(x (N, D), table) → encoding (N, L·F) and its input Jacobian (N, L·F, D); backward into the table only."""

    @staticmethod
    def forward(ctx, x: Tensor, table: Tensor, grid: Any) -> Tuple[Tensor, Tensor]:  # type: ignore[override]
        _check_no_input_grad(ctx)
        out, jac = _forward(x, table, grid, with_jacobian=True)
        ctx.save_for_backward(x)
        ctx.grid = grid
        ctx.table_numel = table.numel()
        return out, jac

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor, grad_jac: Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        if not ctx.needs_input_grad[1]:
            return None, None, None
        grad = _table_grad(x, grad_out.contiguous(), grad_jac.contiguous(), ctx.grid, ctx.table_numel)
        return None, grad, None


def aot_variants(launch: dict) -> list:
    """Variants of a recorded launch (kernel, arguments by name) that other calls take, for ahead-of-time
    compilation: with and without the Jacobian, forward and backward."""
    return [dict(launch, args=dict(launch["args"], WITH_JACOBIAN=jacobian, BACKWARD=backward))
            for jacobian in (False, True) for backward in (False, True)]


def supports(grid: Any, x: Tensor) -> bool:
    """Whether these kernels can encode x (N, D) with ``grid``: 1 ≤ D ≤ 3, float32 points and table, no gradient
    wanted w.r.t. x."""
    return (
        1 <= grid.n_input_dims <= MAX_INPUT_DIMS
        and x.dtype == torch.float32
        and grid.params.dtype == torch.float32
        and not x.requires_grad
    )


def encode(grid: Any, x: Tensor) -> Tensor:
    """``grid(x)`` for points x (N, D) (clamped to [0, 1]) → (N, n_output_dims) float32, differentiable w.r.t.
    ``grid.params``."""
    return _Encode.apply(x.contiguous(), grid.params, grid)


def encode_with_jacobian(grid: Any, x: Tensor) -> Tuple[Tensor, Tensor]:
    """``grid.forward_with_jacobian(x)``: encoding (N, n_output_dims) and Jacobian (N, n_output_dims, D), both
    differentiable w.r.t. ``grid.params``."""
    return _EncodeWithJacobian.apply(x.contiguous(), grid.params, grid)


def _max_relative_error(value: Tensor, reference: Tensor) -> float:
    value, reference = value.detach().double(), reference.detach().double()
    return float((value - reference).abs().max() / reference.abs().max().clamp_min(1e-30))


def compare_with_reference(grid: Any, x: Tensor, reference_dtype: torch.dtype = torch.float64, seed: int = 0) -> dict:
    """Largest relative errors (max |Δ| / max |reference|) of the kernels against a copy of ``grid`` on the
    reference path in ``reference_dtype``: encoding, its table gradient, Jacobian and the Jacobian path's table
    gradient, for points x (N, D) and random output gradients. ``grid`` is a float32 :class:`HashGrid`."""
    gen = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    grad_value = torch.randn(n, grid.n_output_dims, generator=gen).to(x.device)
    grad_jac = torch.randn(n, grid.n_output_dims, grid.n_input_dims, generator=gen).to(x.device)
    reference = copy.deepcopy(grid).to(reference_dtype)
    reference.fast_paths = "off"
    x_reference = x.to(reference_dtype)
    errors = {}
    for name, kernel_fn, reference_fn, grads in (
        ("encode", encode, reference.forward, (grad_value,)),
        ("jacobian", encode_with_jacobian, reference.forward_with_jacobian, (grad_value, grad_jac)),
    ):
        grid.params.grad = reference.params.grad = None
        outputs = kernel_fn(grid, x)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        torch.autograd.backward(outputs, grads)
        expected = reference_fn(x_reference)
        expected = expected if isinstance(expected, tuple) else (expected,)
        torch.autograd.backward(expected, [g.to(reference_dtype) for g in grads])
        errors[name] = max(_max_relative_error(o, e) for o, e in zip(outputs, expected))
        errors[name + "_table_grad"] = _max_relative_error(grid.params.grad, reference.params.grad)
    grid.params.grad = None
    return errors


def self_check(device: Any, tolerance: float = 1e-4) -> None:
    """Raise when the kernels on ``device`` differ from the reference (dense and hashed levels, points inside and
    outside [0, 1]); the global random state, autocast and grad mode are left as they were."""
    from threestudio.models.networks import HashGrid

    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(torch.device(device).type, enabled=False):
        grid = HashGrid(3, n_levels=4, n_features_per_level=2, log2_hashmap_size=9, base_resolution=4,
                        per_level_scale=2.0, fast_paths="off")
        with torch.no_grad():
            grid.params.copy_(torch.rand(grid.params.shape, generator=gen) * 2.0 - 1.0)
        grid = grid.to(device)
        x = (torch.rand(120, 3, generator=gen) * 1.2 - 0.1).to(device)
        errors = compare_with_reference(grid, x)
    worst = max(errors, key=errors.get)
    if not errors[worst] <= tolerance:
        raise RuntimeError(f"{worst} differs from the reference by {errors[worst]:.2e} (relative)")
