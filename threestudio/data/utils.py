"""Helpers shared by the datamodules: resolution stages switched at step milestones, config checks."""

from __future__ import annotations

import bisect
import logging
import math
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

from omegaconf import ListConfig

from threestudio.utils.errors import ConfigError

logger = logging.getLogger(__name__)


def numpy_load_error(path: str, error: BaseException) -> str:
    """What went wrong reading ``path`` with ``np.load(allow_pickle=False)``, in one line. NumPy calls any file
    that is neither .npy nor .npz "pickled data"; that is said only of a file that starts as a pickle does."""
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        return e.strerror or message
    if not head:
        return "the file is empty, not a NumPy .npy/.npz file"
    if "pickled" not in message:
        return message
    if head[:1] == b"\x80":
        return "it holds pickled Python objects, which are never loaded (they could run code): save plain arrays"
    text = head.decode("utf-8", errors="strict") if all(b >= 9 for b in head) else None
    if text is not None:
        return f"it is a text file (it starts with {text[:24]!r}), not a NumPy .npy/.npz file"
    return f"not a NumPy .npy/.npz file (it starts with bytes {head[:8]!r})"


# the largest image side a config may ask for (rays, renders and images grow with its square: 10⁶ px sides
# would ask for terabytes before the first step)
MAX_IMAGE_SIDE = 8192


def as_int_list(value: Any, key: str, maximum: Optional[int] = None) -> List[int]:
    """An int or a list of ints from a config value (``height: 64`` or ``height: [64, 128]``), each at most
    ``maximum`` when given."""
    values = list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]
    if not values:
        raise ConfigError(f"config key {key!r} is an empty list; give an int or a list of ints")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ConfigError(f"config key {key!r} must be a positive int or a list of positive ints, got {value!r}")
        if maximum is not None and v > maximum:
            raise ConfigError(f"config key {key!r} must be at most {maximum}, got {v}")
        out.append(v)
    return out


def as_range(value: Any, key: str) -> Tuple[float, float]:
    """A ``[low, high]`` pair from a config value, checked to have two finite numbers with low <= high."""
    values = list(value)
    if len(values) != 2 or not values[0] <= values[1] or not all(math.isfinite(v) for v in values):
        raise ConfigError(f"config key {key!r} must be [low, high] of finite numbers with low <= high, got {values!r}")
    return float(values[0]), float(values[1])


@dataclass(frozen=True)
class Stage:
    """Image size and batch size of one training stage."""

    height: int
    width: int
    batch_size: int = 1


class StagedResolution:
    """Training stages (height, width, batch size) switched at global-step milestones.

    Stage ``i`` is active from step ``milestones[i - 1]`` on (stage 0 from the start). ``height``,
    ``width`` and ``batch_size`` are an int (the same for every stage) or one value per stage; the
    number of stages is the longest list and ``milestones`` must have one entry fewer.
    ``prefix`` names the config section in error messages (e.g. ``"data.random_camera"``).
    """

    def __init__(
        self,
        height: Any,
        width: Any,
        milestones: Sequence[int] = (),
        batch_size: Any = 1,
        prefix: str = "data",
    ) -> None:
        lists = {
            "height": as_int_list(height, f"{prefix}.height", MAX_IMAGE_SIDE),
            "width": as_int_list(width, f"{prefix}.width", MAX_IMAGE_SIDE),
            "batch_size": as_int_list(batch_size, f"{prefix}.batch_size"),
        }
        n_stages = max(len(v) for v in lists.values())
        if any(len(v) not in (1, n_stages) for v in lists.values()):
            counts = ", ".join(f"{prefix}.{name} has {len(v)}" for name, v in lists.items())
            raise ConfigError(f"resolution stages disagree ({counts} values); give one value or one per stage")
        lists = {name: v * n_stages if len(v) == 1 else v for name, v in lists.items()}
        milestones = [int(m) for m in milestones]
        if n_stages == 1 and milestones:
            logger.warning("%s.resolution_milestones ignored: height, width and batch size do not change", prefix)
            milestones = []
        elif len(milestones) != n_stages - 1:
            raise ConfigError(
                f"config key {prefix}.resolution_milestones needs {n_stages - 1} step(s) for {n_stages} resolution "
                f"stages, got {milestones!r}"
            )
        if any(b <= a for a, b in zip(milestones, milestones[1:])):
            raise ConfigError(f"config key {prefix}.resolution_milestones must increase, got {milestones!r}")
        self.milestones: List[int] = milestones
        self.stages: List[Stage] = [
            Stage(h, w, b) for h, w, b in zip(lists["height"], lists["width"], lists["batch_size"])
        ]

    def index_at(self, global_step: int) -> int:
        """Index of the stage active at ``global_step``."""
        return bisect.bisect_right(self.milestones, global_step)

    def at(self, global_step: int) -> Stage:
        """The stage active at ``global_step``."""
        return self.stages[self.index_at(global_step)]
