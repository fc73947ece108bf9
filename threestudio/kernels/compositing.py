"""Triton kernels of volume-rendering compositing on dense (rays, samples) tensors
(:func:`threestudio.models.renderers.rendering.render_weights` and :func:`~.rendering.accumulate`).

One program handles a block of rays and walks along their samples in order (the sample count is a compile-time
constant: one compilation per count the renderer uses), so transmittance is the same running
(exclusive) sum of σδ as the reference's cumsum. ``render_weights`` returns weights, transmittance and alphas; its
backward walks the samples in reverse with the running sum ``Σ_{i>k} T_i (∂L/∂T_i + ∂L/∂w_i α_i)``:
``∂L/∂(σδ)_k = e^{−σ_k δ_k} (∂L/∂α_k + ∂L/∂w_k T_k) − Σ_{i>k} ...``. ``accumulate`` is ``Σ_s w_s v_s`` per ray with
its two gradients. float32 only.

This module imports Triton; import it only through :func:`threestudio.utils.fast_paths.triton_kernels`.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

BLOCK_RAYS = 128


@triton.jit
def _weights_kernel(sigma_ptr, delta_ptr, weight_ptr, trans_ptr, alpha_ptr, n_rays, S: tl.constexpr,
                    BLOCK_R: tl.constexpr):
    rays = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    mask = rays < n_rays
    base = rays * S
    optical_depth = tl.zeros([BLOCK_R], dtype=tl.float32)  # Σ_{j<i} σ_j δ_j
    for s in range(S):
        sigma_delta = tl.load(sigma_ptr + base + s, mask=mask, other=0.0) * tl.load(delta_ptr + base + s, mask=mask,
                                                                                   other=0.0)
        transmittance = tl.exp(-optical_depth)
        alpha = 1.0 - tl.exp(-sigma_delta)
        tl.store(weight_ptr + base + s, transmittance * alpha, mask=mask)
        tl.store(trans_ptr + base + s, transmittance, mask=mask)
        tl.store(alpha_ptr + base + s, alpha, mask=mask)
        optical_depth += sigma_delta


@triton.jit
def _weights_backward_kernel(sigma_ptr, delta_ptr, trans_ptr, grad_w_ptr, grad_t_ptr, grad_a_ptr, grad_sigma_ptr,
                             grad_delta_ptr, n_rays, S: tl.constexpr, HAS_GRAD_W: tl.constexpr,
                             HAS_GRAD_T: tl.constexpr, HAS_GRAD_A: tl.constexpr, BLOCK_R: tl.constexpr):
    rays = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    mask = rays < n_rays
    base = rays * S
    later = tl.zeros([BLOCK_R], dtype=tl.float32)  # Σ_{i>k} T_i (∂L/∂T_i + ∂L/∂w_i α_i)
    for i in range(S):
        s = S - 1 - i
        sigma = tl.load(sigma_ptr + base + s, mask=mask, other=0.0)
        delta = tl.load(delta_ptr + base + s, mask=mask, other=0.0)
        transmittance = tl.load(trans_ptr + base + s, mask=mask, other=0.0)
        decay = tl.exp(-(sigma * delta))
        alpha = 1.0 - decay
        grad_alpha = tl.zeros([BLOCK_R], dtype=tl.float32)
        grad_trans = tl.zeros([BLOCK_R], dtype=tl.float32)
        if HAS_GRAD_W:
            grad_w = tl.load(grad_w_ptr + base + s, mask=mask, other=0.0)
            grad_alpha += grad_w * transmittance
            grad_trans += grad_w * alpha
        if HAS_GRAD_A:
            grad_alpha += tl.load(grad_a_ptr + base + s, mask=mask, other=0.0)
        if HAS_GRAD_T:
            grad_trans += tl.load(grad_t_ptr + base + s, mask=mask, other=0.0)
        grad_sigma_delta = decay * grad_alpha - later
        later += transmittance * grad_trans
        tl.store(grad_sigma_ptr + base + s, grad_sigma_delta * delta, mask=mask)
        tl.store(grad_delta_ptr + base + s, grad_sigma_delta * sigma, mask=mask)


@triton.jit
def _accumulate_kernel(weight_ptr, value_ptr, out_ptr, n_rays, S: tl.constexpr, C: tl.constexpr, CP: tl.constexpr,
                       BLOCK_R: tl.constexpr):
    rays = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    mask = rays < n_rays
    channels = tl.arange(0, CP)
    cmask = mask[:, None] & (channels[None, :] < C)
    total = tl.zeros([BLOCK_R, CP], dtype=tl.float32)
    for s in range(S):
        weight = tl.load(weight_ptr + rays * S + s, mask=mask, other=0.0)
        value = tl.load(value_ptr + (rays[:, None] * S + s) * C + channels[None, :], mask=cmask, other=0.0)
        total += weight[:, None] * value
    tl.store(out_ptr + rays[:, None] * C + channels[None, :], total, mask=cmask)


@triton.jit
def _accumulate_backward_kernel(weight_ptr, value_ptr, grad_out_ptr, grad_w_ptr, grad_v_ptr, n_rays, S: tl.constexpr,
                                C: tl.constexpr, CP: tl.constexpr, NEED_W: tl.constexpr, NEED_V: tl.constexpr,
                                BLOCK_R: tl.constexpr):
    rays = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    mask = rays < n_rays
    channels = tl.arange(0, CP)
    cmask = mask[:, None] & (channels[None, :] < C)
    grad_out = tl.load(grad_out_ptr + rays[:, None] * C + channels[None, :], mask=cmask, other=0.0)
    for s in range(S):
        index = (rays[:, None] * S + s) * C + channels[None, :]
        if NEED_W:
            value = tl.load(value_ptr + index, mask=cmask, other=0.0)
            tl.store(grad_w_ptr + rays * S + s, tl.sum(grad_out * value, axis=1), mask=mask)
        if NEED_V:
            weight = tl.load(weight_ptr + rays * S + s, mask=mask, other=0.0)
            tl.store(grad_v_ptr + index, weight[:, None] * grad_out, mask=cmask)


def _blocks(n_rays: int) -> Tuple[int]:
    return (triton.cdiv(max(n_rays, 1), BLOCK_RAYS),)


class _RenderWeights(torch.autograd.Function):
    """(sigmas, deltas) (R, S) → weights, transmittance, alphas (R, S)."""

    @staticmethod
    def forward(ctx, sigmas: Tensor, deltas: Tensor) -> Tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        n_rays, n_samples = sigmas.shape
        weights, trans, alphas = (torch.empty_like(sigmas) for _ in range(3))
        if sigmas.numel():
            _weights_kernel[_blocks(n_rays)](sigmas, deltas, weights, trans, alphas, n_rays, S=n_samples,
                                             BLOCK_R=BLOCK_RAYS)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(sigmas, deltas, trans)
        return weights, trans, alphas

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx, grad_w: Optional[Tensor], grad_t: Optional[Tensor], grad_a: Optional[Tensor]
    ):
        sigmas, deltas, trans = ctx.saved_tensors
        if all(g is None for g in (grad_w, grad_t, grad_a)) or not sigmas.numel():
            return None, None
        grad_sigma, grad_delta = torch.empty_like(sigmas), torch.empty_like(deltas)
        n_rays, n_samples = sigmas.shape
        grads = [sigmas if g is None else g.contiguous() for g in (grad_w, grad_t, grad_a)]
        _weights_backward_kernel[_blocks(n_rays)](
            sigmas, deltas, trans, *grads, grad_sigma, grad_delta, n_rays, S=n_samples,
            HAS_GRAD_W=grad_w is not None, HAS_GRAD_T=grad_t is not None, HAS_GRAD_A=grad_a is not None,
            BLOCK_R=BLOCK_RAYS,
        )
        return (grad_sigma if ctx.needs_input_grad[0] else None), (grad_delta if ctx.needs_input_grad[1] else None)


class _Accumulate(torch.autograd.Function):
    """(weights (R, S), values (R, S, C)) → Σ_s weights·values (R, C)."""

    @staticmethod
    def forward(ctx, weights: Tensor, values: Tensor) -> Tensor:  # type: ignore[override]
        n_rays, n_samples, channels = values.shape
        out = torch.empty(n_rays, channels, dtype=torch.float32, device=values.device)
        if n_rays:
            _accumulate_kernel[_blocks(n_rays)](weights, values, out, n_rays, S=n_samples, C=channels,
                                                CP=triton.next_power_of_2(channels), BLOCK_R=BLOCK_RAYS)
        ctx.save_for_backward(weights, values)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        weights, values = ctx.saved_tensors
        need_w, need_v = ctx.needs_input_grad
        if not (need_w or need_v) or not values.shape[0]:
            return None, None
        n_rays, n_samples, channels = values.shape
        grad_w = torch.empty_like(weights) if need_w else None
        grad_v = torch.empty_like(values) if need_v else None
        _accumulate_backward_kernel[_blocks(n_rays)](
            weights, values, grad_out.contiguous(), weights if grad_w is None else grad_w,
            values if grad_v is None else grad_v, n_rays, S=n_samples, C=channels, CP=triton.next_power_of_2(channels),
            NEED_W=need_w, NEED_V=need_v, BLOCK_R=BLOCK_RAYS,
        )
        return grad_w, grad_v


def render_weights(sigmas: Tensor, deltas: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Like the reference :func:`~threestudio.models.renderers.rendering.render_weights`: sigmas, deltas (R, S)
    float32 → weights, transmittance, alphas (R, S), differentiable w.r.t. sigmas and deltas."""
    return _RenderWeights.apply(sigmas.contiguous(), deltas.contiguous())


def accumulate(weights: Tensor, values: Tensor) -> Tensor:
    """Σ_s weights·values: weights (R, S), values (R, S, C) float32 → (R, C), differentiable w.r.t. both."""
    return _Accumulate.apply(weights.contiguous(), values.contiguous())


def _max_relative_error(value: Tensor, reference: Tensor) -> float:
    value, reference = value.detach().double(), reference.detach().double()
    return float((value - reference).abs().max() / reference.abs().max().clamp_min(1e-30))


def compare_with_reference(sigmas: Tensor, deltas: Tensor, values: Tensor, seed: int = 0) -> dict:
    """Largest relative errors (max |Δ| / max |reference|) of the kernels against the reference functions in
    float64, values and gradients, for sigmas, deltas (R, S) and values (R, S, C) float32 and random output
    gradients (all three outputs of render_weights, and weights fed into accumulate)."""
    from threestudio.models.renderers import rendering

    gen = torch.Generator().manual_seed(seed)
    grads = [torch.randn(sigmas.shape, generator=gen).to(sigmas.device) for _ in range(3)]
    grad_acc = torch.randn(values.shape[0], values.shape[2], generator=gen).to(sigmas.device)
    results = []
    for fns, dtype in (((render_weights, accumulate), torch.float32),
                       ((rendering.render_weights, rendering.accumulate), torch.float64)):
        inputs = [t.detach().to(dtype).requires_grad_(True) for t in (sigmas, deltas, values)]
        if dtype == torch.float32:
            outputs = fns[0](inputs[0], inputs[1])
            composited = fns[1](outputs[0], inputs[2])
        else:
            outputs = fns[0](inputs[0], inputs[1], fast_paths="off")
            composited = fns[1](outputs[0], inputs[2], fast_paths="off")
        torch.autograd.backward([*outputs, composited], [g.to(dtype) for g in (*grads, grad_acc)])
        results.append(([*outputs, composited], [t.grad for t in inputs]))
    (out_k, grad_k), (out_r, grad_r) = results
    names = ("weights", "transmittance", "alphas", "accumulated")
    errors = {name: _max_relative_error(k, r) for name, k, r in zip(names, out_k, out_r)}
    errors.update({f"grad_{name}": _max_relative_error(k, r) for name, k, r in zip(("sigmas", "deltas", "values"),
                                                                                   grad_k, grad_r)})
    return errors


def self_check(device: Any, tolerance: float = 1e-4) -> None:
    """Raise when the kernels on ``device`` differ from the reference; the global random state, autocast and grad
    mode are left as they were."""
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(torch.device(device).type, enabled=False):
        sigmas = (torch.rand(100, 16, generator=gen) * 4.0).to(device)
        deltas = (torch.rand(100, 16, generator=gen) * 0.2).to(device)
        values = torch.rand(100, 16, 3, generator=gen).to(device)
        errors = compare_with_reference(sigmas, deltas, values)
    worst = max(errors, key=errors.get)
    if not errors[worst] <= tolerance:
        raise RuntimeError(f"{worst} differs from the reference by {errors[worst]:.2e} (relative)")
