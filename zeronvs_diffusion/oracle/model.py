"""An exact, weight-free stand-in for the ZeroNVS diffusion model: the oracle prior of a known world.

``load_prior("oracle:WORLD.yaml")`` (:mod:`zeronvs_diffusion.sources`) returns an :class:`OracleModel`, a
:class:`~zeronvs_diffusion.prior.DiffusionPrior` like the released model (the interface the guidance and the
sampler call), and receives only what the real UNet receives: noisy latents, timesteps, c_crossattn and
c_concat. From the camera part of c_crossattn it recovers the target pose relative to the conditioning view
(inverting 7dof_quantile_scale), composes it with the input view's pose in the world, renders the world there and
returns the noise that is exact for that view. See docs/GUIDANCE.md ("The oracle prior") for what it is and is not.

Stand-ins: the "VAE" is the identity on pixels at the oracle's resolution (latents = 2·rgb − 1, scale factor 1:
differentiable and invertible); "CLIP" is the image's mean colour (unused by the prediction); cc_projection is
concatenation, so the 19 camera numbers reach ``predict_eps`` unchanged.

A world file is a scene (see :mod:`zeronvs_diffusion.oracle.scene`) plus ``input_camera: {c2w: 4×4, fov_deg}``
(the input view's OpenGL pose in the world; ``scripts/oracle_sds.py`` writes it from ``data.default_*``) or, for
several input views, ``input_cameras: [{c2w, fov_deg}, ...]`` (the first is the scene's input camera), optional
``scale`` (the scene scale of the embedding; default the 20% quantile of the first input view's depth, ZeroNVS's
definition), ``resolution`` (pixels a side of the latents, default 64) and ``knowledge``:

- ``full`` (default): x₀ is the world rendered at the target pose, everywhere.
- ``visible``: the prior knows the world only where its conditioning view sees it. A target pixel whose surface
  point lies outside the conditioning camera's frame or is occluded from it (:func:`~zeronvs_diffusion.oracle.scene.
  visible_from`) gets the conditioning image's mean colour, an uninformative value; a real prior is as blind there.

Each conditional row's conditioning view is recognised from its c_concat (the nearest input view's pixels); the
target pose is the relative camera of c_crossattn composed with that input's pose.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Optional, Union

import torch
from torch import Tensor

from zeronvs_diffusion.camera import relative_pose_from_embedding
from zeronvs_diffusion.errors import UserError
from zeronvs_diffusion.ldm_config import ConditioningSpec, scheduler_kwargs
from zeronvs_diffusion.oracle.scene import Scene, SceneError, read_mapping, render, visible_from
from zeronvs_diffusion.prior import DiffusionPrior

logger = logging.getLogger(__name__)

ORACLE_PREFIX = "oracle:"
WORLD_KEYS = ("input_camera", "input_cameras", "scale", "resolution", "knowledge")
KNOWLEDGE = ("full", "visible")
MODE = "7dof_quantile_scale"
EMBEDDING_DIM = 19
CLIP_DIM = 3  # the "CLIP" stand-in: mean colour
DEPTH_QUANTILE = 0.2
# the conditioning image must be this world's input view: largest accepted mean |difference| in [-1, 1] units
CONDITIONING_TOLERANCE = 0.1


class OracleModel(DiffusionPrior):
    """The oracle prior of ``scene`` seen from the input camera(s) ``input_c2w`` (K, 4, 4) (or (4, 4)) with vertical
    fov ``input_fov_deg`` (K,) (or a number); ``knowledge``: ``full`` | ``visible`` (module docstring)."""

    def __init__(self, scene: Scene, input_c2w: Tensor, input_fov_deg: Any, scale: Optional[float] = None,
                 resolution: int = 64, supersample: int = 2, knowledge: str = "full"):
        from diffusers import DDIMScheduler

        if knowledge not in KNOWLEDGE:
            raise SceneError(f"the oracle world's knowledge is {knowledge!r}; valid: {', '.join(KNOWLEDGE)}")
        spec = ConditioningSpec(MODE, EMBEDDING_DIM, 1.0, int(resolution), int(resolution))
        scheduler = DDIMScheduler(**scheduler_kwargs({}))  # the ldm defaults: ZeroNVS's noise schedule
        super().__init__(scheduler, spec)
        # an empty buffer that follows .to(device, dtype): the model's device and dtype (it has no weights)
        self.register_buffer("_placement", torch.zeros(0), persistent=False)
        self.scene = scene
        self.supersample = int(supersample)
        self.knowledge = knowledge
        self.input_c2w = input_c2w.double().reshape(-1, 4, 4)
        self.input_fov_deg = torch.as_tensor(input_fov_deg, dtype=torch.float64).reshape(-1).expand(
            self.input_c2w.shape[0]).clone()
        self.scale = self.depth_quantile_scale() if scale is None else float(scale)
        if self.scale <= 0:
            raise SceneError(f"the oracle world's scale must be positive, got {self.scale}")
        self._input_latents = self.render_latents(self.input_c2w, self.input_fov_deg, full=True)  # (K, 3, R, R)

    @property
    def dtype(self) -> torch.dtype:
        return self._placement.dtype

    @property
    def device(self) -> torch.device:
        return self._placement.device

    @property
    def latent_channels(self) -> int:
        return 3

    @property
    def latent_size(self) -> tuple[int, int]:
        res = self.conditioning.vae_resolution
        return (res, res)

    # ------------------------------------------------------------------------------------ the world
    def depth_quantile_scale(self) -> float:
        """The 20% quantile of the first input view's z-depth (ZeroNVS's scene scale)."""
        res = self.conditioning.vae_resolution
        _, depth = render(self.scene, self.input_c2w[:1], self.input_fov_deg[:1], res, res, 1)
        value = torch.sort(depth.reshape(-1)).values[int(DEPTH_QUANTILE * depth.numel())].item()
        if not torch.isfinite(torch.tensor(value)):
            raise SceneError("the input view sees less than 20% geometry: set `scale` in the oracle world file")
        return value

    def render_latents(self, c2w: Tensor, fov_deg: Tensor, cond: Optional[Tensor] = None, full: bool = False
                       ) -> Tensor:
        """Pixel latents (B, 3, R, R) in [-1, 1] of the world seen from ``c2w`` (B, 4, 4), ``fov_deg`` (B,).

        With ``knowledge: visible`` (and not ``full``), pixels that input view ``cond`` (B,) long does not see
        get that input's mean colour."""
        res = self.conditioning.vae_resolution
        rgb, _ = render(self.scene, c2w.double().cpu(), fov_deg.double().cpu(), res, res, self.supersample)
        if self.knowledge == "visible" and not full:
            cond = cond.cpu()
            seen = visible_from(self.scene, c2w.double().cpu(), fov_deg.double().cpu(), res, res,
                                self.input_c2w[cond], self.input_fov_deg[cond])
            mean = (self._input_latents[cond].float().mean(dim=(2, 3)) / self.conditioning.scale_factor + 1.0) / 2.0
            rgb = torch.where(seen[..., None], rgb, mean[:, None, None, :].to(rgb))
        return (rgb.permute(0, 3, 1, 2) * 2.0 - 1.0) * self.conditioning.scale_factor

    def target_poses(self, c_crossattn: Tensor, cond: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """World c2w (B, 4, 4) float64 and fov (B,) of the targets named by conditional c_crossattn (B, 1, D),
        relative to input views ``cond`` (B,) long (default the first)."""
        embedding = c_crossattn[:, 0, CLIP_DIM:CLIP_DIM + EMBEDDING_DIM]
        rel, fov_deg = relative_pose_from_embedding(embedding.detach().cpu(), self.scale)
        cond = torch.zeros(rel.shape[0], dtype=torch.long) if cond is None else cond.cpu()
        return self.input_c2w[cond] @ rel, fov_deg

    # ------------------------------------------------------------------------ the model interface
    def clip_embed(self, img01: Tensor) -> Tensor:
        """"CLIP" stand-in (B, 1, 3): the mean colour of images (B, H, W, 3) in [0, 1]."""
        return self.channels_first(img01, img01.shape[1]).mean(dim=(2, 3))[:, None, :]

    def _vae_input(self, img01: Tensor) -> Tensor:
        return self.channels_first(img01, self.conditioning.vae_resolution) * 2.0 - 1.0

    def encode_concat(self, img01: Tensor) -> Tensor:
        """The identity "VAE": pixel latents (B, 3, R, R) in [-1, 1] of images (B, H, W, 3) resized (bilinear)."""
        return self._vae_input(img01)

    def encode_latents(self, img01: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """The same pixel latents × scale_factor (1), differentiable (the identity's posterior is a point mass)."""
        return self._vae_input(img01) * self.conditioning.scale_factor

    def decode(self, z: Tensor) -> Tensor:
        """Pixel latents (B, 3, R, R) → images in [-1, 1]."""
        return z.to(self.dtype) / self.conditioning.scale_factor

    def project(self, clip_raw: Tensor, T: Tensor) -> Tensor:
        """c_crossattn (B, 1, 3 + 19): the "CLIP" vector and the camera embedding, concatenated."""
        T = T.to(device=clip_raw.device, dtype=clip_raw.dtype)
        return torch.cat([clip_raw, T[:, None, :]], dim=-1).to(self.dtype)

    def conditioning_inputs(self, c_concat: Tensor) -> Tensor:
        """Which input view (B,) long each conditioning image c_concat (B, 3, R, R) is: the nearest in mean
        |difference|, which must be ≤ CONDITIONING_TOLERANCE (UserError otherwise: the oracle knows no other image)."""
        diff = (c_concat.detach().float().cpu()[:, None] - self._input_latents.float()[None]).abs().mean(dim=(2, 3, 4))
        best, cond = diff.min(dim=1)
        if bool((best > CONDITIONING_TOLERANCE).any()):
            raise UserError(
                f"the oracle was conditioned on an image that is not one of its world's input views (mean "
                f"|difference| {best.max().item():.3f}): it knows only the input views' poses, so SDS anchoring "
                "(n_aux_c2w > 0) and other input images are not supported; render the inputs with "
                "scripts/oracle_sds.py"
            )
        return cond

    @torch.no_grad()
    def predict_eps(self, x_t: Tensor, t: Union[int, Tensor], c_crossattn: Tensor, c_concat: Tensor) -> Tensor:
        """The exact noise (B, 3, R, R) of x_t at timesteps t (int or (B,)).

        Conditional rows: ε = (x_t − √ᾱ_t·x₀)/√(1 − ᾱ_t) with x₀ the world rendered at the target pose read
        from c_crossattn. Unconditional rows (c_crossattn all zero) get the prediction of the conditional row with
        the same x_t and t in the batch, so classifier-free guidance at any scale is the identity.
        """
        batch = x_t.shape[0]
        t = torch.as_tensor(t, device=x_t.device).reshape(-1).expand(batch)
        is_cond = (c_crossattn.reshape(batch, -1) != 0).any(dim=1).cpu()
        if not bool(is_cond.any()):
            raise RuntimeError("the oracle needs a conditional row (non-zero c_crossattn) in every batch")
        cond = self.conditioning_inputs(c_concat[is_cond.to(c_concat.device)])
        c2w, fov_deg = self.target_poses(c_crossattn[is_cond.to(c_crossattn.device)], cond)
        x0 = torch.empty_like(x_t, dtype=torch.float32)
        cond_rows = is_cond.nonzero().reshape(-1).to(x_t.device)
        x0[cond_rows] = self.render_latents(c2w, fov_deg, cond).to(x0)
        uncond_rows = (~is_cond).nonzero().reshape(-1).to(x_t.device)
        if uncond_rows.numel():
            x0[uncond_rows] = x0[self._matching_rows(x_t, t, uncond_rows, cond_rows)]
        alpha_bar = self.scheduler.alphas_cumprod.to(x_t.device)[t].view(-1, 1, 1, 1).float()
        eps = (x_t.float() - alpha_bar.sqrt() * x0) / (1.0 - alpha_bar).sqrt()
        return eps.to(x_t.dtype)

    @staticmethod
    def _matching_rows(x_t: Tensor, t: Tensor, uncond_rows: Tensor, cond_rows: Tensor) -> Tensor:
        """For each unconditional row, the conditional row with identical x_t and t (RuntimeError if none)."""
        flat = x_t.reshape(x_t.shape[0], -1)
        same = (flat[uncond_rows, None] == flat[None, cond_rows]).all(-1) & (t[uncond_rows, None] == t[None, cond_rows])
        if not bool(same.any(dim=1).all()):
            raise RuntimeError(
                "the oracle's unconditional prediction is its conditional one: each unconditional row needs a "
                "conditional row with the same x_t and t in the same batch"
            )
        return cond_rows[same.float().argmax(dim=1)]

    def compile_unet(self, mode: str = "default") -> None:
        raise UserError("the oracle prior has no UNet to compile; set system.guidance.compile_unet=null "
                        "(nvs-system: system.diffusion_model.compile_unet)")

    def enable_vae_gradient_checkpointing(self) -> None:
        """Nothing to recompute: the identity "VAE" keeps no activations."""


def _input_camera(spec: Any, path: str) -> tuple[Tensor, float]:
    if not isinstance(spec, Mapping) or set(spec) != {"c2w", "fov_deg"}:
        raise SceneError(
            f"{path} needs input_camera: {{c2w: 4×4 OpenGL camera-to-world, fov_deg: vertical fov}} — the input "
            "view's pose in the world (or input_cameras: a list of them); scripts/oracle_sds.py writes it from "
            "data.default_* (docs/GUIDANCE.md)"
        )
    c2w = torch.tensor(spec["c2w"], dtype=torch.float64)
    if c2w.shape != (4, 4):
        raise SceneError(f"{path}: input_camera.c2w must be 4×4, got shape {tuple(c2w.shape)}")
    return c2w, float(spec["fov_deg"])


def _input_cameras(world: Mapping[str, Any], path: str) -> tuple[Tensor, Tensor]:
    """(K, 4, 4) and (K,) from ``input_camera`` or ``input_cameras`` (exactly one of them)."""
    if ("input_camera" in world) == ("input_cameras" in world):
        raise SceneError(f"{path} needs exactly one of input_camera (one view) and input_cameras (a list)")
    specs = [world["input_camera"]] if "input_camera" in world else world["input_cameras"]
    if not isinstance(specs, list) or not specs:
        raise SceneError(f"{path}: input_cameras must be a non-empty list of {{c2w, fov_deg}}")
    cameras = [_input_camera(spec, path) for spec in specs]
    return torch.stack([c for c, _ in cameras]), torch.tensor([f for _, f in cameras], dtype=torch.float64)


def load_oracle(path: str, config: Optional[str] = None, device: Union[str, torch.device] = "cpu") -> OracleModel:
    """The oracle prior of the world file ``path`` (a scene plus ``input_camera`` or ``input_cameras``, optional
    ``scale``, ``resolution``, ``knowledge``), frozen and in eval mode. ``config`` must be None: the oracle has no
    latent-diffusion YAML."""
    if config is not None:
        raise UserError(
            f"the oracle prior takes no latent-diffusion YAML (got {config!r}); "
            "set system.guidance.pretrained_config=null (nvs-system: system.diffusion_model.pretrained_config)"
        )
    spec = dict(read_mapping(path, "oracle world"))
    world = {key: spec.pop(key) for key in WORLD_KEYS if key in spec}
    scene = Scene.from_dict(spec, where=path)
    c2w, fov_deg = _input_cameras(world, path)
    scale = world.get("scale")
    resolution = int(world.get("resolution", 64))
    knowledge = str(world.get("knowledge", "full"))
    model = OracleModel(scene, c2w, fov_deg, None if scale is None else float(scale), resolution,
                        knowledge=knowledge)
    logger.info("oracle prior of %s: %d input view(s), knowledge %s, scale %.4f, %d px pixel latents", path,
                c2w.shape[0], knowledge, model.scale, resolution)
    model.requires_grad_(False)
    return model.to(device=device).eval()
