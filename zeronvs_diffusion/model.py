"""The ZeroNVS diffusion model: diffusers UNet + VAE, transformers CLIP image tower, cc_projection.

:func:`load_model` accepts a latent-diffusion checkpoint (``zeronvs.ckpt`` + its YAML), a folder written by
``python -m zeronvs_diffusion.convert``, or ``"random"`` + a YAML (seeded random weights).
"""

from __future__ import annotations

import glob
import json
import logging
import os
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from zeronvs_diffusion.cc_projection import CCProjection
from zeronvs_diffusion.errors import HOW_TO_GET_WEIGHTS, CheckpointError, UserError, missing_file_message
from zeronvs_diffusion.key_mapping import plan_conversion
from zeronvs_diffusion.ldm_config import (
    ConditioningSpec,
    LdmArchitecture,
    clip_sizes_from_shapes,
    clip_vision_config_kwargs,
    load_ldm_yaml,
    parse_architecture,
)
from zeronvs_diffusion.model_config import COMPILE_MODES, DTYPES
from zeronvs_diffusion.prior import DiffusionPrior

logger = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

MODEL_INDEX = "model_index.json"
CONDITIONING_FILE = "conditioning.json"
# component → (library, class) as written to model_index.json
COMPONENT_CLASSES = {
    "unet": ("diffusers", "UNet2DConditionModel"),
    "vae": ("diffusers", "AutoencoderKL"),
    "image_encoder": ("transformers", "CLIPVisionModelWithProjection"),
    "scheduler": ("diffusers", "DDIMScheduler"),
    "cc_projection": ("zeronvs_diffusion", "CCProjection"),
}
# long names accepted by load_model's dtype argument besides model_config.DTYPES' short ones
_DTYPE_ALIASES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def resolve_dtype(dtype: Union[None, str, torch.dtype], device: Union[str, torch.device]) -> torch.dtype:
    """None → float32 on CPU, float16 on CUDA; 'fp32' | 'fp16' | 'bf16' or a torch.dtype otherwise."""
    if dtype is None:
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    name = _DTYPE_ALIASES.get(str(dtype), str(dtype))
    if name not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def _is_converted_folder(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, MODEL_INDEX))


# ------------------------------------------------------------------------------------ module building
def _clip_config(sizes: Optional[Mapping[str, int]]):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(**clip_vision_config_kwargs(sizes))


def build_modules(
    arch: LdmArchitecture, clip_sizes: Optional[Mapping[str, int]], device: Union[str, torch.device] = "cpu"
) -> Dict[str, nn.Module]:
    """The four networks of ``arch`` (random init; ``device="meta"`` builds them without memory)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPVisionModelWithProjection

    clip_config = _clip_config(clip_sizes)
    with torch.device(device):
        return {
            "unet": UNet2DConditionModel(**arch.unet),
            "vae": AutoencoderKL(**arch.vae),
            "image_encoder": CLIPVisionModelWithProjection(clip_config),
            "cc_projection": CCProjection(
                clip_dim=clip_config.projection_dim, embedding_dim=arch.embedding_dim, context_dim=arch.context_dim
            ),
        }


def _materialize_buffers(module: nn.Module) -> None:
    """Replace buffers left on the meta device after an ``assign`` load (only CLIP's position_ids exist)."""
    for name, buf in list(module.named_buffers()):
        if not buf.is_meta:
            continue
        owner_name, _, attr = name.rpartition(".")
        owner = module.get_submodule(owner_name)
        if attr != "position_ids":
            raise RuntimeError(f"buffer {name} has no value after loading; cannot materialize it")
        owner.register_buffer(attr, torch.arange(buf.shape[-1]).expand(buf.shape), persistent=False)


def _assign_weights(module: nn.Module, state: Dict[str, Tensor], what: str) -> nn.Module:
    result = module.load_state_dict(state, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{what} does not fit its config: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    _materialize_buffers(module)
    return module


def _scheduler(kwargs: Mapping[str, Any]):
    from diffusers import DDIMScheduler

    return DDIMScheduler(**kwargs)


def _ckpt_to_modules(
    ckpt_path: str, arch: LdmArchitecture, dtype: torch.dtype, trust_checkpoint: bool = False
) -> Dict[str, nn.Module]:
    """Build the networks on the meta device and assign the checkpoint's (memory-mapped) tensors."""
    from zeronvs_diffusion.checkpoint import read_state_dict

    state = read_state_dict(ckpt_path, trust=trust_checkpoint)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    clip_sizes = clip_sizes_from_shapes(shapes)
    modules = build_modules(arch, clip_sizes, device="meta")
    target_shapes = {name: {k: tuple(v.shape) for k, v in m.state_dict().items()} for name, m in modules.items()}
    plan = plan_conversion(target_shapes, shapes, arch)
    if plan.missing or plan.mismatched:
        n = len(plan.missing) + len(plan.mismatched)
        raise CheckpointError(
            f"checkpoint {ckpt_path} does not fit its YAML ({n} problems; is it the right zeronvs_config.yaml?): "
            + "; ".join(plan.problems())
        )
    if plan.unexpected:
        logger.warning("ignoring %d unexpected checkpoint keys, e.g. %s", len(plan.unexpected), plan.unexpected[:3])
    logger.info("UNet weights from the %s copy", "EMA" if plan.uses_ema else "raw (non-EMA)")
    for name, module in modules.items():
        tensors = {k: src.apply(state[src.key]).to(dtype) for k, src in plan.sources[name].items()}
        _assign_weights(module, tensors, f"{name} of {ckpt_path}")
    del state
    return modules


def _folder_module(folder: str, name: str, dtype: torch.dtype) -> nn.Module:
    """Load one component of a converted folder: config → meta module → safetensors assign."""
    from safetensors.torch import load_file

    sub = os.path.join(folder, name)
    library, cls_name = COMPONENT_CLASSES[name]
    if library == "transformers":
        import transformers

        cls = getattr(transformers, cls_name)
        config = cls.config_class.from_pretrained(sub)
        with torch.device("meta"):
            module = cls(config)
    else:
        if library == "diffusers":
            import diffusers

            cls = getattr(diffusers, cls_name)
        else:
            cls = CCProjection
        with torch.device("meta"):
            module = cls.from_config(cls.load_config(sub))
    files = sorted(glob.glob(os.path.join(sub, "*.safetensors")))
    if not files:
        raise CheckpointError(f"{sub} holds no .safetensors weights; re-run `python -m zeronvs_diffusion.convert`")
    state: Dict[str, Tensor] = {}
    for f in files:
        try:
            state.update(load_file(f))
        except Exception as e:  # safetensors raises its own error types for truncated headers/data
            raise CheckpointError(f"cannot read {f} (truncated or corrupt? {e}); re-run the converter") from None
    return _assign_weights(module, {k: v.to(dtype) for k, v in state.items()}, f"{sub}")


def _load_folder(folder: str, dtype: torch.dtype) -> Tuple[Dict[str, nn.Module], Any, ConditioningSpec]:
    with open(os.path.join(folder, MODEL_INDEX), "r", encoding="utf-8") as f:
        index = json.load(f)
    missing = [c for c in COMPONENT_CLASSES if c not in index or not os.path.isdir(os.path.join(folder, c))]
    cond_path = os.path.join(folder, CONDITIONING_FILE)
    if missing or not os.path.isfile(cond_path):
        raise CheckpointError(
            f"{folder} is an incomplete converted model (missing {missing or [CONDITIONING_FILE]}); "
            "re-run `python -m zeronvs_diffusion.convert`"
        )
    with open(cond_path, "r", encoding="utf-8") as f:
        conditioning = ConditioningSpec.from_dict(json.load(f))
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
    modules = {name: _folder_module(folder, name, dtype) for name in ("unet", "vae", "image_encoder", "cc_projection")}
    return modules, scheduler, conditioning


def _load_checked_folder(folder: str, dtype: torch.dtype) -> Tuple[Dict[str, nn.Module], Any, ConditioningSpec]:
    """:func:`_load_folder`, with any failure of a damaged or edited folder (bad JSON, missing configs, weights
    of other shapes, impossible scheduler values) turned into one CheckpointError line naming the folder."""
    try:
        modules, scheduler, conditioning = _load_folder(folder, dtype)
        steps = scheduler.config.num_train_timesteps
        if not isinstance(steps, int) or steps < 1 or not bool(torch.isfinite(scheduler.alphas_cumprod).all()):
            raise ValueError(f"scheduler: num_train_timesteps={steps!r} (must be a positive integer)")
    except CheckpointError:
        raise
    except Exception as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = " ".join(lines[:2])[:300] or type(e).__name__
        raise CheckpointError(
            f"{folder} is not a usable converted model ({type(e).__name__}: {detail}); re-run "
            "`python -m zeronvs_diffusion.convert` to write it again"
        ) from None
    return modules, scheduler, conditioning


# ------------------------------------------------------------------------------------------- the model
class ZeroNVSModel(DiffusionPrior):
    """The frozen ZeroNVS diffusion model and its conditioning maths (a
    :class:`~zeronvs_diffusion.prior.DiffusionPrior`).

    Image inputs are channels-last ``(B,H,W,3)`` (or RGBA ``(B,H,W,4)``, composited on white) in [0,1], as
    everywhere in the project; latents and decoded images are channels-first.
    """

    def __init__(
        self, unet, vae, image_encoder, cc_projection: CCProjection, scheduler, conditioning: ConditioningSpec
    ):
        super().__init__(scheduler, conditioning)
        self.unet = unet
        self.vae = vae
        self.image_encoder = image_encoder
        self.cc_projection = cc_projection
        self.register_buffer("clip_mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("clip_std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.out_channels)

    @property
    def latent_size(self) -> Tuple[int, int]:
        size = self.unet.config.sample_size
        return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))

    # -------------------------------------------------------------------------------- image inputs
    def clip_embed(self, img01: Tensor) -> Tensor:
        """CLIP image embedding (B,1,D) of images (B,H,W,3) in [0,1] (bicubic, align_corners=True, no antialias)."""
        x = self.channels_first(img01, img01.shape[1])
        size = self.conditioning.clip_image_size
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=True, antialias=False)
        x = (x - self.clip_mean.to(x.dtype)) / self.clip_std.to(x.dtype)
        return self.image_encoder(pixel_values=x).image_embeds[:, None, :]

    def _vae_input(self, img01: Tensor) -> Tensor:
        return self.channels_first(img01, self.conditioning.vae_resolution) * 2.0 - 1.0

    def encode_concat(self, img01: Tensor) -> Tensor:
        """VAE posterior mode (B,C,h,w) of images (B,H,W,3) in [0,1], resized to the VAE resolution; unscaled."""
        return self.vae.encode(self._vae_input(img01)).latent_dist.mode()

    def encode_latents(self, img01: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """Posterior sample × scale_factor (B,C,h,w) of images (B,H,W,3) in [0,1]; differentiable (for SDS)."""
        posterior = self.vae.encode(self._vae_input(img01)).latent_dist
        return posterior.sample(generator=generator) * self.conditioning.scale_factor

    def decode(self, z: Tensor) -> Tensor:
        """Scaled latents (B,C,h,w) → images (B,3,H,W) in [-1,1] (not clamped)."""
        return self.vae.decode(z.to(self.dtype) / self.conditioning.scale_factor).sample

    # ---------------------------------------------------------------------------------- conditioning
    def project(self, clip_raw: Tensor, T: Tensor) -> Tensor:
        """c_crossattn (B,1,context) = cc_projection(cat(clip_raw (B,1,D), T (B,E)))."""
        return self.cc_projection(clip_raw.to(self.dtype), T.to(device=self.device, dtype=self.dtype))

    # ------------------------------------------------------------------------------------------ UNet
    def predict_eps(self, x_t: Tensor, t: Union[int, Tensor], c_crossattn: Tensor, c_concat: Tensor) -> Tensor:
        """UNet noise prediction (B,C,h,w) for noisy latents x_t at timesteps t (int or (B,)), in x_t's dtype."""
        x = torch.cat([x_t, c_concat.to(x_t.dtype)], dim=1).to(self.dtype)
        t = torch.as_tensor(t, device=x.device)
        eps = self.unet(x, t, encoder_hidden_states=c_crossattn.to(self.dtype)).sample
        return eps.to(x_t.dtype)

    def compile_unet(self, mode: str = "default") -> None:
        """Compile the UNet in place with ``torch.compile(mode=mode, dynamic=False)`` (see :data:`COMPILE_MODES`).

        The first call at each input shape compiles (tens of seconds); later calls reuse it. On CUDA,
        ``"reduce-overhead"`` also replays the UNet as a CUDA graph, which removes its kernel-launch overhead at
        the small SDS batches. Weights, state-dict keys and ``save_pretrained`` are unchanged.
        """
        if mode not in COMPILE_MODES:
            raise ValueError(f"UNet compile mode must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
        self.unet.compile(mode=mode, dynamic=False)

    def enable_vae_gradient_checkpointing(self) -> None:
        """diffusers' checkpointing of the VAE's down/mid blocks (active whenever autograd records; the decoder
        only ever runs without gradients in this project, so it only affects :meth:`encode_latents`)."""
        self.vae.enable_gradient_checkpointing()

    # -------------------------------------------------------------------------------------- saving
    def save_pretrained(self, out_dir: str) -> None:
        """Write a diffusers-style folder (safetensors weights, model_index.json, conditioning.json)."""
        import diffusers

        os.makedirs(out_dir, exist_ok=True)
        for name in ("unet", "vae", "cc_projection"):
            getattr(self, name).save_pretrained(os.path.join(out_dir, name), safe_serialization=True)
        self.image_encoder.save_pretrained(os.path.join(out_dir, "image_encoder"), safe_serialization=True)
        self.scheduler.save_pretrained(os.path.join(out_dir, "scheduler"))
        index: Dict[str, Any] = {"_class_name": "ZeroNVSModel", "_diffusers_version": diffusers.__version__}
        index.update({name: list(lib_cls) for name, lib_cls in COMPONENT_CLASSES.items()})
        with open(os.path.join(out_dir, MODEL_INDEX), "w", encoding="utf-8") as f:
            json.dump(index, f, indent=2)
        with open(os.path.join(out_dir, CONDITIONING_FILE), "w", encoding="utf-8") as f:
            json.dump(self.conditioning.to_dict(), f, indent=2)


def load_model(
    path_or_dir: str,
    config: Optional[str] = None,
    dtype: Union[None, str, torch.dtype] = None,
    device: Union[str, torch.device] = "cpu",
    seed: int = 0,
    trust_checkpoint: bool = False,
) -> ZeroNVSModel:
    """Load the ZeroNVS diffusion model, frozen and in eval mode.

    Args:
        path_or_dir: a latent-diffusion checkpoint (``zeronvs.ckpt``, needs ``config``), a folder written by
            ``python -m zeronvs_diffusion.convert`` (``config`` optional and unused), ``"random"``
            (needs ``config``; weights drawn with ``seed``). Other sources (the oracle prior) are
            :func:`zeronvs_diffusion.sources.load_prior`'s.
        config: the latent-diffusion YAML (``zeronvs_config.yaml``).
        dtype: None (fp32 on CPU, fp16 on CUDA), 'fp32' | 'fp16' | 'bf16' or a torch.dtype.
        device: where the model lives.
        trust_checkpoint: allow full (code-running) unpickling of a ``.ckpt`` that needs classes outside the
            allow-list of :mod:`zeronvs_diffusion.torch_load`; only for files from a trusted source.
    """
    path = os.fspath(path_or_dir) if path_or_dir is not None else ""
    torch_dtype = resolve_dtype(dtype, device)
    if path and _is_converted_folder(path):
        modules, scheduler, conditioning = _load_checked_folder(path, torch_dtype)
    else:
        if path != "random" and not os.path.isfile(path):
            if not os.path.isdir(path):
                raise CheckpointError(missing_file_message("checkpoint", path))
            raise CheckpointError(f"no checkpoint at {path!r} (a folder, but without model_index.json); "
                                  f"{HOW_TO_GET_WEIGHTS}")
        if config is None:
            raise CheckpointError(
                f"loading {path!r} needs its latent-diffusion YAML (config=...); {HOW_TO_GET_WEIGHTS}"
            )
        arch = parse_architecture(load_ldm_yaml(os.fspath(config)))
        if path == "random":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                modules = build_modules(arch, arch.clip_sizes, device="cpu")
            if torch_dtype != torch.float32:
                # plain nn.Module.to: diffusers' ModelMixin.to warns about fp32-only modules these models lack
                modules = {k: nn.Module.to(m, torch_dtype) for k, m in modules.items()}
        else:
            modules = _ckpt_to_modules(path, arch, torch_dtype, trust_checkpoint)
        scheduler = _scheduler(arch.scheduler)
        clip_size = modules["image_encoder"].config.image_size
        conditioning = arch.conditioning(clip_size)
    model = ZeroNVSModel(scheduler=scheduler, conditioning=conditioning, **modules)
    model.requires_grad_(False)
    return model.to(device=device).eval()
