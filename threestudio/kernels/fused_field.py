"""The NeRF field fused into Triton kernels: hash-grid encoding + density and feature MLPs (tiny-cuda-nn's "fully
fused" idea), forward and backward, for :class:`threestudio.models.geometry.implicit_volume.ImplicitVolume`.

Forward (:func:`_fused_field_kernel`, one launch): one program takes a block of ``BLOCK`` contracted points and
loops over the grid levels; per level it gathers the cell corners with the ``@triton.jit`` helpers of
:mod:`threestudio.kernels.hash_grid` (imported) and adds the level's encoding columns to both heads' first-layer
pre-activations in registers (``z1 += enc[:, k] ⊗ w1[:, k]``), and, for normals, the first layer applied to the
encoding's Jacobian (``a_j += jac[:, k, j] ⊗ w1d[:, k]``); then the middle layer (``tl.dot``, fp32
``input_precision="ieee"``: the reference's precision, not TF32), ReLU and the output layers, the hidden activations
staying in registers. Written: the raw density (before the density bias and activation) (N, 1), the features
(N, C) and, for explicit analytic normals, ∂raw/∂contracted (N, 3) = raw_grad (N, E) · enc_jacobian (N, E, 3)
= u · a_j (u = ∂raw/∂z1), :meth:`ImplicitVolume._forward_explicit_normals`' ``grad_contracted``. Only one level's
corners are in registers at a time: all 16 levels at once took 168 registers for the encoding alone.

Backward (:class:`_FusedField`, two launches, both recomputing the encoding in registers):

- :func:`_fused_field_heads_backward_kernel`: the first layers again (one pass over the levels), then the heads'
  backward; writes the gradients w.r.t. the first layers' pre-activations (dz, dzf and, for normals, u: 3·H floats
  per point) and the later layers' weight gradients. One kernel for everything needs more than 255 registers at
  the paper's shapes (two hidden layers of 32 with normals) and spills; this hand-over is the price;
- :func:`_fused_field_levels_backward_kernel`: a second pass over the levels gives each encoding column's gradient
  and sends it to the table (fp32 atomic adds, as :mod:`.hash_grid`: corner weights · ∂L/∂enc, plus the corner
  weights' derivatives · ∂L/∂jacobian for the normals output), to the first layers' weights and, when the points
  require a gradient, to the points (through the encoding's Jacobian).

Weight gradients: the backward programs are persistent (at most ``MAX_PROGRAMS``, each loops over blocks) and add
their blocks' products to their own zeroed partial sums in global memory (a plain read-modify-write of a slice no
other program touches; it stays in cache), reduced by ``torch.sum`` afterwards. Chosen over atomics: the few weights
(2·32·32 + 2·32·32 + 32 + 3·32 at the paper's shapes) would take atomics from every block on the same addresses, and
partial sums keep the weight gradients deterministic; over registers: sums carried from block to block spill.

The normals output carries its gradient to the table (through the Jacobian) and to the MLP weights (ReLU' is
piecewise constant, so first order), never to the points: the explicit-normals path passes detached contracted
points (:func:`field_with_normals` refuses points that require a gradient), so there is no second derivative.

Supported (:func:`supports`): a float32 :class:`HashGrid` on 1–3 input dims with ≤ 8 features per level (any number
of levels); two :class:`VanillaMLP` heads of the same depth, one or two hidden ReLU layers of one power-of-two width
16–128, output activation ``none``, no biases, float32 weights; a one-output density head; 1–16 features. Anything
else takes the reference. Block sizes, warps and a register cap per kernel were chosen so that every variant at the
paper's shapes compiles for sm_80 and sm_90 without register spills (tests/test_triton_aot.py).

This module imports Triton; import it only through :func:`threestudio.utils.fast_paths.triton_kernels`.
"""

from __future__ import annotations

import copy
import functools
from typing import Any, Dict, List, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from threestudio.kernels.hash_grid import MAX_INPUT_DIMS, _corner, _gather_corner, _level, _metadata, _points_axes

# points per block and warps per program, per kernel: the largest that compile without register spills at the
# paper's shapes for sm_80 and sm_90 (tests/test_triton_aot.py)
BLOCK, NUM_WARPS = 32, 4  # forward, and the backward's pass over the levels
HEADS_BLOCK, HEADS_WARPS = 16, 8  # the backward's heads (two hidden layers with normals need the most registers)
# the heads' register cap without normals, explicit: without one, ptxas (Triton 3.9's, sm_90) capped that variant at
# 128 registers and spilled 24 bytes (with normals it takes 220 by itself, and spills under a cap of 232 or 255)
HEADS_MAXNREG = 168
# the levels pass's register cap, explicit for the same reason (Triton 3.6's ptxas put its points'-gradient variant
# at 168 registers with 8 bytes of stack): 192 for hidden widths up to 32, else 255 (64 with normals takes 245)
LEVELS_MAXNREG = 192
MAX_PROGRAMS = 512  # backward: persistent programs, each adds its blocks' weight gradients to its own partial sums
MIN_DOT = 16  # tl.dot's smallest tile side
DOT_PRECISION: tl.constexpr = tl.constexpr("ieee")  # fp32 products as the reference's (not TF32)


@triton.jit
def _point_vector(ptr, points, pmask, D: tl.constexpr, LOAD: tl.constexpr):
    """Axes 0..2 (each (BLOCK_N,); zeros beyond D, and everywhere unless LOAD) of a (N, D) per-point vector."""
    v0 = tl.zeros(points.shape, dtype=tl.float32)
    v1 = v0
    v2 = v0
    if LOAD:
        v0 = tl.load(ptr + points * D, mask=pmask, other=0.0)
        if D > 1:
            v1 = tl.load(ptr + points * D + 1, mask=pmask, other=0.0)
        if D > 2:
            v2 = tl.load(ptr + points * D + 2, mask=pmask, other=0.0)
    return v0, v1, v2


@triton.jit
def _level_encode(x_ptr, table_ptr, points, pmask, level, scales_ptr, res_ptr, offsets_ptr, sizes_ptr, dense_ptr,
                  strides_ptr, primes_ptr, D: tl.constexpr, N_CORNERS: tl.constexpr, F: tl.constexpr,
                  FP: tl.constexpr, WITH_JACOBIAN: tl.constexpr):
    """Features (BLOCK_N, FP) of one level for a block of points and, WITH_JACOBIAN, their derivatives along axes
    0..2 (zero where the coordinate was clamped)."""
    feats = tl.arange(0, FP)
    fmask = pmask[:, None] & (feats[None, :] < F)
    scale, max_vertex, offset, hash_mask, dense, st0, st1, st2, pr1, pr2 = _level(
        level, scales_ptr, res_ptr, offsets_ptr, sizes_ptr, dense_ptr, strides_ptr, primes_ptr, D)
    cell0, frac0, in0, cell1, frac1, in1, cell2, frac2, in2 = _points_axes(x_ptr, points, pmask, scale, D)
    value = tl.zeros([points.shape[0], FP], dtype=tl.float32)
    jac0 = tl.zeros([points.shape[0], FP], dtype=tl.float32)
    jac1 = tl.zeros([points.shape[0], FP], dtype=tl.float32)
    jac2 = tl.zeros([points.shape[0], FP], dtype=tl.float32)
    for c in tl.static_range(N_CORNERS):
        row, weight, dw0, dw1, dw2 = _corner(c, D, cell0, frac0, cell1, frac1, cell2, frac2, scale, max_vertex,
                                             st0, st1, st2, pr1, pr2, dense, hash_mask, offset)
        value, jac0, jac1, jac2 = _gather_corner(table_ptr, row[:, None] * F + feats[None, :], fmask, weight, dw0, dw1,
                                                 dw2, value, jac0, jac1, jac2, D, WITH_JACOBIAN)
    return value, jac0 * in0[:, None], jac1 * in1[:, None], jac2 * in2[:, None]


@triton.jit
def _level_table_backward(x_ptr, grad_table_ptr, points, pmask, level, grad_value, grad_jac0, grad_jac1, grad_jac2,
                          scales_ptr, res_ptr, offsets_ptr, sizes_ptr, dense_ptr, strides_ptr, primes_ptr,
                          D: tl.constexpr, N_CORNERS: tl.constexpr, F: tl.constexpr, FP: tl.constexpr,
                          WITH_JACOBIAN: tl.constexpr):
    """Atomic adds into the table gradient of one level: Σ corners weight · grad_value (+ Σ_j ∂weight/∂x_j ·
    grad_jac_j, masked where x_j was clamped); grads (BLOCK_N, FP)."""
    feats = tl.arange(0, FP)
    fmask = pmask[:, None] & (feats[None, :] < F)
    scale, max_vertex, offset, hash_mask, dense, st0, st1, st2, pr1, pr2 = _level(
        level, scales_ptr, res_ptr, offsets_ptr, sizes_ptr, dense_ptr, strides_ptr, primes_ptr, D)
    cell0, frac0, in0, cell1, frac1, in1, cell2, frac2, in2 = _points_axes(x_ptr, points, pmask, scale, D)
    grad_jac0 = grad_jac0 * in0[:, None]
    grad_jac1 = grad_jac1 * in1[:, None]
    grad_jac2 = grad_jac2 * in2[:, None]
    for c in tl.static_range(N_CORNERS):
        row, weight, dw0, dw1, dw2 = _corner(c, D, cell0, frac0, cell1, frac1, cell2, frac2, scale, max_vertex,
                                             st0, st1, st2, pr1, pr2, dense, hash_mask, offset)
        contribution = weight[:, None] * grad_value
        if WITH_JACOBIAN:
            contribution += dw0[:, None] * grad_jac0
            if D > 1:
                contribution += dw1[:, None] * grad_jac1
            if D > 2:
                contribution += dw2[:, None] * grad_jac2
        tl.atomic_add(grad_table_ptr + row[:, None] * F + feats[None, :], contribution, mask=fmask, sem="relaxed")


@triton.jit
def _column(tile, f: tl.constexpr, FP: tl.constexpr):
    """Column f (BLOCK_N,) of a (BLOCK_N, FP) tile."""
    return tl.sum(tl.where(tl.arange(0, FP)[None, :] == f, tile, 0.0), axis=1)


@triton.jit
def _hidden(z1, wm_ptr, H: tl.constexpr, TWO_HIDDEN: tl.constexpr):
    """The last hidden layer's pre-activation (BLOCK_N, H) from the first one's and the middle weight (H, H)
    (out, in) when there are two hidden layers (else z1 and a placeholder)."""
    hidden = tl.arange(0, H)
    z2 = z1
    wm = z1
    if TWO_HIDDEN:
        wm = tl.load(wm_ptr + hidden[:, None] * H + hidden[None, :])
        z2 = tl.dot(tl.maximum(z1, 0.0), tl.trans(wm), input_precision=DOT_PRECISION)
    return z2, wm


@triton.jit
def _fused_field_kernel(x_ptr, table_ptr, w1d_ptr, wmd_ptr, wod_ptr, w1f_ptr, wmf_ptr, wof_ptr, raw_ptr, feat_ptr,
                        grad_ptr, scales_ptr, res_ptr, offsets_ptr, sizes_ptr, dense_ptr, strides_ptr, primes_ptr,
                        n_points, n_levels, n_features,
                        D: tl.constexpr, N_CORNERS: tl.constexpr, F: tl.constexpr, FP: tl.constexpr,
                        H: tl.constexpr, CP: tl.constexpr, TWO_HIDDEN: tl.constexpr, NORMALS: tl.constexpr,
                        BLOCK_N: tl.constexpr):
    """Forward for a block of points: raw density (N,), features (N, n_features) and, NORMALS, ∂raw/∂x (N, D).
    Weights as ``nn.Linear`` stores them (out, in): first layers w1 (H, L·F), middle wm (H, H) (TWO_HIDDEN),
    outputs wo (1, H) (density) and (n_features, H).

    The first layers are accumulated level by level (z1 += enc[:, k] ⊗ w1[:, k], k = level·F + f), so that one
    level's corners are in registers at a time; for the normals also a_j = w1 · jac[:, :, j] (BLOCK_N, H), and
    ∂raw/∂x_j = u1 · a_j with u1 = ∂raw/∂z1 = S1 wmᵀ S2 wod (S = diag relu'(z))."""
    points = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    pmask = points < n_points
    hidden = tl.arange(0, H)
    outs = tl.arange(0, CP)
    n_cols = n_levels * F
    z1d = tl.zeros([BLOCK_N, H], dtype=tl.float32)
    z1f = tl.zeros([BLOCK_N, H], dtype=tl.float32)
    a0 = tl.zeros([BLOCK_N, H], dtype=tl.float32)
    a1 = tl.zeros([BLOCK_N, H], dtype=tl.float32)
    a2 = tl.zeros([BLOCK_N, H], dtype=tl.float32)
    for level in range(n_levels):
        value, jac0, jac1, jac2 = _level_encode(x_ptr, table_ptr, points, pmask, level, scales_ptr, res_ptr,
                                                offsets_ptr, sizes_ptr, dense_ptr, strides_ptr, primes_ptr, D,
                                                N_CORNERS, F, FP, NORMALS)
        for f in tl.static_range(F):
            k = level * F + f
            w1d = tl.load(w1d_ptr + hidden * n_cols + k)[None, :]
            z1d += _column(value, f, FP)[:, None] * w1d
            z1f += _column(value, f, FP)[:, None] * tl.load(w1f_ptr + hidden * n_cols + k)[None, :]
            if NORMALS:
                a0 += _column(jac0, f, FP)[:, None] * w1d
                if D > 1:
                    a1 += _column(jac1, f, FP)[:, None] * w1d
                if D > 2:
                    a2 += _column(jac2, f, FP)[:, None] * w1d
    wod = tl.load(wod_ptr + hidden)  # (H,)
    z2d, wmd = _hidden(z1d, wmd_ptr, H, TWO_HIDDEN)
    tl.store(raw_ptr + points, tl.sum(tl.maximum(z2d, 0.0) * wod[None, :], axis=1), mask=pmask)
    if NORMALS:
        u = tl.where(z2d > 0.0, wod[None, :], 0.0)
        if TWO_HIDDEN:
            u = tl.where(z1d > 0.0, tl.dot(u, wmd, input_precision=DOT_PRECISION), 0.0)
        tl.store(grad_ptr + points * D, tl.sum(u * a0, axis=1), mask=pmask)
        if D > 1:
            tl.store(grad_ptr + points * D + 1, tl.sum(u * a1, axis=1), mask=pmask)
        if D > 2:
            tl.store(grad_ptr + points * D + 2, tl.sum(u * a2, axis=1), mask=pmask)
    z2f, wmf = _hidden(z1f, wmf_ptr, H, TWO_HIDDEN)
    wof_t = tl.load(wof_ptr + outs[None, :] * H + hidden[:, None], mask=(outs < n_features)[None, :], other=0.0)
    feat = tl.dot(tl.maximum(z2f, 0.0), wof_t, input_precision=DOT_PRECISION)  # (BLOCK_N, CP)
    tl.store(feat_ptr + points[:, None] * n_features + outs[None, :], feat,
             mask=pmask[:, None] & (outs < n_features)[None, :])


@triton.jit
def _add_to(ptr, offsets, value):
    """ptr[offsets] += value in a program-private slice (a plain read-modify-write)."""
    tl.store(ptr + offsets, tl.load(ptr + offsets) + value)


@triton.jit
def _fused_field_heads_backward_kernel(x_ptr, table_ptr, w1d_ptr, wmd_ptr, wod_ptr, w1f_ptr, wmf_ptr, wof_ptr,
                                       g_raw_ptr, g_feat_ptr, g_normal_ptr, dz_ptr, dzf_ptr, u_ptr, part_wmd_ptr,
                                       part_wod_ptr, part_wmf_ptr, part_wof_ptr, scales_ptr, res_ptr, offsets_ptr,
                                       sizes_ptr, dense_ptr, strides_ptr, primes_ptr, n_points, n_levels,
                                       n_features, n_blocks,
                                       D: tl.constexpr, N_CORNERS: tl.constexpr, F: tl.constexpr, FP: tl.constexpr,
                                       H: tl.constexpr, CP: tl.constexpr, TWO_HIDDEN: tl.constexpr,
                                       NORMALS: tl.constexpr, BLOCK_N: tl.constexpr):
    """Backward, first kernel (persistent: program p takes blocks p, p + P, ...): a pass over the levels rebuilds
    the first layers' pre-activations (and, NORMALS, t = w1d · v with v = jac · g_normal), then the heads'
    backward runs in registers. Writes the gradients w.r.t. the first layers' pre-activations, dz (density), dzf
    (features) and, NORMALS, u = ∂raw/∂z1 (each (N, H)), for :func:`_fused_field_levels_backward_kernel`, and adds
    the later layers' weight gradients to the program's own zeroed partial sums (part_wm* (P, H, H)
    (TWO_HIDDEN), part_wod (P, H), part_wof (P, CP, H)).

    Two kernels rather than one: at the paper's shapes (two hidden layers of 32, normals) the single kernel needs
    more than 255 registers per thread and spills (tests/test_triton_aot.py); the hand-over costs 3·H floats per
    point written and read.

    Gradients in: raw (N,), features (N, n_features) and, NORMALS, ∂raw/∂x (N, D). The normals' term is
    wodᵀ S2 wm S1 w1 v (S = diag relu'(z), piecewise constant: first order): it adds u ⊗ v to w1d's gradient
    (u = S1 wmᵀ S2 wod), u2 ⊗ q to wm's (u2 = S2 wod, q = S1 t), S2 wm q to wod's, and g_normal ⊗ (u w1d) to
    the Jacobian's, hence the table's (one hidden layer: S2 = S1, no wm)."""
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    hidden = tl.arange(0, H)
    outs = tl.arange(0, CP)
    n_cols = n_levels * F
    for block in range(pid, n_blocks, n_programs):
        points = tl.arange(0, BLOCK_N).to(tl.int64) + block * BLOCK_N  # N < 2^31 points
        pmask = points < n_points
        gn0, gn1, gn2 = _point_vector(g_normal_ptr, points, pmask, D, NORMALS)
        # first pass: the first layers (and t = w1d · v)
        z1d = tl.zeros([BLOCK_N, H], dtype=tl.float32)
        z1f = tl.zeros([BLOCK_N, H], dtype=tl.float32)
        t = tl.zeros([BLOCK_N, H], dtype=tl.float32)
        for level in range(n_levels):
            value, jac0, jac1, jac2 = _level_encode(x_ptr, table_ptr, points, pmask, level, scales_ptr, res_ptr,
                                                    offsets_ptr, sizes_ptr, dense_ptr, strides_ptr, primes_ptr, D,
                                                    N_CORNERS, F, FP, NORMALS)
            v = gn0[:, None] * jac0 + gn1[:, None] * jac1 + gn2[:, None] * jac2  # (BLOCK_N, FP)
            for f in tl.static_range(F):
                k = level * F + f
                w1d = tl.load(w1d_ptr + hidden * n_cols + k)[None, :]
                z1d += _column(value, f, FP)[:, None] * w1d
                z1f += _column(value, f, FP)[:, None] * tl.load(w1f_ptr + hidden * n_cols + k)[None, :]
                if NORMALS:
                    t += _column(v, f, FP)[:, None] * w1d
        # the density head (and the normals' term); the program's partial sums (pointers made here: shorter lives)
        part_wmd = part_wmd_ptr + pid * (H * H)
        part_wod = part_wod_ptr + pid * H
        wod = tl.load(wod_ptr + hidden)
        z2d, wmd = _hidden(z1d, wmd_ptr, H, TWO_HIDDEN)
        g_raw = tl.load(g_raw_ptr + points, mask=pmask, other=0.0)
        _add_to(part_wod, hidden, tl.sum(g_raw[:, None] * tl.maximum(z2d, 0.0), axis=0))
        dz = tl.where(z2d > 0.0, g_raw[:, None] * wod[None, :], 0.0)
        u = tl.where(z2d > 0.0, wod[None, :], 0.0)  # S2 wod
        if TWO_HIDDEN:  # (each gradient term is added as soon as it is known: fewer registers held)
            _add_to(part_wmd, hidden[:, None] * H + hidden[None, :],
                    tl.dot(tl.trans(dz), tl.maximum(z1d, 0.0), input_precision=DOT_PRECISION))
            dz = tl.where(z1d > 0.0, tl.dot(dz, wmd, input_precision=DOT_PRECISION), 0.0)
            if NORMALS:
                q = tl.where(z1d > 0.0, t, 0.0)
                # second read-modify-writes of the same slices in this block: the first ones' stores must be seen
                # (the two products' layouts may give an element to another thread)
                tl.debug_barrier()
                _add_to(part_wod, hidden, tl.sum(
                    tl.where(z2d > 0.0, tl.dot(q, tl.trans(wmd), input_precision=DOT_PRECISION), 0.0), axis=0))
                _add_to(part_wmd, hidden[:, None] * H + hidden[None, :],
                        tl.dot(tl.trans(u), q, input_precision=DOT_PRECISION))
                u = tl.where(z1d > 0.0, tl.dot(u, wmd, input_precision=DOT_PRECISION), 0.0)
        elif NORMALS:
            tl.debug_barrier()  # as above
            _add_to(part_wod, hidden, tl.sum(tl.where(z1d > 0.0, t, 0.0), axis=0))
        # the feature head
        part_wmf = part_wmf_ptr + pid * (H * H)
        part_wof = part_wof_ptr + pid * (CP * H)
        z2f, wmf = _hidden(z1f, wmf_ptr, H, TWO_HIDDEN)
        g_feat = tl.load(g_feat_ptr + points[:, None] * n_features + outs[None, :],
                         mask=pmask[:, None] & (outs < n_features)[None, :], other=0.0)  # (BLOCK_N, CP)
        wof = tl.load(wof_ptr + outs[:, None] * H + hidden[None, :], mask=(outs < n_features)[:, None], other=0.0)
        _add_to(part_wof, outs[:, None] * H + hidden[None, :],
                tl.dot(tl.trans(g_feat), tl.maximum(z2f, 0.0), input_precision=DOT_PRECISION))
        dzf = tl.where(z2f > 0.0, tl.dot(g_feat, wof, input_precision=DOT_PRECISION), 0.0)
        if TWO_HIDDEN:
            _add_to(part_wmf, hidden[:, None] * H + hidden[None, :],
                    tl.dot(tl.trans(dzf), tl.maximum(z1f, 0.0), input_precision=DOT_PRECISION))
            dzf = tl.where(z1f > 0.0, tl.dot(dzf, wmf, input_precision=DOT_PRECISION), 0.0)
        rows = points[:, None] * H + hidden[None, :]
        tl.store(dz_ptr + rows, dz, mask=pmask[:, None])
        tl.store(dzf_ptr + rows, dzf, mask=pmask[:, None])
        if NORMALS:
            tl.store(u_ptr + rows, u, mask=pmask[:, None])
        tl.debug_barrier()  # this block's read-modify-writes of the partial sums are seen by the next one


@triton.jit
def _fused_field_levels_backward_kernel(x_ptr, table_ptr, w1d_ptr, w1f_ptr, g_normal_ptr, dz_ptr, dzf_ptr, u_ptr,
                                        grad_table_ptr, grad_x_ptr, part_w1d_ptr, part_w1f_ptr, scales_ptr, res_ptr,
                                        offsets_ptr, sizes_ptr, dense_ptr, strides_ptr, primes_ptr, n_points,
                                        n_levels, n_blocks,
                                        D: tl.constexpr, N_CORNERS: tl.constexpr, F: tl.constexpr,
                                        FP: tl.constexpr, H: tl.constexpr, NORMALS: tl.constexpr,
                                        POINTS_GRAD: tl.constexpr, BLOCK_N: tl.constexpr):
    """Backward, second kernel (persistent): from dz, dzf and u of :func:`_fused_field_heads_backward_kernel`, a
    pass over the levels re-encodes each level and gives its encoding columns' gradients: into the table (atomic
    adds, fp32), the first layers' weights (the program's own zeroed partial sums part_w1* (P, H, L·F)) and, when
    POINTS_GRAD, the points (through the encoding's Jacobian)."""
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    hidden = tl.arange(0, H)
    feats = tl.arange(0, FP)
    n_cols = n_levels * F
    part_w1d_ptr += pid * H * n_cols
    part_w1f_ptr += pid * H * n_cols
    for block in range(pid, n_blocks, n_programs):
        points = tl.arange(0, BLOCK_N).to(tl.int64) + block * BLOCK_N  # N < 2^31 points
        pmask = points < n_points
        gn0, gn1, gn2 = _point_vector(g_normal_ptr, points, pmask, D, NORMALS)
        rows = points[:, None] * H + hidden[None, :]
        dz = tl.load(dz_ptr + rows, mask=pmask[:, None], other=0.0)
        dzf = tl.load(dzf_ptr + rows, mask=pmask[:, None], other=0.0)
        u = dz
        if NORMALS:
            u = tl.load(u_ptr + rows, mask=pmask[:, None], other=0.0)
        # each level's encoding columns → table, first layers' weights, points
        gx0 = tl.zeros([BLOCK_N], dtype=tl.float32)
        gx1 = gx0
        gx2 = gx0
        for level in range(n_levels):
            value, jac0, jac1, jac2 = _level_encode(x_ptr, table_ptr, points, pmask, level, scales_ptr, res_ptr,
                                                    offsets_ptr, sizes_ptr, dense_ptr, strides_ptr, primes_ptr, D,
                                                    N_CORNERS, F, FP, NORMALS or POINTS_GRAD)
            grad_value = tl.zeros([BLOCK_N, FP], dtype=tl.float32)
            raw_grad = tl.zeros([BLOCK_N, FP], dtype=tl.float32)
            for f in tl.static_range(F):
                k = level * F + f
                w1d = tl.load(w1d_ptr + hidden * n_cols + k)[None, :]
                w1f = tl.load(w1f_ptr + hidden * n_cols + k)[None, :]
                enc = _column(value, f, FP)[:, None]
                grad_enc = tl.sum(dz * w1d, axis=1) + tl.sum(dzf * w1f, axis=1)  # (BLOCK_N,)
                grad_w1d = tl.sum(dz * enc, axis=0)
                if NORMALS:
                    v = gn0 * _column(jac0, f, FP) + gn1 * _column(jac1, f, FP) + gn2 * _column(jac2, f, FP)
                    grad_w1d += tl.sum(u * v[:, None], axis=0)
                    raw_grad += tl.where(feats[None, :] == f, tl.sum(u * w1d, axis=1)[:, None], 0.0)
                _add_to(part_w1d_ptr, hidden * n_cols + k, grad_w1d)
                _add_to(part_w1f_ptr, hidden * n_cols + k, tl.sum(dzf * enc, axis=0))
                grad_value += tl.where(feats[None, :] == f, grad_enc[:, None], 0.0)
                if POINTS_GRAD:
                    gx0 += grad_enc * _column(jac0, f, FP)
                    gx1 += grad_enc * _column(jac1, f, FP)
                    gx2 += grad_enc * _column(jac2, f, FP)
            _level_table_backward(x_ptr, grad_table_ptr, points, pmask, level, grad_value, raw_grad * gn0[:, None],
                                  raw_grad * gn1[:, None], raw_grad * gn2[:, None], scales_ptr, res_ptr,
                                  offsets_ptr, sizes_ptr, dense_ptr, strides_ptr, primes_ptr, D, N_CORNERS, F, FP,
                                  NORMALS)
        if POINTS_GRAD:
            tl.store(grad_x_ptr + points * D, gx0, mask=pmask)
            if D > 1:
                tl.store(grad_x_ptr + points * D + 1, gx1, mask=pmask)
            if D > 2:
                tl.store(grad_x_ptr + points * D + 2, gx2, mask=pmask)
        tl.debug_barrier()  # this block's read-modify-writes of the partial sums are seen by the next one



# ---------------------------------------------------------------------- host side
def _constants(grid: Any, n_neurons: int, n_features: int, two_hidden: bool) -> Dict[str, int]:
    """Compile-time constants: dims, corners, features per level F (padded: FP), hidden width H, padded feature
    outputs CP (≥ 16: a ``tl.dot`` side), one or two hidden layers."""
    f = grid.n_features_per_level
    return dict(D=grid.n_input_dims, N_CORNERS=2**grid.n_input_dims, F=f, FP=triton.next_power_of_2(f),
                H=n_neurons, CP=max(MIN_DOT, triton.next_power_of_2(n_features)), TWO_HIDDEN=two_hidden,
                BLOCK_N=BLOCK)


def launch_flops(kernel: str, args: Dict[str, Any]) -> float:
    """fp32 FLOPs a launch of ``kernel`` executes (for the step tracer's roofline: the MLPs' products, padded
    feature outputs included; the encoding's interpolation is counted as traffic), from its arguments by name."""
    n, e, h = args["n_points"], args["n_levels"] * args["F"], args["H"]
    two, normals, cp = bool(args.get("TWO_HIDDEN")), bool(args.get("NORMALS")), args.get("CP", 0)
    hh = 2 * h * h if two else 0  # one H × H product per point
    if kernel == "_fused_field_kernel":  # first layers, middle layers, outputs; normals: w1d · jac, u, u · a_j
        per_point = 4 * e * h + 2 * hh + 2 * h + 2 * h * cp + (6 * e * h + hh + 6 * h if normals else 0)
    elif kernel == "_fused_field_heads_backward_kernel":  # first layers (+ t), middle layers again, heads' backward
        per_point = 4 * e * h + 2 * hh + 4 * h + 4 * h * cp + 4 * hh + (2 * e * h + 3 * hh + 2 * h if normals else 0)
    elif kernel == "_fused_field_levels_backward_kernel":  # per encoding column: its gradient, weights' gradients
        per_point = e * (8 * h + (4 * h if normals else 0))
    else:
        return 0.0
    return float(n * per_point)


def aot_variants(launch: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Variants of a recorded launch (``threestudio.profiling.step_trace``'s record: kernel, arguments by name) that
    other calls of the same field take, for ahead-of-time compilation: the forward with and without normals, the
    backward's heads with and without them (the register cap without), its levels pass with normals, with the
    points' gradient, with neither."""

    def variant(**changes: Any) -> Dict[str, Any]:
        args = dict(launch["args"])
        for key, value in changes.items():
            if value is None:
                args.pop(key, None)
            else:
                args[key] = value
        return dict(launch, args=args)

    if launch["kernel"] == "_fused_field_kernel":
        return [variant(NORMALS=normals) for normals in (False, True)]
    if launch["kernel"] == "_fused_field_heads_backward_kernel":
        return [variant(NORMALS=True, maxnreg=None), variant(NORMALS=False, maxnreg=HEADS_MAXNREG)]
    if launch["kernel"] == "_fused_field_levels_backward_kernel":
        return [variant(NORMALS=n, POINTS_GRAD=p) for n, p in ((True, False), (False, True), (False, False))]
    return []


def _weights(density_mlp: Any, feature_mlp: Any) -> Tuple[Optional[Tensor], ...]:
    """(w1, wm, wo) of the density head then of the feature head; wm None with one hidden layer."""
    out = []
    for mlp in (density_mlp, feature_mlp):
        layers = [layer.weight for layer in mlp.layers]
        out += [layers[0], layers[1] if len(layers) == 3 else None, layers[-1]]
    return tuple(out)


class _FusedField(torch.autograd.Function):
    """(x (N, D), table, density head w1 (H, E), wm (H, H) or None, wo (1, H), feature head w1, wm, wo (C, H)) →
    raw density (N, 1), features (N, C) [, ∂raw/∂x (N, D) when ``normals``]; backward into every input (x only
    without normals)."""

    @staticmethod
    def forward(ctx, x: Tensor, table: Tensor, w1d: Tensor, wmd: Optional[Tensor], wod: Tensor,  # type: ignore[override]
                w1f: Tensor, wmf: Optional[Tensor], wof: Tensor, grid: Any, normals: bool):
        if normals and ctx.needs_input_grad[0]:
            raise RuntimeError("the fused field's normals output has no gradient w.r.t. the points; pass detached "
                               "contracted points (explicit analytic normals do)")
        n, n_features = x.shape[0], wof.shape[0]
        const = _constants(grid, w1d.shape[0], n_features, wmd is not None)
        raw = torch.empty(n, 1, dtype=torch.float32, device=x.device)
        feat = torch.empty(n, n_features, dtype=torch.float32, device=x.device)
        grad = torch.empty(n, grid.n_input_dims, dtype=torch.float32, device=x.device) if normals else None
        if n:
            _fused_field_kernel[(triton.cdiv(n, BLOCK),)](
                x, table, w1d, w1d if wmd is None else wmd, wod, w1f, w1f if wmf is None else wmf, wof, raw, feat,
                raw if grad is None else grad, *_metadata(grid, x.device), n, grid.n_levels, n_features,
                NORMALS=normals, num_warps=NUM_WARPS, **const,
            )
        ctx.save_for_backward(x, table, w1d, wmd, wod, w1f, wmf, wof)
        ctx.grid, ctx.normals, ctx.const = grid, normals, const
        return (raw, feat, grad) if normals else (raw, feat)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_raw: Tensor, g_feat: Tensor, g_normal: Optional[Tensor] = None):  # type: ignore[override]
        x, table, w1d, wmd, wod, w1f, wmf, wof = ctx.saved_tensors
        grid, const = ctx.grid, ctx.const
        n, d = x.shape
        h, cp, e_cols, two = const["H"], const["CP"], grid.n_output_dims, const["TWO_HIDDEN"]
        normals = ctx.normals and g_normal is not None
        points_grad = bool(ctx.needs_input_grad[0])
        g_raw = torch.zeros(n, 1, device=x.device) if g_raw is None else g_raw.contiguous()
        g_feat = torch.zeros(n, wof.shape[0], device=x.device) if g_feat is None else g_feat.contiguous()
        g_normal = g_raw if not normals else g_normal.contiguous()
        n_blocks, n_head_blocks = triton.cdiv(max(n, 1), BLOCK), triton.cdiv(max(n, 1), HEADS_BLOCK)
        programs, head_programs = min(n_blocks, MAX_PROGRAMS), min(n_head_blocks, MAX_PROGRAMS)
        grad_table = torch.zeros(table.numel(), dtype=torch.float32, device=x.device)
        grad_x = torch.empty(n, d, dtype=torch.float32, device=x.device) if points_grad else None
        zeros = functools.partial(torch.zeros, dtype=torch.float32, device=x.device)
        part_w1d, part_w1f = zeros(programs, h, e_cols), zeros(programs, h, e_cols)
        part_wmd, part_wmf = (zeros(head_programs, h, h), zeros(head_programs, h, h)) if two else (part_w1d, part_w1f)
        part_wod, part_wof = zeros(head_programs, h), zeros(head_programs, cp, h)
        empty = functools.partial(torch.empty, dtype=torch.float32, device=x.device)
        dz, dzf = empty(n, h), empty(n, h)
        u = empty(n, h) if normals else dz
        metadata = _metadata(grid, x.device)
        heads_const = {k: v for k, v in const.items() if k != "BLOCK_N"}
        _fused_field_heads_backward_kernel[(head_programs,)](
            x, table, w1d, w1d if wmd is None else wmd, wod, w1f, w1f if wmf is None else wmf, wof, g_raw, g_feat,
            g_normal, dz, dzf, u, part_wmd, part_wod, part_wmf, part_wof, *metadata, n, grid.n_levels,
            wof.shape[0], n_head_blocks, NORMALS=normals, BLOCK_N=HEADS_BLOCK, num_warps=HEADS_WARPS,
            **({} if normals else {"maxnreg": HEADS_MAXNREG}), **heads_const,
        )
        _fused_field_levels_backward_kernel[(programs,)](
            x, table, w1d, w1f, g_normal, dz, dzf, u, grad_table, g_raw if grad_x is None else grad_x, part_w1d,
            part_w1f, *metadata, n, grid.n_levels, n_blocks, D=const["D"], N_CORNERS=const["N_CORNERS"],
            F=const["F"], FP=const["FP"], H=h, NORMALS=normals, POINTS_GRAD=points_grad, BLOCK_N=BLOCK,
            num_warps=NUM_WARPS, maxnreg=LEVELS_MAXNREG if h <= 32 else 255,
        )
        grad_w1d, grad_w1f = part_w1d.sum(0), part_w1f.sum(0)
        grad_wmd, grad_wmf = (part_wmd.sum(0), part_wmf.sum(0)) if two else (None, None)
        grad_wod, grad_wof = part_wod.sum(0)[None, :], part_wof.sum(0)[: wof.shape[0]]
        return grad_x, grad_table, grad_w1d, grad_wmd, grad_wod, grad_w1f, grad_wmf, grad_wof, None, None


def _plain_relu_head(mlp: Any, n_input_dims: int) -> bool:
    """A :class:`VanillaMLP` with one or two hidden ReLU layers of one power-of-two width 16–128, no output
    activation, no biases, float32 weights."""
    from threestudio.models.networks import VanillaMLP

    if not isinstance(mlp, VanillaMLP) or len(mlp.layers) not in (2, 3) or mlp.n_input_dims != n_input_dims:
        return False
    hidden = mlp.layers[0].weight.shape[0]
    return (
        str(mlp.activation_name).lower() == "relu"
        and str(mlp.output_activation_name or "none").lower() == "none"
        and all(layer.bias is None and layer.weight.dtype == torch.float32 for layer in mlp.layers)
        and all(layer.weight.shape[0] == hidden for layer in mlp.layers[:-1])
        and MIN_DOT <= hidden <= 128
        and hidden & (hidden - 1) == 0
    )


def supports(grid: Any, density_mlp: Any, feature_mlp: Any, x: Tensor) -> bool:
    """Whether the fused kernels can evaluate this field at points x (N, D) (module docstring): a float32
    :class:`HashGrid` with ≤ 8 features per level, two ReLU heads of the same depth (one or two hidden layers) and
    power-of-two width 16–128 without biases or output activation, a one-output density head, 1–16 features,
    float32 points."""
    from threestudio.models.networks import HashGrid

    if not isinstance(grid, HashGrid) or not 1 <= grid.n_input_dims <= MAX_INPUT_DIMS:
        return False
    if feature_mlp is None or not (_plain_relu_head(density_mlp, grid.n_output_dims)
                                   and _plain_relu_head(feature_mlp, grid.n_output_dims)):
        return False
    const = _constants(grid, density_mlp.layers[0].weight.shape[0], feature_mlp.n_output_dims,
                       len(density_mlp.layers) == 3)
    return (
        const["F"] <= 8
        and density_mlp.n_output_dims == 1
        and 1 <= feature_mlp.n_output_dims <= MIN_DOT
        and feature_mlp.layers[0].weight.shape[0] == const["H"]
        and len(feature_mlp.layers) == len(density_mlp.layers)
        and grid.params.dtype == torch.float32
        and x.dtype == torch.float32
        and x.dim() == 2
        and x.shape[-1] == grid.n_input_dims
    )


def field(grid: Any, density_mlp: Any, feature_mlp: Any, x: Tensor) -> Tuple[Tensor, Tensor]:
    """Raw density (N, 1) (``density_mlp(grid(x))``, before bias and activation) and features (N, C)
    (``feature_mlp(grid(x))``) at contracted points x (N, D); differentiable w.r.t. the table, the weights and x."""
    return _FusedField.apply(x.contiguous(), grid.params, *_weights(density_mlp, feature_mlp), grid, False)


def field_with_normals(grid: Any, density_mlp: Any, feature_mlp: Any, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """:func:`field` and ∂raw/∂x (N, D) (the encoding's Jacobian times the density head's input gradient), all
    differentiable w.r.t. the table and the weights; x (N, D) must not require a gradient."""
    return _FusedField.apply(x.contiguous(), grid.params, *_weights(density_mlp, feature_mlp), grid, True)


# ---------------------------------------------------------------------- reference and self-check
def reference_field(grid: Any, density_mlp: Any, feature_mlp: Any, x: Tensor, normals: bool) -> Tuple[Tensor, ...]:
    """What :func:`field` / :func:`field_with_normals` compute, from the pure-PyTorch modules (``grid`` should be on
    its reference path: ``fast_paths="off"``)."""
    if not normals:
        enc = grid(x)
        return density_mlp(enc), feature_mlp(enc)
    enc, jacobian = grid.forward_with_jacobian(x)
    raw, raw_grad = density_mlp.forward_with_input_gradient(enc)
    return raw, feature_mlp(enc), torch.einsum("nk,nkd->nd", raw_grad, jacobian)


def _max_relative_error(value: Tensor, reference: Tensor) -> float:
    value, reference = value.detach().double(), reference.detach().double()
    return float((value - reference).abs().max() / reference.abs().max().clamp_min(1e-30))


def compare_with_reference(grid: Any, density_mlp: Any, feature_mlp: Any, x: Tensor,
                           reference_dtype: torch.dtype = torch.float64, seed: int = 0) -> Dict[str, float]:
    """Largest relative errors (max |Δ| / max |reference|) of the kernels against copies of the modules on the
    reference path in ``reference_dtype``: outputs and gradients (table, weights, points) for random output
    gradients, without and with the normals output."""
    gen = torch.Generator().manual_seed(seed)
    modules = (grid, density_mlp, feature_mlp)
    references = [copy.deepcopy(m).to(reference_dtype) for m in modules]
    references[0].fast_paths = "off"
    errors = {}
    for normals in (False, True):
        x_kernel = x.detach().clone().requires_grad_(not normals)
        x_reference = x.detach().to(reference_dtype).requires_grad_(not normals)
        outputs = (field_with_normals if normals else field)(*modules, x_kernel)
        expected = reference_field(*references, x_reference, normals)
        grads = [torch.randn(o.shape, generator=gen).to(x.device) for o in outputs]
        layer_names = [f"{head}_{layer}" for head in ("density", "features") for layer in ("w1", "wm", "wo")]
        weights = _weights(density_mlp, feature_mlp)
        names = ["table"] + [name for name, w in zip(layer_names, weights) if w is not None]
        params = [grid.params, *(w for w in weights if w is not None)]
        params_reference = [references[0].params, *(w for w in _weights(*references[1:]) if w is not None)]
        inputs = params if normals else params + [x_kernel]
        inputs_reference = params_reference if normals else params_reference + [x_reference]
        got = torch.autograd.grad(outputs, inputs, grads)
        want = torch.autograd.grad(expected, inputs_reference, [g.to(reference_dtype) for g in grads])
        prefix = "normals_" if normals else ""
        for name, value, reference in zip(("raw", "features", "grad_contracted"), outputs, expected):
            errors[prefix + name] = _max_relative_error(value, reference)
        for name, value, reference in zip(names + ["points"], got, want):
            errors[f"{prefix}grad_{name}"] = _max_relative_error(value, reference)
    return errors


def self_check(device: Any, tolerance: float = 1e-4) -> None:
    """Raise when the fused kernels on ``device`` differ from the reference (a dense and hashed levels, points
    inside and outside [0, 1], a partial last block); the global random state, autocast and grad mode are left as
    they were."""
    from threestudio.models.networks import HashGrid, VanillaMLP

    gen = torch.Generator().manual_seed(0)
    errors: Dict[str, float] = {}
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(torch.device(device).type, enabled=False):
        grid = HashGrid(3, n_levels=4, n_features_per_level=2, log2_hashmap_size=9, base_resolution=4,
                        per_level_scale=1.5, fast_paths="off")  # levels 0, 1 dense, 2, 3 hashed
        with torch.no_grad():
            grid.params.copy_(torch.rand(grid.params.shape, generator=gen) * 2.0 - 1.0)
        grid = grid.to(device)
        x = (torch.rand(40, 3, generator=gen) * 1.2 - 0.1).to(device)
        for depth in (1, 2):  # hidden layers
            heads = [VanillaMLP(8, n_out, n_neurons=16, n_hidden_layers=depth) for n_out in (1, 3)]
            with torch.no_grad():
                for layer in (*heads[0].layers, *heads[1].layers):
                    layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * 0.5)
            result = compare_with_reference(grid, *(head.to(device) for head in heads), x)
            errors.update({f"{key} ({depth} hidden)": value for key, value in result.items()})
    worst = max(errors, key=errors.get)
    if not errors[worst] <= tolerance:
        raise RuntimeError(f"{worst} differs from the reference by {errors[worst]:.2e} (relative)")
