"""Geometry base classes: an implicit field inside a box of half-size ``radius``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch
from torch import Tensor

from threestudio.utils.base import BaseModule


class BaseGeometry(BaseModule):
    """A 3-D representation that the renderer queries at sample points."""

    @dataclass
    class Config(BaseModule.Config):
        pass

    cfg: Config


class BaseImplicitGeometry(BaseGeometry):
    """An implicit field (density) over the box [−radius, radius]^3 (and beyond it when unbounded).

    Subclasses implement ``forward(points (N, 3), output_normal=False) -> {"density": (N, 1), "features": (N, C),
    ["normal", "shading_normal": (N, 3)]}`` and ``forward_density(points (N, 3)) -> (N, 1)``.
    """

    @dataclass
    class Config(BaseGeometry.Config):
        radius: float = 1.0
        # threestudio's implicit volume treats space as unbounded (contracted beyond the box)
        unbounded: bool = True

    cfg: Config

    def configure(self) -> None:
        if self.cfg.radius <= 0:
            from threestudio.utils.errors import ConfigError

            raise ConfigError(f"geometry.radius must be positive, got {self.cfg.radius}")
        r = float(self.cfg.radius)
        self.register_buffer("bbox", torch.tensor([[-r, -r, -r], [r, r, r]], dtype=torch.float32))
        self.unbounded: bool = bool(self.cfg.unbounded)

    def isosurface_bbox(self) -> Tensor:
        """The box (2, 3) in which meshes are extracted: [−radius, radius]^3."""
        return self.bbox

    def forward(self, points: Tensor, output_normal: bool = False) -> Dict[str, Tensor]:
        raise NotImplementedError

    def forward_density(self, points: Tensor) -> Tensor:
        raise NotImplementedError
