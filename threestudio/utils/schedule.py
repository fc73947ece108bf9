"""Values that change over training steps.

Any number in a config may be given as a constant or as ``[start_step, start_value, end_value,
end_step]`` (linear in between, constant outside), or ``[start_value, end_value, end_step]`` (start
step 0). Integer steps count global steps.
"""

from __future__ import annotations

from typing import Any, Sequence, Union

from threestudio.utils.errors import ConfigError

Schedulable = Union[float, int, Sequence[float]]


def C(value: Any, epoch: int, global_step: int) -> float:
    """Resolve a schedulable ``value`` at ``global_step`` (``epoch`` is accepted for threestudio parity)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if isinstance(value, (str, bytes)):
        raise ConfigError(f"schedule {value!r} is neither a number nor a list")
    try:
        value = list(value)
    except TypeError:
        raise ConfigError(f"schedule {value!r} is neither a number nor a list") from None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"schedule {value!r} must hold numbers only")
    if len(value) == 3:
        value = [0] + value
    if len(value) != 4:
        raise ConfigError(
            f"schedule {value!r} must be a number, [start_value, end_value, end_step] or "
            "[start_step, start_value, end_value, end_step]"
        )
    start_step, start_value, end_value, end_step = value
    if global_step >= end_step:
        return end_value
    if global_step <= start_step:
        return start_value
    frac = (global_step - start_step) / (end_step - start_step)
    return start_value + (end_value - start_value) * frac
