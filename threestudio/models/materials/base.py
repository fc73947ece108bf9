"""Material base class: turns per-sample features into colours."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from torch import Tensor

from threestudio.utils.base import BaseModule


class BaseMaterial(BaseModule):
    """``forward(features (N, C), viewdirs (N, 3), positions (N, 3), shading_normal=None, light_positions=None,
    **kwargs) -> rgb (N, 3)``. ``requires_normal`` tells the renderer whether to ask the geometry for normals."""

    @dataclass
    class Config(BaseModule.Config):
        pass

    cfg: Config
    requires_normal: bool = False

    def albedo(self, features: Tensor) -> Tensor:
        """Base colour (N, 3) in [0, 1] from features (N, C) — what mesh exports store per vertex."""
        raise NotImplementedError

    def forward(
        self,
        features: Tensor,
        viewdirs: Optional[Tensor] = None,
        positions: Optional[Tensor] = None,
        shading_normal: Optional[Tensor] = None,
        light_positions: Optional[Tensor] = None,
        **kwargs: Any,
    ) -> Tensor:
        raise NotImplementedError
