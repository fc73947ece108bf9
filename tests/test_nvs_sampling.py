"""nvs-system in process on the tiny ZeroNVS fixture: its images are sample_views' and do not depend on batching."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import threestudio
from threestudio.utils.config import load_config
from threestudio.utils.image import load_image

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "zeronvs_nvs_image.yaml")
N_TARGETS = 3


def overrides(root: Path, model_dir: Path, *extra: str) -> list:
    return [
        f"exp_root_dir={root}", "use_timestamp=false",
        f"system.diffusion_model.pretrained_model_name_or_path={model_dir / 'model.ckpt'}",
        f"system.diffusion_model.pretrained_config={model_dir / 'config.yaml'}",
        "data.image_path=skimage:motorcycle_left", f"data.orbit.n_views={N_TARGETS}", "data.height=32", "data.width=32",
        "system.sampling.steps=2", "system.sampling.eta=0.0", "system.sampling.seed=3", "system.contact_sheet=false",
        *extra,
    ]  # fmt: skip


def generated(root: Path, model_dir: Path, targets_per_batch: int) -> torch.Tensor:
    """(N, 32, 32, 3) images that a --test run wrote, sampling ``targets_per_batch`` targets per pass."""
    from threestudio.runner import run

    tag = f"tpb{targets_per_batch}"
    trial = run(CONFIG, "test", overrides(root, model_dir, f"tag={tag}",
                                          f"system.sampling.targets_per_batch={targets_per_batch}"))  # fmt: skip
    paths = [Path(trial) / "save" / "nvs" / f"target_{i:03d}.png" for i in range(N_TARGETS)]
    return torch.stack([load_image(str(path))[..., :3] for path in paths])


@pytest.mark.slow  # two runs through the runner, then the sampler directly
def test_nvs_images_are_sample_views_and_independent_of_batching(tmp_path, zeronvs_tiny_dir):
    import zeronvs_diffusion

    one, three = generated(tmp_path, zeronvs_tiny_dir, 1), generated(tmp_path, zeronvs_tiny_dir, 3)
    assert one.shape == (N_TARGETS, 32, 32, 3)
    # eta 0: no noise beyond each target's own initial latent, so batching changes nothing (PNG rounding aside)
    torch.testing.assert_close(one, three, atol=1.01 / 255, rtol=0)

    # the same views from a direct sample_views call: target i starts from the latent of seed 3 + i
    cfg = load_config(CONFIG, cli_args=overrides(tmp_path, zeronvs_tiny_dir))
    datamodule = threestudio.find(cfg.data_type)(cfg.data)
    datamodule.setup("test")
    cond = datamodule.conditioning()
    model = zeronvs_diffusion.load_model(
        str(zeronvs_tiny_dir / "model.ckpt"), config=str(zeronvs_tiny_dir / "config.yaml"), dtype=torch.float32
    )
    size = model.unet.config.sample_size
    x_T = torch.stack(
        [torch.randn(model.latent_channels, size, size, generator=torch.Generator().manual_seed(3 + i))
         for i in range(N_TARGETS)]
    )  # fmt: skip
    src = datamodule.cond_index
    with torch.no_grad():
        direct = zeronvs_diffusion.sample_views(
            model, cond["images"][src], cond["c2w"][src], datamodule.targets.c2w.float(), cond["fov_deg"][src],
            cfg.system.diffusion_model.precomputed_scale, steps=2, eta=0.0,
            guidance_scale=cfg.system.diffusion_model.guidance_scale,
            x_T=x_T,
        ).permute(0, 2, 3, 1)  # fmt: skip
    assert direct.shape == one.shape
    torch.testing.assert_close(one, direct, atol=1.01 / 255, rtol=0)
    assert (direct[0] - direct[1]).abs().max() > 0.02  # different targets give different views


@pytest.mark.parametrize("eta", [1.5, -0.1])
def test_sampling_eta_outside_unit_interval_is_refused(eta):
    from threestudio.utils.errors import ConfigError

    cfg = load_config(CONFIG, cli_args=["data.image_path=unused.png", f"system.sampling.eta={eta}"])
    with pytest.raises(ConfigError, match="eta"):
        threestudio.find(cfg.system_type)(cfg.system)
