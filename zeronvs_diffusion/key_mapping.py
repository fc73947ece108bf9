"""Where each diffusers / transformers parameter comes from in a latent-diffusion (ZeroNVS) checkpoint.

Pure functions of key names and the architecture: no tensors are needed, so the mapping can be checked
against a manifest of a full-size checkpoint (``tests/test_zeronvs_diffusion_keys.py``).

For every parameter of the target modules (``unet``, ``vae``, ``image_encoder``, ``cc_projection``) a
:class:`TensorSource` names the checkpoint key and the reshaping op. Checkpoint keys that feed nothing
must match :data:`IGNORED_KEY_PATTERNS` (documented in docs/DIFFUSION.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from zeronvs_diffusion.ldm_config import CLIP_VISUAL_PREFIX, LdmArchitecture

COMPONENTS = ("unet", "vae", "image_encoder", "cc_projection")

UNET_PREFIX = "model.diffusion_model."
EMA_PREFIX = "model_ema."
VAE_PREFIX = "first_stage_model."
CC_PROJECTION_PREFIX = "cc_projection."

# The ldm diffusion schedule, recomputed by DDIMScheduler from the YAML.
SCHEDULE_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "logvar",
    "lvlb_weights",
)

# Checkpoint keys that are read by nothing, by design (besides the raw UNet when the EMA copy is used,
# or the EMA copy when it is not).
IGNORED_KEY_PATTERNS: Tuple[str, ...] = (
    r"^(%s)$" % "|".join(SCHEDULE_BUFFERS),
    r"^model_ema\.(decay|num_updates)$",
    r"^cond_stage_model\.model\.(?!visual\.)",  # the CLIP text tower (unused by an image-conditioned model)
    r"^cond_stage_model\.(mean|std)$",  # FrozenCLIPImageEmbedder's normalisation constants (fixed CLIP values)
)
_IGNORED = re.compile("|".join(IGNORED_KEY_PATTERNS))


@dataclass(frozen=True)
class TensorSource:
    """One target tensor = ``op`` applied to the checkpoint tensor ``key``.

    ops: ``copy``; ``flatten_1x1`` ((o,i,1,1) conv → (o,i) linear); ``transpose`` (2-D);
    ``chunk{i}of3`` (row block i of a fused q/k/v projection).
    """

    key: str
    op: str = "copy"

    def target_shape(self, shape: Sequence[int]) -> Optional[Tuple[int, ...]]:
        """The shape the op produces from a source of ``shape``, or None when the op cannot apply."""
        shape = tuple(int(s) for s in shape)
        if self.op == "copy":
            return shape
        if self.op == "flatten_1x1":
            return shape[:2] if len(shape) == 4 and shape[2:] == (1, 1) else None
        if self.op == "transpose":
            return shape[::-1] if len(shape) == 2 else None
        if self.op.startswith("chunk"):
            return (shape[0] // 3,) + shape[1:] if shape and shape[0] % 3 == 0 else None
        raise ValueError(f"unknown op {self.op!r}")

    def apply(self, tensor):
        """Apply the op to a tensor (views where possible; chunks are cloned so no two targets share memory)."""
        if self.op == "copy":
            return tensor
        if self.op == "flatten_1x1":
            return tensor.reshape(tensor.shape[:2])
        if self.op == "transpose":
            return tensor.t().contiguous()
        if self.op.startswith("chunk"):
            index = int(self.op[len("chunk")])
            return tensor.chunk(3, dim=0)[index].clone()
        raise ValueError(f"unknown op {self.op!r}")


def ema_key(ldm_unet_key: str) -> str:
    """'model.diffusion_model.a.0.b' → 'model_ema.diffusion_modela0b' (LitEma's dot-free buffer names)."""
    return EMA_PREFIX + ldm_unet_key[len("model.") :].replace(".", "")


def is_ignored(key: str) -> bool:
    return _IGNORED.search(key) is not None


# ----------------------------------------------------------------------------------------------- UNet
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def _unet_resnet(prefix: str, rest: str) -> str:
    sub, tail = rest.split(".", 1)
    return f"{prefix}.{_UNET_RESNET[sub]}.{tail}"


def unet_source_key(key: str, unet_config: Mapping) -> str:
    """diffusers ``UNet2DConditionModel`` key → ldm ``openaimodel.UNetModel`` key (with 'model.diffusion_model.')."""
    per_level = int(unet_config["layers_per_block"]) + 1  # res blocks + down/upsampler slot per level
    up_has_attention = ["CrossAttn" in t for t in unet_config["up_block_types"]]
    simple = {
        "conv_in.": "input_blocks.0.0.",
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
    }
    for new, old in simple.items():
        if key.startswith(new):
            return UNET_PREFIX + old + key[len(new) :]
    m = re.match(r"^(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)$", key)
    if m:
        direction, block, kind, layer, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
        if direction == "down":
            index = 1 + block * per_level + (per_level - 1 if kind == "downsamplers" else layer)
            base = f"input_blocks.{index}"
            if kind == "resnets":
                return UNET_PREFIX + _unet_resnet(f"{base}.0", rest)
            if kind == "attentions":
                return UNET_PREFIX + f"{base}.1.{rest}"
            return UNET_PREFIX + f"{base}.0.op.{rest.removeprefix('conv.')}"
        index = block * per_level + (per_level - 1 if kind == "upsamplers" else layer)
        base = f"output_blocks.{index}"
        if kind == "resnets":
            return UNET_PREFIX + _unet_resnet(f"{base}.0", rest)
        if kind == "attentions":
            return UNET_PREFIX + f"{base}.1.{rest}"
        return UNET_PREFIX + f"{base}.{2 if up_has_attention[block] else 1}.{rest}"
    m = re.match(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.+)$", key)
    if m:
        kind, layer, rest = m.group(1), int(m.group(2)), m.group(3)
        if kind == "attentions":
            return UNET_PREFIX + f"middle_block.1.{rest}"
        return UNET_PREFIX + _unet_resnet(f"middle_block.{2 * layer}", rest)
    raise KeyError(f"no ldm counterpart known for UNet parameter {key!r}")


# ------------------------------------------------------------------------------------------------ VAE
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_source(key: str, vae_config: Mapping) -> TensorSource:
    """diffusers ``AutoencoderKL`` key → ldm ``AutoencoderKL`` key (with 'first_stage_model.') and op."""
    levels = len(vae_config["block_out_channels"])
    k = key.replace("conv_norm_out.", "norm_out.").replace("conv_shortcut.", "nin_shortcut.")
    m = re.match(r"^(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.+)$", k)
    if m:
        part, kind, layer, rest = m.groups()
        if kind == "resnets":
            return TensorSource(f"{VAE_PREFIX}{part}.mid.block_{int(layer) + 1}.{rest}")
        for new, old in _VAE_ATTENTION.items():
            if rest.startswith(new + "."):
                op = "flatten_1x1" if old != "norm" and rest.endswith("weight") else "copy"
                return TensorSource(f"{VAE_PREFIX}{part}.mid.attn_1.{old}{rest[len(new):]}", op)
        raise KeyError(f"no ldm counterpart known for VAE parameter {key!r}")
    m = re.match(r"^encoder\.down_blocks\.(\d+)\.(resnets\.(\d+)|downsamplers\.0)\.(.+)$", k)
    if m:
        level = m.group(1)
        if m.group(3) is not None:
            return TensorSource(f"{VAE_PREFIX}encoder.down.{level}.block.{m.group(3)}.{m.group(4)}")
        return TensorSource(f"{VAE_PREFIX}encoder.down.{level}.downsample.{m.group(4)}")
    m = re.match(r"^decoder\.up_blocks\.(\d+)\.(resnets\.(\d+)|upsamplers\.0)\.(.+)$", k)
    if m:
        level = levels - 1 - int(m.group(1))  # ldm numbers decoder levels from the highest resolution
        if m.group(3) is not None:
            return TensorSource(f"{VAE_PREFIX}decoder.up.{level}.block.{m.group(3)}.{m.group(4)}")
        return TensorSource(f"{VAE_PREFIX}decoder.up.{level}.upsample.{m.group(4)}")
    if re.match(r"^(encoder|decoder)\.(conv_in|conv_out|norm_out)\.|^(post_)?quant_conv\.", k):
        return TensorSource(VAE_PREFIX + k)
    raise KeyError(f"no ldm counterpart known for VAE parameter {key!r}")


# ----------------------------------------------------------------------------------------------- CLIP
_CLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}
_CLIP_TOP = {
    "vision_model.embeddings.class_embedding": TensorSource(CLIP_VISUAL_PREFIX + "class_embedding"),
    "vision_model.embeddings.patch_embedding.weight": TensorSource(CLIP_VISUAL_PREFIX + "conv1.weight"),
    "vision_model.embeddings.position_embedding.weight": TensorSource(CLIP_VISUAL_PREFIX + "positional_embedding"),
    "vision_model.pre_layrnorm.weight": TensorSource(CLIP_VISUAL_PREFIX + "ln_pre.weight"),
    "vision_model.pre_layrnorm.bias": TensorSource(CLIP_VISUAL_PREFIX + "ln_pre.bias"),
    "vision_model.post_layernorm.weight": TensorSource(CLIP_VISUAL_PREFIX + "ln_post.weight"),
    "vision_model.post_layernorm.bias": TensorSource(CLIP_VISUAL_PREFIX + "ln_post.bias"),
    "visual_projection.weight": TensorSource(CLIP_VISUAL_PREFIX + "proj", "transpose"),
}


def clip_source(key: str) -> TensorSource:
    """transformers ``CLIPVisionModelWithProjection`` key → OpenAI-layout CLIP visual key and op."""
    if key in _CLIP_TOP:
        return _CLIP_TOP[key]
    m = re.match(r"^vision_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", key)
    if m:
        layer, module, kind = m.groups()
        base = f"{CLIP_VISUAL_PREFIX}transformer.resblocks.{layer}."
        if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            index = "qkv".index(module[len("self_attn.")])
            return TensorSource(f"{base}attn.in_proj_{kind}", f"chunk{index}of3")
        if module in _CLIP_LAYER:
            return TensorSource(f"{base}{_CLIP_LAYER[module]}.{kind}")
    raise KeyError(f"no OpenAI-CLIP counterpart known for image-encoder parameter {key!r}")


def cc_projection_source(key: str) -> TensorSource:
    if key.startswith("projection."):
        return TensorSource(CC_PROJECTION_PREFIX + key[len("projection.") :])
    raise KeyError(f"no checkpoint counterpart known for cc_projection parameter {key!r}")


# ----------------------------------------------------------------------------------------------- plan
@dataclass
class ConversionPlan:
    """Sources of every target parameter, and what was missing or left over in the checkpoint."""

    sources: Dict[str, Dict[str, TensorSource]]
    uses_ema: bool
    missing: List[Tuple[str, str, str]] = field(default_factory=list)  # (component, target key, source key)
    mismatched: List[Tuple[str, str, str, tuple, tuple]] = field(default_factory=list)  # + source / expected shape
    ignored: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)

    def problems(self, limit: int = 6) -> List[str]:
        """The first missing keys and shape mismatches (up to ``limit``, both kinds when both occur)."""
        n_mismatched = min(len(self.mismatched), max(limit // 2, limit - len(self.missing)))
        lines = [f"missing {src} (for {comp}.{tgt})" for comp, tgt, src in self.missing[: limit - n_mismatched]]
        for comp, tgt, src, got, want in self.mismatched[:n_mismatched]:
            lines.append(f"{src} has shape {list(got)} but {comp}.{tgt} needs {list(want)}")
        return lines


def plan_conversion(
    target_shapes: Mapping[str, Mapping[str, Sequence[int]]],
    checkpoint_shapes: Mapping[str, Sequence[int]],
    arch: LdmArchitecture,
) -> ConversionPlan:
    """Map every target parameter to a checkpoint tensor and check shapes, from names and shapes only.

    Args:
        target_shapes: component name → {parameter key: shape} of the modules to fill.
        checkpoint_shapes: checkpoint key → shape (the ``state_dict`` of the ldm checkpoint).
        arch: the parsed YAML (UNet layout, EMA use).
    """
    ema_available = any(k.startswith(EMA_PREFIX) and not is_ignored(k) for k in checkpoint_shapes)
    uses_ema = arch.use_ema and ema_available
    mappers: Dict[str, Callable[[str], TensorSource]] = {
        "unet": lambda k: TensorSource(unet_source_key(k, arch.unet)),
        "vae": lambda k: vae_source(k, arch.vae),
        "image_encoder": clip_source,
        "cc_projection": cc_projection_source,
    }
    plan = ConversionPlan(sources={}, uses_ema=uses_ema)
    used = set()
    for component, shapes in target_shapes.items():
        plan.sources[component] = {}
        for key, want in shapes.items():
            source = mappers[component](key)
            if component == "unet" and uses_ema:
                source = TensorSource(ema_key(source.key), source.op)
            plan.sources[component][key] = source
            if source.key not in checkpoint_shapes:
                plan.missing.append((component, key, source.key))
                continue
            used.add(source.key)
            got = tuple(checkpoint_shapes[source.key])
            if source.target_shape(got) != tuple(want):
                plan.mismatched.append((component, key, source.key, got, tuple(want)))
    unused_prefix = UNET_PREFIX if uses_ema else EMA_PREFIX
    for key in checkpoint_shapes:
        if key in used:
            continue
        if is_ignored(key) or key.startswith(unused_prefix):
            plan.ignored.append(key)
        else:
            plan.unexpected.append(key)
    return plan
