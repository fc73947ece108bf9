"""Base classes: configurable components that can update themselves every training step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch.nn as nn

from threestudio.utils.config import parse_structured


class Updateable:
    """Something whose behaviour depends on the training step (schedules, coarse-to-fine, ...).

    ``do_update_step`` calls ``do_update_step`` on each of :meth:`updateable_children` (the explicit list of the
    parts this object updates), then ``update_step`` on this object. Override ``update_step`` and, for an object
    that owns other Updateables, ``updateable_children``.
    """

    def updateable_children(self) -> Sequence["Updateable"]:
        """The Updateables this object updates, each once per step (none by default)."""
        return ()

    def do_update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        for child in self.updateable_children():
            child.do_update_step(epoch, global_step, on_load_weights=on_load_weights)
        self.update_step(epoch, global_step, on_load_weights=on_load_weights)

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        """Called once per step (and after loading weights, with on_load_weights=True)."""


class Configurable(Updateable):
    """A component with a nested dataclass ``Config``: parsed from the user's dict, then ``configure()`` builds it."""

    @dataclass
    class Config:
        pass

    cfg: Config

    @classmethod
    def parse_config(cls, cfg: Optional[Any]) -> Any:
        """``cfg`` parsed against ``Config`` and checked (keys, types, values) without building anything.

        Systems call it for sections whose component they build later (e.g. the guidance, in ``prepare``).
        """
        return parse_structured(cls.Config, cfg)

    def _configure_from(self, cfg: Optional[Any], *args: Any, **kwargs: Any) -> None:
        self.cfg = self.parse_config(cfg)
        self.configure(*args, **kwargs)

    def configure(self, *args: Any, **kwargs: Any) -> None:
        """Build the component from ``self.cfg``."""


class BaseObject(Configurable):
    """A configurable non-module component: ``Cls(cfg_dict, *args)`` parses ``cfg`` and calls ``configure(*args)``."""

    def __init__(self, cfg: Optional[Any] = None, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self._configure_from(cfg, *args, **kwargs)


class BaseModule(nn.Module, Configurable):
    """A configurable ``nn.Module``: ``Cls(cfg_dict, *args)`` parses ``cfg`` and calls ``configure(*args)``."""

    def __init__(self, cfg: Optional[Any] = None, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self._configure_from(cfg, *args, **kwargs)
