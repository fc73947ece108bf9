"""The interface of a view-conditioned diffusion prior: what the SDS guidance and the DDIM sampler call.

Two sources implement it: :class:`zeronvs_diffusion.model.ZeroNVSModel` (the released model on diffusers) and
:class:`zeronvs_diffusion.oracle.model.OracleModel` (the weight-free oracle of a known world). Callers
(``threestudio/models/guidance/zeronvs_guidance.py``, :mod:`zeronvs_diffusion.sampling`,
``threestudio/systems/nvs.py``) are typed against :class:`DiffusionPrior` and use nothing else of a model; a test
(``tests/test_diffusion_prior.py``) reads their source and fails when they reach past it.

Image inputs are channels-last ``(B, H, W, 3)`` (or RGBA ``(B, H, W, 4)``, composited on white) in [0, 1]; latents
and decoded images are channels-first. This module imports no diffusion library.
"""

from __future__ import annotations

import abc
from typing import Any, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from zeronvs_diffusion.camera import Number, camera_embedding
from zeronvs_diffusion.ldm_config import ConditioningSpec

# what callers may use of a prior besides nn.Module's ``to``/``eval``/``requires_grad_`` (the test checks both
# that callers stay inside it and that every source has it)
INTERFACE = (
    "scheduler", "conditioning", "dtype", "device", "latent_channels", "latent_size",
    "clip_embed", "encode_concat", "encode_latents", "decode", "project", "camera_embedding", "conditionings",
    "predict_eps", "compile_unet", "enable_vae_gradient_checkpointing",
)


class DiffusionPrior(nn.Module, abc.ABC):
    """A frozen diffusion model of novel views conditioned on one image and a relative camera.

    Attributes: ``scheduler`` (a diffusers ``DDIMScheduler``: its ``config`` and ``alphas_cumprod`` define the
    noise schedule) and ``conditioning`` (:class:`~zeronvs_diffusion.ldm_config.ConditioningSpec`: camera
    embedding mode, VAE resolution, latent scale factor).
    """

    def __init__(self, scheduler: Any, conditioning: ConditioningSpec):
        super().__init__()
        self.scheduler = scheduler
        self.conditioning = conditioning

    # ------------------------------------------------------------------------------------ properties
    @property
    @abc.abstractmethod
    def dtype(self) -> torch.dtype:
        """The weights' dtype (inputs are cast to it)."""

    @property
    @abc.abstractmethod
    def device(self) -> torch.device:
        """Where the model lives."""

    @property
    @abc.abstractmethod
    def latent_channels(self) -> int:
        """C of the latents (B, C, h, w) that :meth:`predict_eps` denoises."""

    @property
    @abc.abstractmethod
    def latent_size(self) -> Tuple[int, int]:
        """(h, w) of the latents the model was trained on."""

    # ------------------------------------------------------------------------------------ images
    def channels_first(self, img01: Tensor, size: int, mode: str = "bilinear") -> Tensor:
        """(B, H, W, 3|4) in [0, 1] → (B, 3, size, size) in the model's dtype and device (alpha on white)."""
        if img01.dim() != 4 or img01.shape[-1] not in (3, 4):
            raise ValueError(f"expected images as (B,H,W,3) or (B,H,W,4) in [0,1], got shape {tuple(img01.shape)}")
        if img01.shape[-1] == 4:
            img01 = img01[..., :3] * img01[..., 3:] + (1.0 - img01[..., 3:])
        x = img01.permute(0, 3, 1, 2).to(device=self.device, dtype=self.dtype)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode=mode, align_corners=False)
        return x

    @abc.abstractmethod
    def clip_embed(self, img01: Tensor) -> Tensor:
        """Raw image embedding (B, 1, D) of images (B, H, W, 3) in [0, 1] (CLIP's for the released model)."""

    @abc.abstractmethod
    def encode_concat(self, img01: Tensor) -> Tensor:
        """Unscaled latents (B, C, h, w) of the conditioning images (B, H, W, 3): the UNet's concat input."""

    @abc.abstractmethod
    def encode_latents(self, img01: Tensor, generator: Any = None) -> Tensor:
        """Scaled latents (B, C, h, w) of images (B, H, W, 3), differentiable (the SDS loss backpropagates)."""

    @abc.abstractmethod
    def decode(self, z: Tensor) -> Tensor:
        """Scaled latents (B, C, h, w) → images (B, 3, H, W) in [-1, 1] (not clamped)."""

    # ------------------------------------------------------------------------------------ conditioning
    def camera_embedding(self, cond_c2w: Tensor, target_c2w: Tensor, fov_deg: Number, scale: Number) -> Tensor:
        """(B, embedding_dim) embedding of this model's conditioning mode; see
        :func:`zeronvs_diffusion.camera.camera_embedding`."""
        return camera_embedding(cond_c2w, target_c2w, fov_deg, scale, mode=self.conditioning.mode)

    @abc.abstractmethod
    def project(self, clip_raw: Tensor, T: Tensor) -> Tensor:
        """c_crossattn (B, 1, context) of raw image embeddings (B, 1, D) and camera embeddings T (B, E)."""

    def conditionings(
        self, cond_img01: Tensor, cond_c2w: Tensor, target_c2w: Tensor, fov_deg: Number, scale: Number
    ) -> Tuple[Tensor, Tensor]:
        """(c_crossattn (B, 1, context), c_concat (B, C, h, w)) for B target cameras.

        ``cond_img01`` (1 or B, H, W, 3) in [0, 1] and ``cond_c2w`` (1 or B, 4, 4) broadcast over targets.
        """
        T = self.camera_embedding(cond_c2w, target_c2w, fov_deg, scale)
        clip_raw = self.clip_embed(cond_img01)
        c_concat = self.encode_concat(cond_img01)
        n = T.shape[0]
        if clip_raw.shape[0] != n:
            if clip_raw.shape[0] != 1:
                raise ValueError(f"{clip_raw.shape[0]} condition images for {n} target cameras; pass 1 or {n}")
            clip_raw, c_concat = clip_raw.expand(n, -1, -1), c_concat.expand(n, -1, -1, -1)
        return self.project(clip_raw, T), c_concat

    # ------------------------------------------------------------------------------------ denoising
    @abc.abstractmethod
    def predict_eps(self, x_t: Tensor, t: Union[int, Tensor], c_crossattn: Tensor, c_concat: Tensor) -> Tensor:
        """Noise prediction (B, C, h, w) for noisy latents x_t at timesteps t (int or (B,)), in x_t's dtype.
        Rows whose conditionings are all zero are the unconditional branch of classifier-free guidance."""

    # ------------------------------------------------------------------------------------ speed / memory
    @abc.abstractmethod
    def compile_unet(self, mode: str = "default") -> None:
        """Compile the denoiser in place (the model section's ``compile_unet``), or refuse with a UserError."""

    @abc.abstractmethod
    def enable_vae_gradient_checkpointing(self) -> None:
        """Recompute the image encoder's activations in the backward of :meth:`encode_latents` (less memory)."""
