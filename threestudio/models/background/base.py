"""The base class of backgrounds: the colour seen along rays that hit nothing."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from threestudio.utils.base import BaseModule


class BaseBackground(BaseModule):
    """Colour (B, H, W, C) seen along ray directions (B, H, W, 3) that hit nothing."""

    @dataclass
    class Config(BaseModule.Config):
        pass

    cfg: Config

    def forward(self, dirs: Tensor) -> Tensor:
        raise NotImplementedError
