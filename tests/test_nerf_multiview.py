"""The multi-view NeRF system: a short fit on a few DTU views must beat its untrained held-out PSNR by far."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TRAIN_VIEWS = [22, 23, 24, 25, 26, 27, 29, 30, 31, 32, 33, 34]
TEST_VIEWS = [28]


def tiny_overrides(root: Path, scene: Path, *extra: str) -> list:
    return [
        f"exp_root_dir={root}", "use_timestamp=false", "tag=tiny",
        f"data.scene_dir={scene}", f"data.input_views={TRAIN_VIEWS}", f"data.target_views={TEST_VIEWS}",
        "data.height=30", "data.width=40", "data.train_rays_per_batch=512", "data.n_val_views=1",
        "system.fast_paths=off",
        "system.geometry.pos_encoding_config.n_levels=8", "system.geometry.pos_encoding_config.log2_hashmap_size=14",
        "system.geometry.pos_encoding_config.per_level_scale=1.5", "system.geometry.mlp_network_config.n_neurons=32",
        "system.renderer.num_samples_per_ray=16", "system.renderer.num_samples_per_ray_proposal=32",
        "system.exporter.resolution=24", "system.test_video_fps=1",
        "trainer.num_sanity_val_steps=0", "trainer.enable_model_summary=false",
        *extra,
    ]


def run(mode: str, *overrides: str, config: str = str(ROOT / "configs" / "nerf_multiview.yaml")) -> str:
    from threestudio.runner import run as runner_run

    return runner_run(config, mode, list(overrides))


def held_out_psnr(trial: str) -> float:
    with open(os.path.join(trial, "save", "metrics.json")) as f:
        metrics = json.load(f)
    assert [v["target"] for v in metrics["per_view"]] == TEST_VIEWS
    return metrics["psnr"]


def test_weighted_mse_uses_per_ray_weights():
    from threestudio.utils.loss import weighted_mse

    pred = torch.zeros(1, 1, 4, 3)
    target = torch.tensor([1.0, 1.0, 0.0, 0.0])[None, None, :, None].expand(1, 1, 4, 3)
    assert weighted_mse(pred, target, None).item() == pytest.approx(0.5)
    weight = torch.tensor([1.0, 1.0, 0.5, 0.5])[None, None, :, None]
    assert weighted_mse(pred, target, weight).item() == pytest.approx(2.0 / 3.0)
    assert weighted_mse(pred, target, torch.zeros_like(weight)).item() == 0.0


@pytest.mark.slow
def test_short_fit_raises_held_out_psnr_and_exports(tmp_path, dtu_scan24):
    untrained = run("test", *tiny_overrides(tmp_path / "untrained", dtu_scan24))
    psnr_before = held_out_psnr(untrained)
    trial = run("train", *tiny_overrides(tmp_path / "fit", dtu_scan24, "trainer.max_steps=100",
                                         "trainer.val_check_interval=100"))
    psnr_after = held_out_psnr(trial)
    assert psnr_after > psnr_before + 5.0, (psnr_before, psnr_after)
    assert psnr_after > 15.0, psnr_after
    frames = sorted(Path(trial, "save", "it100-test").glob("*.png"))
    assert [f.name for f in frames] == [f"{i:04d}.png" for i in TEST_VIEWS]
    assert Path(trial, "save", "it100-test.mp4").is_file()
    state = torch.load(Path(trial, "ckpts", "last.ckpt"), map_location="cpu", weights_only=True)
    assert state["global_step"] == 100

    run("export", f"resume={trial}/ckpts/last.ckpt", config=str(Path(trial, "configs", "parsed.yaml")))
    assert Path(trial, "save", "it100-export", "model.obj").is_file()


@pytest.mark.slow
def test_sds_option_trains_without_saving_the_diffusion_model(tmp_path, dtu_scan24):
    trial = run(
        "train",
        *tiny_overrides(
            tmp_path, dtu_scan24, "data.input_views=[25]", "data.canonicalize=true", "data.pose_scale=0.495",
            "data.train_rays_per_batch=128", "system.renderer.near_plane=0.05",
            "system.loss.lambda_sds=0.1", "system.loss.lambda_opaque=0.1",
            "system.guidance.pretrained_model_name_or_path=random",
            f"system.guidance.pretrained_config={ROOT / 'configs' / 'diffusion_tiny.yaml'}",
            "system.guidance.precomputed_scale=0.7",
            "system.random_camera.height=32", "system.random_camera.width=32",
            "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.log_every_n_steps=1",
        ),
    )
    state = torch.load(Path(trial, "ckpts", "last.ckpt"), map_location="cpu", weights_only=True)
    assert state["global_step"] == 2
    assert not any("unet" in k or k.startswith("_guidance") for k in state["state_dict"]), "guidance weights leaked"
    logged = Path(trial, "csv_logs", "metrics.csv").read_text()
    assert "train/loss_sds" in logged and "train/loss_rgb" in logged
    assert held_out_psnr(trial) > 0


def test_sds_needs_the_canonical_frame(tmp_path, dtu_scan24):
    from threestudio.utils.errors import ConfigError

    with pytest.raises(ConfigError, match="canonicalize"):
        run("train", *tiny_overrides(tmp_path, dtu_scan24, "system.loss.lambda_sds=0.1",
                                     "system.guidance.pretrained_model_name_or_path=random",
                                     f"system.guidance.pretrained_config={ROOT / 'configs' / 'diffusion_tiny.yaml'}",
                                     "system.guidance.precomputed_scale=0.7"))
    assert not (tmp_path / "nerf_multiview").exists()
