"""Latent-diffusion YAML (as released with ZeroNVS / Zero-1-to-3) → diffusers / transformers configs.

Every size comes from the YAML (or, for the CLIP tower, from the checkpoint's tensors); nothing about the
released model is hard-coded except the CLIP ViT-L/14 default used when neither says otherwise.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

import yaml

from zeronvs_diffusion.errors import HOW_TO_GET_WEIGHTS, CheckpointError, UnsupportedConfigError, missing_file_message

# conditioning mode -> length of the camera embedding it produces
SUPPORTED_CONDITIONING_MODES: Dict[str, int] = {
    "3dof": 4,
    "7dof": 19,
    "7dof_unscaled": 19,
    "7dof_quantile_scale": 19,
}

# OpenAI CLIP ViT-L/14, what FrozenCLIPImageEmbedder always builds; keys are OpenAI CLIP's constructor names
DEFAULT_CLIP_SIZES: Dict[str, int] = {
    "vision_width": 1024,
    "vision_layers": 24,
    "vision_patch_size": 14,
    "image_resolution": 224,
    "embed_dim": 768,
}
CLIP_SIZE_KEYS = tuple(DEFAULT_CLIP_SIZES) + ("vision_heads", "vision_mlp_width")

# prefix of the CLIP image tower inside an ldm checkpoint (OpenAI layout)
CLIP_VISUAL_PREFIX = "cond_stage_model.model.visual."


@dataclass
class ConditioningSpec:
    """How images and cameras become the UNet's conditioning (saved as ``conditioning.json``)."""

    mode: str
    embedding_dim: int
    scale_factor: float
    vae_resolution: int
    clip_image_size: int

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ConditioningSpec":
        missing = [
            k for k in ("mode", "embedding_dim", "scale_factor", "vae_resolution", "clip_image_size") if k not in d
        ]
        if missing:
            raise CheckpointError(
                f"conditioning.json lacks {', '.join(missing)}; re-run `python -m zeronvs_diffusion.convert`"
            )
        spec = cls(
            mode=str(d["mode"]),
            embedding_dim=int(d["embedding_dim"]),
            scale_factor=float(d["scale_factor"]),
            vae_resolution=int(d["vae_resolution"]),
            clip_image_size=int(d["clip_image_size"]),
        )
        check_conditioning_mode(spec.mode, spec.embedding_dim)
        return spec


@dataclass
class LdmArchitecture:
    """Everything needed to build the ZeroNVS model from a latent-diffusion YAML.

    ``unet``, ``vae``, ``scheduler`` are keyword arguments of diffusers' ``UNet2DConditionModel``,
    ``AutoencoderKL`` and ``DDIMScheduler``; ``clip_sizes`` holds OpenAI-CLIP size names (see
    :func:`clip_vision_config_kwargs`) or None when the YAML does not give them (then they are read from
    the checkpoint, or default to ViT-L/14).
    """

    unet: Dict[str, Any]
    vae: Dict[str, Any]
    scheduler: Dict[str, Any]
    conditioning_mode: str
    embedding_dim: int
    scale_factor: float
    use_ema: bool
    clip_sizes: Optional[Dict[str, int]] = None

    @property
    def context_dim(self) -> int:
        return int(self.unet["cross_attention_dim"])

    def conditioning(self, clip_image_size: int) -> ConditioningSpec:
        return ConditioningSpec(
            mode=self.conditioning_mode,
            embedding_dim=self.embedding_dim,
            scale_factor=self.scale_factor,
            vae_resolution=int(self.vae["sample_size"]),
            clip_image_size=int(clip_image_size),
        )


def check_conditioning_mode(mode: str, embedding_dim: int) -> None:
    """Raise UnsupportedConfigError for an unknown mode or an embedding_dim that does not fit it."""
    if mode not in SUPPORTED_CONDITIONING_MODES:
        raise UnsupportedConfigError(
            f"unknown conditioning mode {mode!r}; supported: {', '.join(SUPPORTED_CONDITIONING_MODES)}"
        )
    expected = SUPPORTED_CONDITIONING_MODES[mode]
    if int(embedding_dim) != expected:
        raise UnsupportedConfigError(
            f"conditioning mode {mode!r} produces a {expected}-value camera embedding, but the YAML says "
            f"embedding_dim={embedding_dim}"
        )


def load_ldm_yaml(path: str) -> Dict[str, Any]:
    """Read a latent-diffusion YAML file into a plain dict (CheckpointError if missing or unreadable)."""
    if path is None:
        raise CheckpointError(f"no latent-diffusion YAML given; {HOW_TO_GET_WEIGHTS}")
    if not os.path.isfile(path):
        raise CheckpointError(missing_file_message("latent-diffusion YAML", path))
    try:
        with open(path, "r", encoding="utf-8") as f:
            cfg = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot parse {path} as YAML ({type(e).__name__}); is it zeronvs_config.yaml?") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
        raise CheckpointError(
            f"{path} has no 'model:' section; expected a latent-diffusion YAML like zeronvs_config.yaml"
        )
    return cfg


def _get(d: Mapping[str, Any], dotted: str, default: Any = KeyError) -> Any:
    node: Any = d
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node or node[part] is None:
            if default is KeyError:
                raise UnsupportedConfigError(f"the latent-diffusion YAML lacks '{dotted}'")
            return default
        node = node[part]
    return node


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UnsupportedConfigError(message)


def unet_kwargs(unet_params: Mapping[str, Any]) -> Dict[str, Any]:
    """ldm ``openaimodel.UNetModel`` params → ``UNet2DConditionModel`` keyword arguments."""
    p = unet_params
    _require(
        bool(p.get("use_spatial_transformer", False)), "only UNets with use_spatial_transformer: true are supported"
    )
    _require(int(p.get("dims", 2)) == 2, "only 2-D UNets (dims: 2) are supported")
    _require(p.get("num_classes") is None, "class-conditional UNets (num_classes) are not supported")
    _require(not p.get("resblock_updown", False), "resblock_updown: true is not supported")
    _require(p.get("conv_resample", True), "conv_resample: false is not supported")
    nrb = p["num_res_blocks"]
    _require(isinstance(nrb, int), "num_res_blocks must be one integer (per-level lists are not supported)")
    mult: List[int] = list(p["channel_mult"])
    ch = int(p["model_channels"])
    block_out = [ch * int(m) for m in mult]
    attention_resolutions = {int(r) for r in p["attention_resolutions"]}
    has_attention = [2**level in attention_resolutions for level in range(len(mult))]
    depth = p.get("transformer_depth", 1)
    _require(isinstance(depth, int), "transformer_depth must be one integer")
    num_head_channels = int(p.get("num_head_channels", -1))
    if num_head_channels == -1:
        heads: Any = int(p["num_heads"])
    else:
        heads = [c // num_head_channels for c in block_out]
    return {
        "sample_size": int(p.get("image_size", 32)),
        "in_channels": int(p["in_channels"]),
        "out_channels": int(p["out_channels"]),
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in has_attention],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(has_attention)],
        "block_out_channels": block_out,
        "layers_per_block": int(nrb),
        # diffusers' historical quirk: for SD-1-style UNets attention_head_dim is the number of heads
        "attention_head_dim": heads,
        "cross_attention_dim": int(p["context_dim"]),
        "transformer_layers_per_block": int(depth),
        "use_linear_projection": bool(p.get("use_linear_in_transformer", False)),
        "resnet_time_scale_shift": "scale_shift" if p.get("use_scale_shift_norm", False) else "default",
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "downsample_padding": 1,
        "act_fn": "silu",
    }


def vae_kwargs(first_stage_params: Mapping[str, Any], scale_factor: float) -> Dict[str, Any]:
    """ldm ``AutoencoderKL`` params → diffusers ``AutoencoderKL`` keyword arguments."""
    dd = first_stage_params["ddconfig"]
    _require(bool(dd.get("double_z", True)), "only VAEs with double_z: true are supported")
    _require(
        not dd.get("attn_resolutions"), "VAEs with attention outside the mid block (attn_resolutions) are not supported"
    )
    z = int(dd["z_channels"])
    embed_dim = int(first_stage_params.get("embed_dim", z))
    _require(embed_dim == z, f"VAE embed_dim ({embed_dim}) must equal z_channels ({z})")
    levels = len(dd["ch_mult"])
    return {
        "in_channels": int(dd["in_channels"]),
        "out_channels": int(dd["out_ch"]),
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": [int(dd["ch"]) * int(m) for m in dd["ch_mult"]],
        "layers_per_block": int(dd["num_res_blocks"]),
        "latent_channels": z,
        "norm_num_groups": 32,
        "sample_size": int(dd["resolution"]),
        "scaling_factor": float(scale_factor),
        "act_fn": "silu",
    }


def scheduler_kwargs(model_params: Mapping[str, Any]) -> Dict[str, Any]:
    """The ldm noise schedule as ``DDIMScheduler`` keyword arguments (ZeroNVS's DDIM settings)."""
    beta_schedule = {"linear": "scaled_linear", "sqrt_linear": "linear"}.get(
        model_params.get("beta_schedule", "linear")
    )
    _require(
        beta_schedule is not None,
        f"beta_schedule {model_params.get('beta_schedule')!r} is not supported (linear, sqrt_linear)",
    )
    _require(model_params.get("parameterization", "eps") == "eps", "only eps-prediction models are supported")
    return {
        "num_train_timesteps": int(model_params.get("timesteps", 1000)),
        "beta_start": float(model_params.get("linear_start", 0.00085)),
        "beta_end": float(model_params.get("linear_end", 0.012)),
        "beta_schedule": beta_schedule,
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "prediction_type": "epsilon",
        "timestep_spacing": "leading",
    }


def parse_architecture(cfg: Mapping[str, Any]) -> LdmArchitecture:
    """The ``model:`` section of a latent-diffusion YAML dict → :class:`LdmArchitecture`."""
    model = cfg["model"] if "model" in cfg else cfg
    target = str(model.get("target", ""))
    _require(target.endswith("LatentDiffusion"), f"model.target {target!r} is not a LatentDiffusion model")
    params = _get(model, "params")
    _require(
        params.get("conditioning_key", "hybrid") == "hybrid",
        "only conditioning_key: hybrid (ZeroNVS / Zero-1-to-3) is supported",
    )
    scale_factor = float(params.get("scale_factor", 1.0))
    unet = unet_kwargs(_get(params, "unet_config.params"))
    vae = vae_kwargs(_get(params, "first_stage_config.params"), scale_factor)
    cond_params = _get(params, "conditioning_config.params", None)
    if cond_params is None:  # Zero-1-to-3 checkpoints carry no conditioning_config
        mode, embedding_dim = "3dof", 4
    else:
        mode = str(cond_params.get("mode", "3dof"))
        embedding_dim = int(cond_params.get("embedding_dim", SUPPORTED_CONDITIONING_MODES.get(mode, -1)))
    check_conditioning_mode(mode, embedding_dim)
    clip_params = _get(params, "cond_stage_config.params", {}) or {}
    clip_sizes = {k: int(clip_params[k]) for k in CLIP_SIZE_KEYS if k in clip_params} or None
    return LdmArchitecture(
        unet=unet,
        vae=vae,
        scheduler=scheduler_kwargs(params),
        conditioning_mode=mode,
        embedding_dim=embedding_dim,
        scale_factor=scale_factor,
        use_ema=bool(params.get("use_ema", True)),
        clip_sizes=clip_sizes,
    )


def clip_sizes_from_shapes(shapes: Mapping[str, Sequence[int]], prefix: str = CLIP_VISUAL_PREFIX) -> Dict[str, int]:
    """Read the CLIP image tower's sizes from the shapes of its OpenAI-layout tensors.

    ``shapes`` maps checkpoint keys to shapes. Raises CheckpointError when the tower is absent.
    """
    try:
        width, _, patch, _ = shapes[prefix + "conv1.weight"]
        n_pos = shapes[prefix + "positional_embedding"][0]
        embed_dim = shapes[prefix + "proj"][1]
    except KeyError as e:
        raise CheckpointError(f"the checkpoint has no CLIP image tower: key {e.args[0]!r} is missing") from None
    layer_prefix = prefix + "transformer.resblocks."
    layers = {int(k[len(layer_prefix) :].split(".", 1)[0]) for k in shapes if k.startswith(layer_prefix)}
    grid = math.isqrt(int(n_pos) - 1)
    sizes = {
        "vision_width": int(width),
        "vision_layers": len(layers),
        "vision_patch_size": int(patch),
        "image_resolution": int(patch) * grid,
        "embed_dim": int(embed_dim),
    }
    mlp_key = layer_prefix + "0.mlp.c_fc.weight"
    if mlp_key in shapes:
        sizes["vision_mlp_width"] = int(shapes[mlp_key][0])
    return sizes


def clip_vision_config_kwargs(sizes: Optional[Mapping[str, int]]) -> Dict[str, Any]:
    """OpenAI-CLIP sizes (defaults: ViT-L/14) → ``transformers.CLIPVisionConfig`` keyword arguments."""
    s = dict(DEFAULT_CLIP_SIZES)
    s.update(sizes or {})
    width = int(s["vision_width"])
    heads = int(s.get("vision_heads", max(1, width // 64)))
    _require(width % heads == 0, f"CLIP vision_width {width} is not divisible by vision_heads {heads}")
    return {
        "hidden_size": width,
        "intermediate_size": int(s.get("vision_mlp_width", 4 * width)),
        "num_hidden_layers": int(s["vision_layers"]),
        "num_attention_heads": heads,
        "image_size": int(s["image_resolution"]),
        "patch_size": int(s["vision_patch_size"]),
        "projection_dim": int(s["embed_dim"]),
        "num_channels": 3,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
    }
