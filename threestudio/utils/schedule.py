"""Values that change over training steps.

Any number in a config may be given as a constant or as ``[start_step, start_value, end_value,
end_step]`` (linear in between, constant outside), or ``[start_value, end_value, end_step]`` (start
step 0). Integer steps count global steps.
"""

from __future__ import annotations

import math
from typing import Any, Sequence, Tuple, Union

import torch
from torch import Tensor

from threestudio.utils.errors import ConfigError

Schedulable = Union[float, int, Sequence[float]]


def _parse(value: Any) -> Union[float, int, Tuple[float, float, float, float]]:
    """A number, or ``(start_step, start_value, end_value, end_step)``; ConfigError for anything else."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigError(f"schedule value {value} is not a finite number")
        return value
    if isinstance(value, (str, bytes)):
        raise ConfigError(f"schedule {value!r} is neither a number nor a list")
    try:
        value = list(value)
    except TypeError:
        raise ConfigError(f"schedule {value!r} is neither a number nor a list") from None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"schedule {value!r} must hold numbers only")
    if not all(math.isfinite(v) for v in value):
        raise ConfigError(f"schedule {value!r} must hold finite numbers only")
    if len(value) == 3:
        value = [0] + value
    if len(value) != 4:
        raise ConfigError(
            f"schedule {value!r} must be a number, [start_value, end_value, end_step] or "
            "[start_step, start_value, end_value, end_step]"
        )
    return tuple(value)


def C(value: Any, epoch: int, global_step: int) -> float:
    """Resolve a schedulable ``value`` at ``global_step`` (``epoch`` is accepted for threestudio parity)."""
    value = _parse(value)
    if not isinstance(value, tuple):
        return value
    start_step, start_value, end_value, end_step = value
    if global_step >= end_step:
        return end_value
    if global_step <= start_step:
        return start_value
    frac = (global_step - start_step) / (end_step - start_step)
    return start_value + (end_value - start_value) * frac


def C_tensor(value: Any, global_steps: Tensor) -> Tensor:
    """``C(value, ·, step)`` for every step of ``global_steps`` (any shape), as a float64 tensor on its device.

    The same IEEE double operations as :func:`C`, so ``C_tensor(v, s)[i] == C(v, 0, s[i])`` exactly; pure
    tensor ops (no host synchronisation), for per-sample schedules inside a CUDA step.
    """
    value = _parse(value)
    steps = global_steps.to(torch.float64)
    if not isinstance(value, tuple):
        return torch.full_like(steps, value)
    start_step, start_value, end_value, end_step = value
    frac = (steps - start_step) / (end_step - start_step) if end_step != start_step else torch.zeros_like(steps)
    ramp = start_value + (end_value - start_value) * frac
    ramp = torch.where(steps <= start_step, torch.full_like(steps, start_value), ramp)
    return torch.where(steps >= end_step, torch.full_like(steps, end_value), ramp)
