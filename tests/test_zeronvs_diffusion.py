"""zeronvs_diffusion: camera embeddings, the tiny random model, 3dof checkpoints, bad input."""

from __future__ import annotations

import math
import os
import shutil

import pytest
import torch
import yaml
from conftest import REPO_ROOT, require_shared

TINY_YAML = REPO_ROOT / "configs" / "diffusion_tiny.yaml"


def orbit(elevation_deg, azimuth_deg, distance):
    from threestudio.utils.camera import orbit_c2w

    t = lambda v: torch.tensor([float(v)])  # noqa: E731
    return orbit_c2w(t(elevation_deg), t(azimuth_deg), t(distance))


# ------------------------------------------------------------------------------------- camera embeddings
def test_camera_embedding_identity_and_fov():
    from zeronvs_diffusion import camera_embedding

    c2w = orbit(20, 45, 2.0)
    T = camera_embedding(c2w, c2w, fov_deg=60.0, scale=0.5)
    assert T.shape == (1, 19)
    torch.testing.assert_close(T[0, :16], torch.eye(4).flatten(), atol=1e-6, rtol=0)
    fov = math.radians(60.0)
    torch.testing.assert_close(T[0, 16:], torch.tensor([fov, math.sin(fov), math.cos(fov)]))


def test_camera_embedding_scales_and_squashes_translation():
    from zeronvs_diffusion import camera_embedding

    cond = torch.eye(4)[None]
    target = torch.eye(4).repeat(3, 1, 1)
    target[:, 0, 3] = torch.tensor([0.3, 1.0, 1000.0])  # move along the camera's x axis
    T = camera_embedding(cond, target, fov_deg=torch.full((3,), 50.0), scale=torch.tensor([0.5, 2.0, 1.0]))
    expected = 5 * torch.tanh(torch.tensor([0.3 / 0.5, 1.0 / 2.0, 1000.0]) / 10)
    torch.testing.assert_close(T[:, 3], expected)
    assert T[2, 3] <= 5.0
    tiny_scale = camera_embedding(cond, target[:1], 50.0, scale=0.0, mode="7dof")
    torch.testing.assert_close(tiny_scale[0, 3], torch.tensor(0.3 / 1e-2))  # scale clipped at 1e-2, no squash


def test_camera_embedding_is_relative_to_the_condition_camera():
    from zeronvs_diffusion import camera_embedding

    cond, target = orbit(10, 30, 2.0), orbit(25, 80, 2.5)
    angle = math.radians(123)  # a rigid motion of the whole scene leaves the embedding unchanged
    rotation = torch.eye(4)[None]
    rotation[0, :2, :2] = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    rotation[0, :3, 3] = torch.tensor([0.3, -0.2, 0.1])
    a = camera_embedding(cond, target, 50.0, 1.0)
    b = camera_embedding(rotation @ cond, rotation @ target, 50.0, 1.0)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_3dof_embedding_matches_zero123_definition():
    from zeronvs_diffusion import camera_embedding

    T = camera_embedding(orbit(30, 0, 2.0), orbit(0, 90, 3.0), fov_deg=50.0, mode="3dof")
    torch.testing.assert_close(T[0], torch.tensor([math.radians(30), 1.0, 0.0, 1.0]), atol=1e-5, rtol=0)


def test_unknown_conditioning_mode_names_the_supported_ones():
    from threestudio.utils.errors import UserError
    from zeronvs_diffusion import camera_embedding

    with pytest.raises(UserError, match="supported: 3dof, 7dof"):
        camera_embedding(torch.eye(4)[None], torch.eye(4)[None], 50.0, mode="9dof")


# --------------------------------------------------------------------------------- tiny random model
@pytest.fixture(scope="module")
def tiny():
    from zeronvs_diffusion import load_model

    return load_model("random", str(TINY_YAML), seed=0)


def test_random_model_is_built_from_the_yaml_and_seeded(tiny):
    from zeronvs_diffusion import load_model

    c = tiny.conditioning
    assert (c.mode, c.embedding_dim, c.vae_resolution, c.clip_image_size) == ("7dof_quantile_scale", 19, 32, 56)
    assert tiny.image_encoder.config.hidden_size == 64 and tiny.unet.config.cross_attention_dim == 64
    assert tiny.cc_projection.projection.weight.shape == (64, 64 + 19)
    assert not any(p.requires_grad for p in tiny.parameters())
    again = load_model("random", str(TINY_YAML), seed=0)
    other = load_model("random", str(TINY_YAML), seed=1)
    w = lambda m: m.unet.conv_in.weight  # noqa: E731
    assert torch.equal(w(tiny), w(again)) and not torch.equal(w(tiny), w(other))


def test_sample_views_batch_range_and_determinism(tiny):
    from zeronvs_diffusion import sample_views

    img = torch.rand(1, 40, 40, 3)  # resized to the VAE's 32 px
    targets = torch.cat([orbit(0, 30, 2.0), orbit(20, 90, 2.5)])
    kwargs = dict(fov_deg=50.0, scale=1.0, steps=2, eta=1.0, guidance_scale=3.0)
    a = sample_views(tiny, img, orbit(0, 0, 2.0), targets, generator=torch.Generator().manual_seed(3), **kwargs)
    b = sample_views(tiny, img, orbit(0, 0, 2.0), targets, generator=torch.Generator().manual_seed(3), **kwargs)
    assert a.shape == (2, 3, 32, 32) and torch.isfinite(a).all()
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="x_T must have shape"):
        sample_views(tiny, img, orbit(0, 0, 2.0), targets, x_T=torch.zeros(1, 4, 16, 16), **kwargs)


def test_image_inputs_are_channels_last_and_rgba_is_composited_on_white(tiny):
    rgb = torch.rand(2, 32, 32, 3)
    alpha = torch.ones(2, 32, 32, 1)
    with torch.no_grad():
        torch.testing.assert_close(tiny.encode_concat(torch.cat([rgb, alpha], -1)), tiny.encode_concat(rgb))
        transparent = torch.cat([rgb, torch.zeros_like(alpha)], -1)
        torch.testing.assert_close(tiny.clip_embed(transparent), tiny.clip_embed(torch.ones_like(rgb)))
        assert tiny.clip_embed(rgb).shape == (2, 1, 64)
    with pytest.raises(ValueError, match=r"\(B,H,W,3\)"):
        tiny.encode_concat(rgb.permute(0, 3, 1, 2))


def test_conditionings_broadcast_one_condition_image(tiny):
    img = torch.rand(1, 32, 32, 3)
    targets = torch.cat([orbit(0, 30, 2.0), orbit(10, -30, 2.0)])
    with torch.no_grad():
        c_crossattn, c_concat = tiny.conditionings(img, orbit(0, 0, 2.0), targets, 50.0, 1.0)
    assert c_crossattn.shape == (2, 1, 64) and c_concat.shape == (2, 4, 16, 16)
    assert not torch.allclose(c_crossattn[0], c_crossattn[1])
    torch.testing.assert_close(c_concat[0], c_concat[1])


def test_encode_latents_is_differentiable_for_sds(tiny):
    rgb = torch.rand(1, 64, 64, 3, requires_grad=True)  # rendered views are resized to the VAE resolution
    latents = tiny.encode_latents(rgb, generator=torch.Generator().manual_seed(0))
    assert latents.shape == (1, 4, 16, 16)
    latents.square().sum().backward()
    assert rgb.grad is not None and rgb.grad.abs().sum() > 0


def test_bf16_weights_run(tiny):
    from zeronvs_diffusion import load_model

    model = load_model("random", str(TINY_YAML), dtype="bf16")
    assert model.dtype == torch.bfloat16
    x = torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        eps = model.predict_eps(x, torch.tensor([500]), torch.zeros(1, 1, 64), torch.zeros(1, 4, 16, 16))
    assert eps.dtype == torch.float32 and torch.isfinite(eps).all()


@pytest.mark.slow  # runs the diffusion benchmark
def test_diffusion_benchmark_half_precision_error_against_fp32(tiny):
    """bench.py diffusion --dtype bf16: ‖ε_bf16 − ε_fp32‖ / ‖ε_fp32‖ on the same seeded CFG batch and weights."""
    import argparse
    import importlib.util

    from zeronvs_diffusion import load_model

    bench_file = REPO_ROOT / "scripts" / "benchmarks" / "diffusion.py"
    spec = importlib.util.spec_from_file_location("bench_diffusion", bench_file)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = argparse.Namespace(config=str(TINY_YAML))
    assert bench.half_precision_error(args, tiny, 2, "cpu") == (0.0, (4, 4, 16, 16))  # same inputs, same weights
    error, _ = bench.half_precision_error(args, load_model("random", str(TINY_YAML), dtype="bf16"), 2, "cpu")
    assert 1e-4 < error < 0.1  # bf16 rounding, not another model
    with pytest.raises(RuntimeError, match="weights"):
        bench.half_precision_error(args, load_model("random", str(TINY_YAML), dtype="bf16", seed=1), 1, "cpu")


# ---------------------------------------------------------------------------- 3dof (Zero-1-to-3) family
def test_zero123_style_3dof_checkpoint_loads_and_samples(tmp_path):
    from zeronvs_diffusion import load_model, sample_views

    fixture = require_shared("fixtures", "zeronvs_tiny")
    state = torch.load(fixture / "model.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    generator = torch.Generator().manual_seed(0)
    clip_dim = state["cond_stage_model.model.visual.proj"].shape[1]
    context = state["cc_projection.weight"].shape[0]
    state["cc_projection.weight"] = torch.randn(context, clip_dim + 4, generator=generator) * 0.02
    torch.save({"state_dict": state}, tmp_path / "zero123.ckpt")
    cfg = yaml.safe_load((fixture / "config.yaml").read_text())
    del cfg["model"]["params"]["conditioning_config"]
    cfg.pop("--model", None)
    (tmp_path / "zero123.yaml").write_text(yaml.safe_dump(cfg))

    model = load_model(str(tmp_path / "zero123.ckpt"), str(tmp_path / "zero123.yaml"))
    assert (model.conditioning.mode, model.conditioning.embedding_dim) == ("3dof", 4)
    views = sample_views(
        model,
        torch.rand(1, 32, 32, 3),
        orbit(0, 0, 2.0),
        orbit(15, 40, 2.2),
        50.0,
        1.0,
        steps=2,
        generator=torch.Generator().manual_seed(0),
    )
    assert views.shape[:2] == (1, 3) and torch.isfinite(views).all()


# ------------------------------------------------------------------------------------------ bad input
def test_missing_checkpoint_or_yaml_says_how_to_get_them(tmp_path):
    from threestudio.utils.errors import UserError
    from zeronvs_diffusion import load_model

    with pytest.raises(UserError, match=r"checkpoint not found|no checkpoint.*zeronvs\.ckpt"):
        load_model(str(tmp_path / "zeronvs.ckpt"), str(TINY_YAML))
    fixture = require_shared("fixtures", "zeronvs_tiny")
    with pytest.raises(UserError, match="YAML.*zeronvs_config.yaml"):
        load_model(str(fixture / "model.ckpt"), None)
    with pytest.raises(UserError, match="YAML not found.*zeronvs_config.yaml.*ZeroNVS release"):
        load_model(str(fixture / "model.ckpt"), str(tmp_path / "zeronvs_config.yaml"))
    # a file that is not the release's download: named, with where it was looked for, and no download advice
    with pytest.raises(UserError, match=r"YAML not found: configs/missing\.yaml \(looked for /") as caught:
        load_model(str(fixture / "model.ckpt"), "configs/missing.yaml")
    assert "download" not in str(caught.value)
    with pytest.raises(UserError, match="without model_index.json"):
        load_model(str(tmp_path), None)


def test_checkpoint_that_does_not_fit_the_yaml_lists_mismatches():
    from zeronvs_diffusion import load_model
    from zeronvs_diffusion.errors import CheckpointError

    fixtures = require_shared("fixtures")
    with pytest.raises(CheckpointError, match="does not fit its YAML.*has shape") as info:
        load_model(str(fixtures / "zeronvs_tiny" / "model.ckpt"), str(fixtures / "zeronvs_config.yaml"))
    assert len(str(info.value)) < 2000  # the first mismatches, not thousands


def test_unknown_mode_in_yaml(tmp_path):
    from zeronvs_diffusion import load_model
    from zeronvs_diffusion.errors import UnsupportedConfigError

    cfg = yaml.safe_load(TINY_YAML.read_text())
    cfg["model"]["params"]["conditioning_config"]["params"]["mode"] = "9dof"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(
        UnsupportedConfigError, match="'9dof'.*supported: 3dof, 7dof, 7dof_unscaled, 7dof_quantile_scale"
    ):
        load_model("random", str(tmp_path / "bad.yaml"))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_checkpoint_is_a_clear_error(tmp_path, damage):
    from zeronvs_diffusion import load_model
    from zeronvs_diffusion.errors import CheckpointError

    fixture = require_shared("fixtures", "zeronvs_tiny")
    data = (fixture / "model.ckpt").read_bytes()
    bad = {"truncated": data[: len(data) // 2], "garbage": os.urandom(4096), "empty": b""}[damage]
    path = tmp_path / "model.ckpt"
    path.write_bytes(bad)
    with pytest.raises(CheckpointError, match="truncated or corrupt|empty|not a readable"):
        load_model(str(path), str(fixture / "config.yaml"))


def test_truncated_converted_folder_is_a_clear_error(tmp_path, tiny):
    from zeronvs_diffusion import load_model
    from zeronvs_diffusion.errors import CheckpointError

    tiny.save_pretrained(str(tmp_path / "m"))
    reloaded = load_model(str(tmp_path / "m"))
    assert torch.equal(reloaded.unet.conv_in.weight, tiny.unet.conv_in.weight)
    weights = tmp_path / "m" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(str(tmp_path / "m"))
    shutil.rmtree(tmp_path / "m" / "vae")
    with pytest.raises(CheckpointError, match="incomplete converted model.*vae"):
        load_model(str(tmp_path / "m"))


def test_convert_cli(tmp_path, capsys):
    from zeronvs_diffusion.convert import main

    out = ["--config", str(TINY_YAML), "--out", str(tmp_path / "o")]
    assert main(["--ckpt", str(tmp_path / "zeronvs.ckpt"), *out]) == 2
    assert "download zeronvs.ckpt" in capsys.readouterr().err  # the release's file: where to get it
    assert main(["--ckpt", str(tmp_path / "nope.ckpt"), *out]) == 2
    err = capsys.readouterr().err
    assert "nope.ckpt" in err and "download" not in err  # another file: named, no download advice
    assert not (tmp_path / "o").exists()
    fixture = require_shared("fixtures", "zeronvs_tiny")
    args = [
        "--ckpt",
        str(fixture / "model.ckpt"),
        "--config",
        str(fixture / "config.yaml"),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(args + ["--dtype", "fp16"]) == 0
    from safetensors import safe_open

    with safe_open(str(tmp_path / "o" / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert f.get_tensor("conv_in.weight").dtype == torch.float16
    assert main(args) == 2  # refuses to overwrite without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".convert-")] == []


class NotAllowListed(dict):
    """A harmless class outside the loader's allow-list (loading it needs full unpickling)."""


def test_lightning_pickle_with_hyper_parameters_loads_without_full_unpickling(tmp_path, caplog):
    import argparse
    import logging

    from zeronvs_diffusion.checkpoint import read_state_dict
    from zeronvs_diffusion.errors import CheckpointError

    fixture = require_shared("fixtures", "zeronvs_tiny")
    state = torch.load(fixture / "model.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    small = {k: v for k, v in list(state.items())[:4]}
    # allow-listed: argparse.Namespace (ldm's main.py), loaded with weights_only=True
    torch.save({"state_dict": small, "hyper_parameters": argparse.Namespace(lr=1e-4)}, tmp_path / "l.ckpt")
    loaded = read_state_dict(str(tmp_path / "l.ckpt"))
    assert loaded.keys() == small.keys() and all(torch.equal(loaded[k], small[k]) for k in small)
    # anything else needs the explicit opt-in, which warns about what it risks
    torch.save({"state_dict": small, "extra": NotAllowListed(a=1)}, tmp_path / "c.ckpt")
    with pytest.raises(CheckpointError, match="trust_checkpoint=true"):
        read_state_dict(str(tmp_path / "c.ckpt"))
    with caplog.at_level(logging.WARNING, logger="zeronvs_diffusion.torch_load"):
        loaded = read_state_dict(str(tmp_path / "c.ckpt"), trust=True)
    assert "full unpickling" in caplog.text and loaded.keys() == small.keys()
