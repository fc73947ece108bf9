"""Evaluate a per-sample field in chunks and recompute its autograd graph during the backward.

Training a NeRF at the paper's resolution evaluates the fields at millions of samples per step; autograd would keep
the hash grid's and MLPs' intermediate tensors for every sample until the backward (kilobytes per sample with
analytic normals, whose ``create_graph`` backward adds a second graph). :func:`recomputed_map` keeps only the
inputs: the forward runs without a graph, and the backward re-runs ``fn`` one chunk at a time with the graph,
backpropagates it into the parameters and frees it before the next chunk. The price is one more forward of the
field.

Unlike ``torch.utils.checkpoint`` (non-reentrant), this also frees the graph that ``torch.autograd.grad(...,
create_graph=True)`` builds *inside* ``fn`` (analytic normals): the checkpoint's saved-tensor hooks do not cover the
nodes created by that inner backward, so their tensors stayed alive. Gradients are returned as the Function's
input gradients, so both ``loss.backward()`` and ``torch.autograd.grad(loss, params)`` work; differentiating the
gradients again (third order) is not supported.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Dict, Optional, Sequence, Tuple, TypeVar, Union

import torch
from torch import Tensor

FieldOutput = TypeVar("FieldOutput", Tensor, Dict[str, Tensor])


def _autocast_state(device_type: str) -> Tuple[bool, Optional[torch.dtype]]:
    """Whether autocast is on for ``device_type`` and its dtype; (False, None) on devices without autocast
    (``meta``: tracing without memory)."""
    try:
        return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)
    except RuntimeError:  # "unknown device type for autocast"
        return False, None


class _RecomputeInBackward(torch.autograd.Function):
    """outputs = fn(points) without a graph; the backward recomputes fn with one and returns the gradients of
    ``points`` and ``params`` (the tensors fn's outputs depend on)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, fn: Callable[[Tensor], Tuple[Tensor, ...]], points: Tensor, *params: Tensor
    ) -> Tuple[Tensor, ...]:
        ctx.fn = fn
        ctx.autocast = _autocast_state(points.device.type)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(points, *params)
        return fn(points)  # grad mode is off inside a Function's forward

    @staticmethod
    def backward(ctx, *grad_outputs: Tensor):  # type: ignore[override]
        points, *params = ctx.saved_tensors
        points = points.detach().requires_grad_(ctx.needs_input_grad[1])
        enabled, dtype = ctx.autocast
        autocast = (torch.autocast(points.device.type, dtype=dtype, enabled=enabled) if dtype is not None
                    else contextlib.nullcontext())
        with torch.enable_grad(), autocast:
            outputs = ctx.fn(points)
        pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if g is not None and o.requires_grad]
        inputs = ([points] if ctx.needs_input_grad[1] else []) + list(params)
        if not pairs or not inputs:
            return (None, None) + (None,) * len(params)
        grads = list(
            torch.autograd.grad([o for o, _ in pairs], inputs, [g for _, g in pairs], allow_unused=True)
        )
        points_grad = grads.pop(0) if ctx.needs_input_grad[1] else None
        return (None, points_grad, *grads)


def recomputed_map(
    fn: Callable[[Tensor], FieldOutput], points: Tensor, params: Sequence[Tensor], chunk_size: int
) -> FieldOutput:
    """``fn(points)`` evaluated in chunks of ``chunk_size`` rows, its graph recomputed during the backward.

    ``fn`` maps (n, C) to a tensor (n, ...) or a dict of such tensors, row by row (rows independent), and may call
    ``torch.autograd.grad(..., create_graph=True)`` inside (it then sees grad mode on only in the backward's
    recomputation; with grad mode off it must still return the same values). ``params`` are the tensors requiring
    gradients that ``fn`` uses (e.g. ``module.parameters()``): only they, and ``points``, receive gradients. The
    result equals ``fn(points)`` and so do the gradients. Without grad mode, or with ``chunk_size`` <= 0, this is
    just ``fn(points)``.
    """
    params = tuple(p for p in params if p.requires_grad)
    if chunk_size <= 0 or not torch.is_grad_enabled() or not (params or points.requires_grad):
        return fn(points)
    keys: list = []

    def as_tuple(x: Tensor) -> Tuple[Tensor, ...]:
        out: Union[Tensor, Dict[str, Tensor]] = fn(x)
        if isinstance(out, Tensor):
            return (out,)
        keys[:] = list(out)
        return tuple(out.values())

    pieces = [
        _RecomputeInBackward.apply(as_tuple, points[start : start + chunk_size], *params)
        for start in range(0, points.shape[0], chunk_size)
    ]
    columns = [torch.cat(parts, dim=0) if len(pieces) > 1 else parts[0] for parts in zip(*pieces)]
    return dict(zip(keys, columns)) if keys else columns[0]

