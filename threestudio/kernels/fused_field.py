"""The NeRF field fused into one Triton kernel: hash-grid encoding + density and feature MLPs (tiny-cuda-nn's
"fully fused" idea), forward and backward, for :class:`threestudio.models.geometry.implicit_volume.ImplicitVolume`.

One program takes a block of ``BLOCK`` contracted points. The encoding is built in registers as a
(points, levels, features) tile — every level at once, the per-level constants as vectors — from the cell corners of
:mod:`threestudio.kernels.hash_grid` (its ``@triton.jit`` helpers, imported), together with its input Jacobian when
needed; reshaped to (points, E) with E = padded levels × padded features, it goes through both MLPs with ``tl.dot``
(fp32, ``input_precision="ieee"``: the reference's precision, not TF32), the hidden activations staying in registers.
Written: the raw density (before the density bias and activation) (N, 1), the features (N, C) and, for explicit
analytic normals, ∂raw/∂contracted (N, 3) = raw_grad (N, E) · enc_jacobian (N, E, 3), which is
:meth:`ImplicitVolume._forward_explicit_normals`' ``grad_contracted``.

Backward (:class:`_FusedField`): one kernel recomputes the encoding (and Jacobian) and the hidden layers per block and
gives the gradients w.r.t.

- the table: fp32 atomic adds, as :mod:`.hash_grid` (value weights · ∂L/∂enc, plus the corner weights' derivatives
  · ∂L/∂jacobian for the normals output);
- the MLP weights: the programs are persistent (at most ``MAX_PROGRAMS``, each loops over blocks) and sum their
  blocks' products in registers; each writes one partial sum, reduced by ``torch.sum`` afterwards. Chosen over
  atomics because the 2·64·32 + 64 + 3·64 weights are few: atomics from every block would serialise on the same
  addresses, and the partial sums make the weight gradients deterministic;
- the input points through the encoding's Jacobian, when they require a gradient (plain forward only).

The normals output carries its gradient to the table (through the Jacobian) and to the MLP weights (ReLU' is
piecewise constant, so first order), never to the points: the explicit-normals path passes detached contracted
points (:func:`field_with_normals` refuses points that require a gradient), so there is no second derivative.

Supported (:func:`supports`): a float32 :class:`HashGrid` on 1–3 input dims with 16 ≤ padded levels × padded
features ≤ 64 (paper: 16 × 2 = 32); two :class:`VanillaMLP` heads with one hidden ReLU layer of a power-of-two width
16–128, output activation ``none``, no biases, float32 weights; 1–16 features. Anything else takes the reference.

This module imports Triton; import it only through :func:`threestudio.utils.fast_paths.triton_kernels`.
"""

from __future__ import annotations

import copy
import functools
from typing import Any, Dict, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from threestudio.kernels.hash_grid import MAX_INPUT_DIMS, _corner, _level, _metadata, _points_axes

BLOCK = 32  # points per block (AOT: no spills at the paper's shapes with 4 warps)
NUM_WARPS = 4
MAX_PROGRAMS = 512  # backward: persistent programs, each writes one partial sum of the weight gradients
MIN_DOT = 16  # tl.dot's smallest tile side


@triton.jit
def _encode_block(x_ptr, table_ptr, points, pmask, scales_ptr, res_ptr, offsets_ptr, sizes_ptr, dense_ptr,
                  strides_ptr, primes_ptr, n_levels, D: tl.constexpr, N_CORNERS: tl.constexpr, F: tl.constexpr,
                  LP: tl.constexpr, FP: tl.constexpr, WITH_JACOBIAN: tl.constexpr, BLOCK_N: tl.constexpr):
    """Encoding (BLOCK_N, LP·FP) of a block of points (padded levels and features are zero) and, WITH_JACOBIAN,
    its derivatives along axes 0..2 (each (BLOCK_N, LP·FP), zero where the coordinate was clamped)."""
    levels = tl.arange(0, LP)
    feats = tl.arange(0, FP)
    level = tl.minimum(levels, n_levels - 1)[None, :]  # (1, LP): padded levels read the last one, masked below
    scale, max_vertex, offset, hash_mask, dense, st0, st1, st2, pr1, pr2 = _level(
        level, scales_ptr, res_ptr, offsets_ptr, sizes_ptr, dense_ptr, strides_ptr, primes_ptr, D)
    cell0, frac0, in0, cell1, frac1, in1, cell2, frac2, in2 = _points_axes(
        x_ptr, points[:, None], pmask[:, None], scale, D)  # (BLOCK_N, LP); inside flags (BLOCK_N, 1)
    mask = pmask[:, None, None] & (levels < n_levels)[None, :, None] & (feats < F)[None, None, :]
    value = tl.zeros([BLOCK_N, LP, FP], dtype=tl.float32)
    jac0 = tl.zeros([BLOCK_N, LP, FP], dtype=tl.float32)
    jac1 = tl.zeros([BLOCK_N, LP, FP], dtype=tl.float32)
    jac2 = tl.zeros([BLOCK_N, LP, FP], dtype=tl.float32)
    for c in tl.static_range(N_CORNERS):
        row, weight, dw0, dw1, dw2 = _corner(c, D, cell0, frac0, cell1, frac1, cell2, frac2, scale, max_vertex,
                                             st0, st1, st2, pr1, pr2, dense, hash_mask, offset)
        corner = tl.load(table_ptr + row[:, :, None] * F + feats[None, None, :], mask=mask, other=0.0)
        value += weight[:, :, None] * corner
        if WITH_JACOBIAN:
            jac0 += dw0[:, :, None] * corner
            if D > 1:
                jac1 += dw1[:, :, None] * corner
            if D > 2:
                jac2 += dw2[:, :, None] * corner
    jac0 = jac0 * in0[:, :, None]
    jac1 = jac1 * in1[:, :, None]
    jac2 = jac2 * in2[:, :, None]
    return (tl.reshape(value, (BLOCK_N, LP * FP)), tl.reshape(jac0, (BLOCK_N, LP * FP)),
            tl.reshape(jac1, (BLOCK_N, LP * FP)), tl.reshape(jac2, (BLOCK_N, LP * FP)))


@triton.jit
def _table_backward(x_ptr, grad_table_ptr, points, pmask, grad_enc, grad_jac0, grad_jac1, grad_jac2, scales_ptr,
                    res_ptr, offsets_ptr, sizes_ptr, dense_ptr, strides_ptr, primes_ptr, n_levels,
                    D: tl.constexpr, N_CORNERS: tl.constexpr, F: tl.constexpr, LP: tl.constexpr, FP: tl.constexpr,
                    WITH_JACOBIAN: tl.constexpr, BLOCK_N: tl.constexpr):
    """Atomic adds into the table gradient of Σ corners weight · grad_enc (+ Σ_j ∂weight/∂x_j · grad_jac_j, the
    latter masked where x_j was clamped), grads (BLOCK_N, LP·FP)."""
    levels = tl.arange(0, LP)
    feats = tl.arange(0, FP)
    level = tl.minimum(levels, n_levels - 1)[None, :]
    scale, max_vertex, offset, hash_mask, dense, st0, st1, st2, pr1, pr2 = _level(
        level, scales_ptr, res_ptr, offsets_ptr, sizes_ptr, dense_ptr, strides_ptr, primes_ptr, D)
    cell0, frac0, in0, cell1, frac1, in1, cell2, frac2, in2 = _points_axes(
        x_ptr, points[:, None], pmask[:, None], scale, D)
    mask = pmask[:, None, None] & (levels < n_levels)[None, :, None] & (feats < F)[None, None, :]
    g = tl.reshape(grad_enc, (BLOCK_N, LP, FP))
    g0 = tl.reshape(grad_jac0, (BLOCK_N, LP, FP)) * in0[:, :, None]
    g1 = tl.reshape(grad_jac1, (BLOCK_N, LP, FP)) * in1[:, :, None]
    g2 = tl.reshape(grad_jac2, (BLOCK_N, LP, FP)) * in2[:, :, None]
    for c in tl.static_range(N_CORNERS):
        row, weight, dw0, dw1, dw2 = _corner(c, D, cell0, frac0, cell1, frac1, cell2, frac2, scale, max_vertex,
                                             st0, st1, st2, pr1, pr2, dense, hash_mask, offset)
        contribution = weight[:, :, None] * g
        if WITH_JACOBIAN:
            contribution += dw0[:, :, None] * g0
            if D > 1:
                contribution += dw1[:, :, None] * g1
            if D > 2:
                contribution += dw2[:, :, None] * g2
        tl.atomic_add(grad_table_ptr + row[:, :, None] * F + feats[None, None, :], contribution, mask=mask,
                      sem="relaxed")


@triton.jit
def _first_layer_t(w_ptr, n_levels, F: tl.constexpr, LP: tl.constexpr, FP: tl.constexpr, H: tl.constexpr):
    """First-layer weight (H, L·F) transposed onto the padded encoding's columns: (LP·FP, H), zero rows for padding."""
    k = tl.arange(0, LP * FP)
    level, feat = k // FP, k % FP
    valid = (level < n_levels) & (feat < F)
    hidden = tl.arange(0, H)
    return tl.load(w_ptr + hidden[None, :] * (n_levels * F) + (level * F + feat)[:, None], mask=valid[:, None],
                   other=0.0)


@triton.jit
def _hidden_layers(enc, w1_t, wm_ptr, H: tl.constexpr, TWO_HIDDEN: tl.constexpr):
    """Pre-activations of the first and last hidden layers (BLOCK_N, H) (the same one with one hidden layer) and the
    middle weight (H, H) (out, in) when there are two."""
    hidden = tl.arange(0, H)
    z1 = tl.dot(enc, w1_t, input_precision="ieee")
    z2 = z1
    wm = w1_t
    if TWO_HIDDEN:
        wm = tl.load(wm_ptr + hidden[:, None] * H + hidden[None, :])
        z2 = tl.dot(tl.maximum(z1, 0.0), tl.trans(wm), input_precision="ieee")
    return z1, z2, wm


@triton.jit
def _fused_field_kernel(x_ptr, table_ptr, w1d_ptr, wmd_ptr, wod_ptr, w1f_ptr, wmf_ptr, wof_ptr, raw_ptr, feat_ptr,
                        grad_ptr, scales_ptr, res_ptr, offsets_ptr, sizes_ptr, dense_ptr, strides_ptr, primes_ptr,
                        n_points, n_levels, n_features,
                        D: tl.constexpr, N_CORNERS: tl.constexpr, F: tl.constexpr, LP: tl.constexpr,
                        FP: tl.constexpr, H: tl.constexpr, CP: tl.constexpr, TWO_HIDDEN: tl.constexpr,
                        NORMALS: tl.constexpr, BLOCK_N: tl.constexpr):
    """Forward for a block of points: raw density (N,), features (N, n_features) and, NORMALS, ∂raw/∂x (N, D).
    Weights as ``nn.Linear`` stores them (out, in): first layers w1 (H, L·F), middle wm (H, H) (TWO_HIDDEN),
    outputs wo (1, H) (density) and (n_features, H)."""
    points = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    pmask = points < n_points
    enc, jac0, jac1, jac2 = _encode_block(x_ptr, table_ptr, points, pmask, scales_ptr, res_ptr, offsets_ptr,
                                          sizes_ptr, dense_ptr, strides_ptr, primes_ptr, n_levels, D, N_CORNERS, F,
                                          LP, FP, NORMALS, BLOCK_N)
    hidden = tl.arange(0, H)
    outs = tl.arange(0, CP)
    w1d_t = _first_layer_t(w1d_ptr, n_levels, F, LP, FP, H)  # (E, H)
    wod = tl.load(wod_ptr + hidden)  # (H,)
    z1, z2, wmd = _hidden_layers(enc, w1d_t, wmd_ptr, H, TWO_HIDDEN)
    raw = tl.sum(tl.maximum(z2, 0.0) * wod[None, :], axis=1)
    tl.store(raw_ptr + points, raw, mask=pmask)
    w1f_t = _first_layer_t(w1f_ptr, n_levels, F, LP, FP, H)
    wof_t = tl.load(wof_ptr + outs[None, :] * H + hidden[:, None], mask=(outs < n_features)[None, :], other=0.0)
    zf1, zf2, wmf = _hidden_layers(enc, w1f_t, wmf_ptr, H, TWO_HIDDEN)
    feat = tl.dot(tl.maximum(zf2, 0.0), wof_t, input_precision="ieee")  # (BLOCK_N, CP)
    tl.store(feat_ptr + points[:, None] * n_features + outs[None, :], feat,
             mask=pmask[:, None] & (outs < n_features)[None, :])
    if NORMALS:  # ∂raw/∂enc = ((wo ⊙ relu'(z2)) · wm ⊙ relu'(z1)) · w1, then through the Jacobian
        u = tl.where(z2 > 0.0, wod[None, :], 0.0)
        if TWO_HIDDEN:
            u = tl.where(z1 > 0.0, tl.dot(u, wmd, input_precision="ieee"), 0.0)
        raw_grad = tl.dot(u, tl.trans(w1d_t), input_precision="ieee")  # (BLOCK_N, E)
        tl.store(grad_ptr + points * D, tl.sum(raw_grad * jac0, axis=1), mask=pmask)
        if D > 1:
            tl.store(grad_ptr + points * D + 1, tl.sum(raw_grad * jac1, axis=1), mask=pmask)
        if D > 2:
            tl.store(grad_ptr + points * D + 2, tl.sum(raw_grad * jac2, axis=1), mask=pmask)


@triton.jit
def _fused_field_backward_kernel(x_ptr, table_ptr, w1d_ptr, wmd_ptr, wod_ptr, w1f_ptr, wmf_ptr, wof_ptr, g_raw_ptr,
                                 g_feat_ptr, g_normal_ptr, grad_table_ptr, grad_x_ptr, part_w1d_ptr, part_wmd_ptr,
                                 part_wod_ptr, part_w1f_ptr, part_wmf_ptr, part_wof_ptr, scales_ptr, res_ptr,
                                 offsets_ptr, sizes_ptr, dense_ptr, strides_ptr, primes_ptr, n_points, n_levels,
                                 n_features, n_blocks,
                                 D: tl.constexpr, N_CORNERS: tl.constexpr, F: tl.constexpr, LP: tl.constexpr,
                                 FP: tl.constexpr, H: tl.constexpr, CP: tl.constexpr, TWO_HIDDEN: tl.constexpr,
                                 NORMALS: tl.constexpr, POINTS_GRAD: tl.constexpr, BLOCK_N: tl.constexpr):
    """Backward, persistent: program p takes blocks p, p + P, ...; recomputes encoding and hidden layers, adds the
    table gradient atomically, writes the points' gradient (POINTS_GRAD) and its partial sums of the weight
    gradients (part_w1* (P, H, E), part_wm* (P, H, H) (TWO_HIDDEN), part_wod (P, H), part_wof (P, CP, H)).

    Gradients in: raw (N,), features (N, n_features) and, NORMALS, ∂raw/∂x (N, D). With v = jac · g_normal (N, E),
    the normals' term is wodᵀ S2 wm S1 w1 v (S = diag relu'(z), piecewise constant: first order): it adds u1 ⊗ v
    to w1's gradient (u1 = S1 wmᵀ S2 wod), u2 ⊗ q1 to wm's (u2 = S2 wod, q1 = S1 w1 v), S2 wm q1 to wod's, and
    g_normal ⊗ (u1 w1) to the Jacobian's, hence the table's (one hidden layer: S2 = S1, no wm)."""
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    hidden = tl.arange(0, H)
    outs = tl.arange(0, CP)
    k = tl.arange(0, LP * FP)
    w1d_t = _first_layer_t(w1d_ptr, n_levels, F, LP, FP, H)  # (E, H)
    w1f_t = _first_layer_t(w1f_ptr, n_levels, F, LP, FP, H)
    wod = tl.load(wod_ptr + hidden)
    wof = tl.load(wof_ptr + outs[:, None] * H + hidden[None, :], mask=(outs < n_features)[:, None], other=0.0)
    acc_w1d = tl.zeros([H, LP * FP], dtype=tl.float32)
    acc_w1f = tl.zeros([H, LP * FP], dtype=tl.float32)
    acc_wmd = tl.zeros([H, H], dtype=tl.float32)
    acc_wmf = tl.zeros([H, H], dtype=tl.float32)
    acc_wod = tl.zeros([H], dtype=tl.float32)
    acc_wof = tl.zeros([CP, H], dtype=tl.float32)
    for block in range(pid, n_blocks, n_programs):
        points = tl.arange(0, BLOCK_N).to(tl.int64) + block * BLOCK_N  # N < 2^31 points
        pmask = points < n_points
        enc, jac0, jac1, jac2 = _encode_block(x_ptr, table_ptr, points, pmask, scales_ptr, res_ptr, offsets_ptr,
                                              sizes_ptr, dense_ptr, strides_ptr, primes_ptr, n_levels, D,
                                              N_CORNERS, F, LP, FP, NORMALS or POINTS_GRAD, BLOCK_N)
        z1, z2, wmd = _hidden_layers(enc, w1d_t, wmd_ptr, H, TWO_HIDDEN)
        zf1, zf2, wmf = _hidden_layers(enc, w1f_t, wmf_ptr, H, TWO_HIDDEN)
        g_raw = tl.load(g_raw_ptr + points, mask=pmask, other=0.0)
        g_feat = tl.load(g_feat_ptr + points[:, None] * n_features + outs[None, :],
                         mask=pmask[:, None] & (outs < n_features)[None, :], other=0.0)  # (BLOCK_N, CP)
        acc_wod += tl.sum(g_raw[:, None] * tl.maximum(z2, 0.0), axis=0)
        acc_wof += tl.dot(tl.trans(g_feat), tl.maximum(zf2, 0.0), input_precision="ieee")
        dz = tl.where(z2 > 0.0, g_raw[:, None] * wod[None, :], 0.0)
        dzf = tl.where(zf2 > 0.0, tl.dot(g_feat, wof, input_precision="ieee"), 0.0)
        if TWO_HIDDEN:
            acc_wmd += tl.dot(tl.trans(dz), tl.maximum(z1, 0.0), input_precision="ieee")
            acc_wmf += tl.dot(tl.trans(dzf), tl.maximum(zf1, 0.0), input_precision="ieee")
            dz = tl.where(z1 > 0.0, tl.dot(dz, wmd, input_precision="ieee"), 0.0)
            dzf = tl.where(zf1 > 0.0, tl.dot(dzf, wmf, input_precision="ieee"), 0.0)
        acc_w1d += tl.dot(tl.trans(dz), enc, input_precision="ieee")
        acc_w1f += tl.dot(tl.trans(dzf), enc, input_precision="ieee")
        grad_enc = tl.dot(dz, tl.trans(w1d_t), input_precision="ieee") + tl.dot(dzf, tl.trans(w1f_t),
                                                                               input_precision="ieee")
        gj0 = grad_enc  # placeholders when there is no normals' term (unused: WITH_JACOBIAN below is NORMALS)
        gj1 = grad_enc
        gj2 = grad_enc
        if NORMALS:
            gn0 = tl.load(g_normal_ptr + points * D, mask=pmask, other=0.0)
            v = gn0[:, None] * jac0
            gn1 = gn0
            gn2 = gn0
            if D > 1:
                gn1 = tl.load(g_normal_ptr + points * D + 1, mask=pmask, other=0.0)
                v += gn1[:, None] * jac1
            if D > 2:
                gn2 = tl.load(g_normal_ptr + points * D + 2, mask=pmask, other=0.0)
                v += gn2[:, None] * jac2
            q = tl.where(z1 > 0.0, tl.dot(v, w1d_t, input_precision="ieee"), 0.0)  # S1 w1 v
            u = tl.where(z2 > 0.0, wod[None, :], 0.0)  # S2 wod
            if TWO_HIDDEN:
                acc_wod += tl.sum(tl.where(z2 > 0.0, tl.dot(q, tl.trans(wmd), input_precision="ieee"), 0.0), axis=0)
                acc_wmd += tl.dot(tl.trans(u), q, input_precision="ieee")
                u = tl.where(z1 > 0.0, tl.dot(u, wmd, input_precision="ieee"), 0.0)
            else:
                acc_wod += tl.sum(q, axis=0)
            acc_w1d += tl.dot(tl.trans(u), v, input_precision="ieee")
            raw_grad = tl.dot(u, tl.trans(w1d_t), input_precision="ieee")  # (BLOCK_N, E)
            gj0 = raw_grad * gn0[:, None]
            gj1 = raw_grad * gn1[:, None]
            gj2 = raw_grad * gn2[:, None]
        if POINTS_GRAD:
            tl.store(grad_x_ptr + points * D, tl.sum(grad_enc * jac0, axis=1), mask=pmask)
            if D > 1:
                tl.store(grad_x_ptr + points * D + 1, tl.sum(grad_enc * jac1, axis=1), mask=pmask)
            if D > 2:
                tl.store(grad_x_ptr + points * D + 2, tl.sum(grad_enc * jac2, axis=1), mask=pmask)
        _table_backward(x_ptr, grad_table_ptr, points, pmask, grad_enc, gj0, gj1, gj2, scales_ptr, res_ptr,
                        offsets_ptr, sizes_ptr, dense_ptr, strides_ptr, primes_ptr, n_levels, D, N_CORNERS, F, LP,
                        FP, NORMALS, BLOCK_N)
    e_cols = LP * FP
    tl.store(part_w1d_ptr + pid * (H * e_cols) + hidden[:, None] * e_cols + k[None, :], acc_w1d)
    tl.store(part_w1f_ptr + pid * (H * e_cols) + hidden[:, None] * e_cols + k[None, :], acc_w1f)
    if TWO_HIDDEN:
        tl.store(part_wmd_ptr + pid * (H * H) + hidden[:, None] * H + hidden[None, :], acc_wmd)
        tl.store(part_wmf_ptr + pid * (H * H) + hidden[:, None] * H + hidden[None, :], acc_wmf)
    tl.store(part_wod_ptr + pid * H + hidden, acc_wod)
    tl.store(part_wof_ptr + pid * (CP * H) + outs[:, None] * H + hidden[None, :], acc_wof)


# ---------------------------------------------------------------------- host side
def _constants(grid: Any, n_neurons: int, n_features: int, two_hidden: bool) -> Dict[str, int]:
    """Compile-time constants: dims, corners, features per level F, padded levels LP and features FP (LP·FP ≥ 16),
    hidden width H, padded feature outputs CP (≥ 16: a ``tl.dot`` side), one or two hidden layers."""
    f = grid.n_features_per_level
    fp = triton.next_power_of_2(f)
    lp = max(triton.next_power_of_2(grid.n_levels), triton.cdiv(MIN_DOT, fp))
    return dict(D=grid.n_input_dims, N_CORNERS=2**grid.n_input_dims, F=f, LP=lp, FP=fp, H=n_neurons,
                CP=max(MIN_DOT, triton.next_power_of_2(n_features)), TWO_HIDDEN=two_hidden, BLOCK_N=BLOCK)


def _padded_columns(grid: Any, lp: int, fp: int, device: torch.device) -> Optional[Tensor]:
    """Indices of the real encoding columns (l·F + f) among the padded ones (l·FP + f), or None when none is padded."""
    f = grid.n_features_per_level
    if lp == grid.n_levels and fp == f:
        return None
    return torch.tensor([level * fp + j for level in range(grid.n_levels) for j in range(f)], device=device)


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
        h, cp, e_cols, two = const["H"], const["CP"], const["LP"] * const["FP"], const["TWO_HIDDEN"]
        normals = ctx.normals and g_normal is not None
        points_grad = bool(ctx.needs_input_grad[0])
        g_raw = torch.zeros(n, 1, device=x.device) if g_raw is None else g_raw.contiguous()
        g_feat = torch.zeros(n, wof.shape[0], device=x.device) if g_feat is None else g_feat.contiguous()
        g_normal = g_raw if not normals else g_normal.contiguous()
        n_blocks = triton.cdiv(max(n, 1), BLOCK)
        programs = min(n_blocks, MAX_PROGRAMS)
        grad_table = torch.zeros(table.numel(), dtype=torch.float32, device=x.device)
        grad_x = torch.empty(n, d, dtype=torch.float32, device=x.device) if points_grad else None
        empty = functools.partial(torch.empty, dtype=torch.float32, device=x.device)
        part_w1d, part_w1f = empty(programs, h, e_cols), empty(programs, h, e_cols)
        part_wmd, part_wmf = (empty(programs, h, h), empty(programs, h, h)) if two else (part_w1d, part_w1f)
        part_wod, part_wof = empty(programs, h), empty(programs, cp, h)
        _fused_field_backward_kernel[(programs,)](
            x, table, w1d, w1d if wmd is None else wmd, wod, w1f, w1f if wmf is None else wmf, wof, g_raw, g_feat,
            g_normal, grad_table, g_raw if grad_x is None else grad_x, part_w1d, part_wmd, part_wod, part_w1f,
            part_wmf, part_wof, *_metadata(grid, x.device), n, grid.n_levels, wof.shape[0], n_blocks,
            NORMALS=normals, POINTS_GRAD=points_grad, num_warps=NUM_WARPS, **const,
        )
        columns = _padded_columns(grid, const["LP"], const["FP"], x.device)
        grad_w1d, grad_w1f = part_w1d.sum(0), part_w1f.sum(0)
        if columns is not None:
            grad_w1d, grad_w1f = grad_w1d.index_select(1, columns), grad_w1f.index_select(1, columns)
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
    :class:`HashGrid` with 16 ≤ LP·FP ≤ 64, two ReLU heads of the same depth (one or two hidden layers) and
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
        MIN_DOT <= const["LP"] * const["FP"] <= 64
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
        grid = HashGrid(3, n_levels=8, n_features_per_level=2, log2_hashmap_size=9, base_resolution=4,
                        per_level_scale=1.5, fast_paths="off")
        with torch.no_grad():
            grid.params.copy_(torch.rand(grid.params.shape, generator=gen) * 2.0 - 1.0)
        grid = grid.to(device)
        x = (torch.rand(50, 3, generator=gen) * 1.2 - 0.1).to(device)
        for depth in (1, 2):  # hidden layers
            heads = [VanillaMLP(16, n_out, n_neurons=16, n_hidden_layers=depth) for n_out in (1, 3)]
            with torch.no_grad():
                for layer in (*heads[0].layers, *heads[1].layers):
                    layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * 0.5)
            result = compare_with_reference(grid, *(head.to(device) for head in heads), x)
            errors.update({f"{key} ({depth} hidden)": value for key, value in result.items()})
    worst = max(errors, key=errors.get)
    if not errors[worst] <= tolerance:
        raise RuntimeError(f"{worst} differs from the reference by {errors[worst]:.2e} (relative)")
