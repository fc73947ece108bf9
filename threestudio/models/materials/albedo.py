"""Albedo materials: ``no-material`` (the activated features are the colour) and
``diffuse-with-point-light-material`` (threestudio's Lambertian shading under a point light plus ambient light).

The diffuse material reproduces threestudio's training-time shading augmentation: while
``global_step < ambient_only_steps`` it returns the albedo only; afterwards each training forward picks, for the
whole batch, "albedo" with probability ``1 − diffuse_prob``, else "textureless" (white albedo) with probability
``textureless_prob``, else "diffuse". Evaluation renders "diffuse" (or "albedo" during the ambient-only phase).
Callers may force ``shading`` ("albedo" | "diffuse" | "textureless") or an ``ambient_ratio``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

import threestudio
from threestudio.models.materials.base import BaseMaterial
from threestudio.models.networks import get_activation
from threestudio.utils.errors import ConfigError, UserError

SHADINGS = ("albedo", "diffuse", "textureless")


class AlbedoMaterial(BaseMaterial):
    """Shared part: the first ``n_output_dims`` features through an activation give the albedo."""

    @dataclass
    class Config(BaseMaterial.Config):
        n_output_dims: int = 3

    cfg: Config

    def _activation_name(self) -> Optional[str]:
        raise NotImplementedError

    def configure(self) -> None:
        self.activation = get_activation(self._activation_name())

    def albedo(self, features: Tensor) -> Tensor:
        """Albedo (N, n_output_dims) from features (N, C ≥ n_output_dims)."""
        if features.shape[-1] < self.cfg.n_output_dims:
            raise UserError(
                f"the material needs {self.cfg.n_output_dims} feature channels but the geometry gives "
                f"{features.shape[-1]}; set geometry.n_feature_dims to {self.cfg.n_output_dims}"
            )
        return self.activation(features[..., : self.cfg.n_output_dims])


@threestudio.register("no-material")
class NoMaterial(AlbedoMaterial):
    """Colour = activation(features): no lighting."""

    @dataclass
    class Config(AlbedoMaterial.Config):
        color_activation: Optional[str] = "sigmoid"

    cfg: Config

    def _activation_name(self) -> Optional[str]:
        return self.cfg.color_activation

    def forward(self, features: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """features (N, C) → rgb (N, n_output_dims)."""
        return self.albedo(features)


@threestudio.register("diffuse-with-point-light-material")
class DiffuseWithPointLightMaterial(AlbedoMaterial):
    """albedo · (ambient + diffuse · max(0, n·l)), l the unit vector to the point light."""

    @dataclass
    class Config(AlbedoMaterial.Config):
        ambient_light_color: List[float] = field(default_factory=lambda: [0.1, 0.1, 0.1])
        diffuse_light_color: List[float] = field(default_factory=lambda: [0.9, 0.9, 0.9])
        ambient_only_steps: int = 1000
        diffuse_prob: float = 0.75
        textureless_prob: float = 0.5
        albedo_activation: Optional[str] = "sigmoid"
        soft_shading: bool = False

    cfg: Config
    requires_normal = True

    def _activation_name(self) -> Optional[str]:
        return self.cfg.albedo_activation

    def configure(self) -> None:
        super().configure()
        for key in ("ambient_light_color", "diffuse_light_color"):
            if len(getattr(self.cfg, key)) != 3:
                raise ConfigError(f"material.{key} needs 3 values, got {list(getattr(self.cfg, key))}")
        self.register_buffer("ambient_light_color", torch.tensor(list(self.cfg.ambient_light_color)))
        self.register_buffer("diffuse_light_color", torch.tensor(list(self.cfg.diffuse_light_color)))
        self.ambient_only = self.cfg.ambient_only_steps > 0

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        self.ambient_only = global_step < self.cfg.ambient_only_steps

    def choose_shading(self) -> str:
        """The shading mode for this forward (random in training, see the module docstring)."""
        if self.ambient_only:
            return "albedo"
        if not self.training:
            return "diffuse"
        if random.random() > self.cfg.diffuse_prob:
            return "albedo"
        return "textureless" if random.random() < self.cfg.textureless_prob else "diffuse"

    def forward(
        self,
        features: Tensor,
        viewdirs: Optional[Tensor] = None,
        positions: Optional[Tensor] = None,
        shading_normal: Optional[Tensor] = None,
        light_positions: Optional[Tensor] = None,
        ambient_ratio: Optional[float] = None,
        shading: Optional[str] = None,
        **kwargs: Any,
    ) -> Tensor:
        """features (N, C), positions (N, 3), shading_normal (N, 3), light_positions (N, 3) → rgb (N, 3)."""
        albedo = self.albedo(features)
        shading = shading or self.choose_shading()
        if shading not in SHADINGS:
            raise UserError(f"unknown shading {shading!r}; use one of {SHADINGS}")
        if shading == "albedo":
            return albedo
        if shading_normal is None or positions is None or light_positions is None:
            raise UserError(
                "diffuse shading needs normals, positions and light positions: set geometry.normal_type "
                "(e.g. analytic) or use no-material"
            )
        if ambient_ratio is not None:
            ambient = torch.full_like(albedo[..., :1], float(ambient_ratio)).expand_as(albedo)
            diffuse = 1.0 - ambient
        elif self.training and self.cfg.soft_shading:
            diffuse = torch.full_like(albedo, random.random())
            ambient = 1.0 - diffuse
        else:
            ambient, diffuse = self.ambient_light_color.to(albedo), self.diffuse_light_color.to(albedo)
        light_dirs = F.normalize(light_positions - positions, dim=-1)
        lambert = (shading_normal * light_dirs).sum(dim=-1, keepdim=True).clamp(min=0.0)
        light = ambient + diffuse * lambert
        if shading == "textureless":
            return light.expand_as(albedo)
        return albedo * light
