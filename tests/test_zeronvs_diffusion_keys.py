"""The ldm → diffusers key mapping, checked on the full-size ZeroNVS manifest (no tensors needed)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import require_shared


@pytest.fixture(scope="module")
def full_size():
    """(architecture, manifest shapes, target shapes of the full-size modules built on the meta device)."""
    from zeronvs_diffusion.ldm_config import clip_sizes_from_shapes, load_ldm_yaml, parse_architecture
    from zeronvs_diffusion.model import build_modules

    fixtures = require_shared("fixtures")
    arch = parse_architecture(load_ldm_yaml(str(fixtures / "zeronvs_config.yaml")))
    with open(fixtures / "zeronvs_state_dict_manifest.json", "r", encoding="utf-8") as f:
        manifest = {k: tuple(shape) for k, (shape, _dtype) in json.load(f).items()}
    modules = build_modules(arch, clip_sizes_from_shapes(manifest), device="meta")
    targets = {name: {k: tuple(v.shape) for k, v in m.state_dict().items()} for name, m in modules.items()}
    return arch, manifest, targets


def test_full_size_manifest_fills_every_parameter(full_size):
    from zeronvs_diffusion.key_mapping import plan_conversion

    arch, manifest, targets = full_size
    plan = plan_conversion(targets, manifest, arch)
    assert plan.missing == [] and plan.mismatched == [], plan.problems()
    assert plan.unexpected == [], plan.unexpected[:10]
    assert plan.uses_ema
    # the UNet is read from the EMA copy, everything else from its own prefix
    assert all(s.key.startswith("model_ema.diffusion_model") for s in plan.sources["unet"].values())
    assert all(s.key.startswith("first_stage_model.") for s in plan.sources["vae"].values())
    assert all(s.key.startswith("cond_stage_model.model.visual.") for s in plan.sources["image_encoder"].values())
    assert {s.key for s in plan.sources["cc_projection"].values()} == {"cc_projection.weight", "cc_projection.bias"}
    # every EMA tensor and every CLIP visual tensor is used; the ignore list holds exactly the documented groups
    used = {s.key for sources in plan.sources.values() for s in sources.values()}
    assert {k for k in manifest if k.startswith("model_ema.diffusion_model")} <= used
    assert {k for k in manifest if k.startswith("cond_stage_model.model.visual.")} <= used
    assert {k for k in manifest if k.startswith("first_stage_model.")} <= used
    ignored = set(plan.ignored)
    assert {k for k in manifest if k.startswith("model.diffusion_model.")} <= ignored
    assert {"model_ema.decay", "model_ema.num_updates", "betas", "alphas_cumprod"} <= ignored
    assert "cond_stage_model.model.token_embedding.weight" in ignored
    assert used | ignored == set(manifest) and not used & ignored
    # parameter counts as documented in the fixture README
    n = lambda comp: sum(torch.Size(s).numel() for s in targets[comp].values())  # noqa: E731
    assert n("unet") == 859_532_484 and round(n("vae") / 1e6, 1) == 83.7
    assert targets["cc_projection"]["projection.weight"] == (768, 787)


def test_full_size_architecture_comes_from_yaml(full_size):
    arch, manifest, _ = full_size
    assert arch.unet["block_out_channels"] == [320, 640, 1280, 1280]
    assert arch.unet["down_block_types"] == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert arch.unet["attention_head_dim"] == 8 and arch.unet["use_linear_projection"] is False
    assert arch.vae["sample_size"] == 256 and arch.conditioning_mode == "7dof_quantile_scale"
    from zeronvs_diffusion.ldm_config import clip_sizes_from_shapes

    assert clip_sizes_from_shapes(manifest) == {
        "vision_width": 1024,
        "vision_layers": 24,
        "vision_patch_size": 14,
        "image_resolution": 224,
        "embed_dim": 768,
        "vision_mlp_width": 4096,
    }


def test_non_ema_checkpoint_uses_raw_unet(full_size):
    from zeronvs_diffusion.key_mapping import plan_conversion

    arch, manifest, targets = full_size
    raw_only = {k: v for k, v in manifest.items() if not k.startswith("model_ema.")}
    plan = plan_conversion(targets, raw_only, arch)
    assert not plan.uses_ema and not plan.missing and not plan.mismatched and not plan.unexpected
    assert all(s.key.startswith("model.diffusion_model.") for s in plan.sources["unet"].values())


def test_wrong_shapes_and_missing_keys_are_reported(full_size):
    from zeronvs_diffusion.key_mapping import plan_conversion

    arch, manifest, targets = full_size
    broken = dict(manifest)
    broken["cc_projection.weight"] = (768, 772)
    del broken["first_stage_model.decoder.conv_out.weight"]
    broken["something.new"] = (3,)
    plan = plan_conversion(targets, broken, arch)
    problems = " | ".join(plan.problems())
    assert "first_stage_model.decoder.conv_out.weight" in problems
    assert "cc_projection.weight has shape [768, 772]" in problems
    assert plan.unexpected == ["something.new"]


def test_ema_names_drop_the_dots():
    from zeronvs_diffusion.key_mapping import ema_key, unet_source_key

    cfg = {"layers_per_block": 2, "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3}
    src = unet_source_key("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight", cfg)
    assert src == "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight"
    assert ema_key(src) == "model_ema.diffusion_modelinput_blocks41transformer_blocks0attn1to_qweight"
    assert (
        unet_source_key("up_blocks.0.upsamplers.0.conv.bias", cfg)
        == "model.diffusion_model.output_blocks.2.1.conv.bias"
    )
    assert (
        unet_source_key("up_blocks.1.upsamplers.0.conv.bias", cfg)
        == "model.diffusion_model.output_blocks.5.2.conv.bias"
    )
    assert (
        unet_source_key("down_blocks.0.downsamplers.0.conv.weight", cfg)
        == "model.diffusion_model.input_blocks.3.0.op.weight"
    )
