"""The ZeroNVS / Zero-1-to-3 projection of [CLIP image embedding, camera embedding] to the UNet's context."""

from __future__ import annotations

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin


class CCProjection(ModelMixin, ConfigMixin):
    """Linear(clip_dim + embedding_dim → context_dim), saved and loaded like any diffusers model."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, clip_dim: int = 768, embedding_dim: int = 19, context_dim: int = 768):
        super().__init__()
        self.projection = nn.Linear(clip_dim + embedding_dim, context_dim)

    def forward(self, clip_embeds: torch.Tensor, camera_embeds: torch.Tensor) -> torch.Tensor:
        """clip_embeds (B,1,clip_dim), camera_embeds (B,embedding_dim) → (B,1,context_dim)."""
        camera = camera_embeds[:, None, :].to(clip_embeds.dtype)
        return self.projection(torch.cat([clip_embeds, camera], dim=-1))
