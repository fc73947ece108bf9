"""``solid-color-background``: one colour behind every ray, optionally learned, optionally randomised in training.

Random augmentation (ZeroNVS/Zero-1-to-3 style, to stop the field from baking the background into the scene):
during training only, each view independently gets one uniformly random colour with probability
``random_aug_prob``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch
import torch.nn as nn
from torch import Tensor

import threestudio
from threestudio.models.background.base import BaseBackground
from threestudio.utils.errors import ConfigError


@threestudio.register("solid-color-background")
class SolidColorBackground(BaseBackground):
    @dataclass
    class Config(BaseBackground.Config):
        n_output_dims: int = 3
        color: List[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
        learned: bool = False
        random_aug: bool = False
        random_aug_prob: float = 0.5

    cfg: Config

    def configure(self) -> None:
        if len(self.cfg.color) != self.cfg.n_output_dims:
            raise ConfigError(
                f"background.color needs {self.cfg.n_output_dims} values, got {list(self.cfg.color)}"
            )
        if not 0.0 <= self.cfg.random_aug_prob <= 1.0:
            raise ConfigError(f"background.random_aug_prob must be in [0, 1], got {self.cfg.random_aug_prob}")
        color = torch.tensor(list(self.cfg.color), dtype=torch.float32)
        if self.cfg.learned:
            self.env_color = nn.Parameter(color)
        else:
            self.register_buffer("env_color", color)

    def forward(self, dirs: Tensor) -> Tensor:
        """Ray directions (B, H, W, 3) → colours (B, H, W, n_output_dims)."""
        color = self.env_color.to(dirs.dtype).expand(*dirs.shape[:-1], -1)
        if self.training and self.cfg.random_aug:
            n_views = dirs.shape[0]
            view_shape = (n_views,) + (1,) * (dirs.dim() - 2)
            random_color = torch.rand(*view_shape, self.cfg.n_output_dims, dtype=dirs.dtype, device=dirs.device)
            use_random = torch.rand(*view_shape, 1, device=dirs.device) < self.cfg.random_aug_prob
            color = torch.where(use_random, random_color.expand_as(color), color)
        return color
