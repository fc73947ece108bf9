"""Every shipped config parses: its system and each component's section match their dataclass Configs."""

from __future__ import annotations

from pathlib import Path

import pytest

import threestudio
from threestudio.utils.config import load_config, parse_structured
from threestudio.utils.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
# configs that are not pipeline configs (the tiny latent-diffusion YAML)
NOT_PIPELINES = {"diffusion_tiny.yaml"}


@pytest.mark.parametrize(
    "name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml") if p.name not in NOT_PIPELINES)
)
def test_shipped_config_builds_its_system(name):
    """Building the system parses every component section (the diffusion model loads later, in setup); the guidance
    section, built only then, is parsed against its Config here."""
    cfg = load_config(str(ROOT / "configs" / name), cli_args=["data.image_path=unused.png"])
    threestudio.find(cfg.data_type)  # the datamodule is registered
    system = threestudio.find(cfg.system_type)(cfg.system)
    guidance_type = getattr(system.cfg, "guidance_type", None)
    if guidance_type and "guidance" in cfg.system:
        parse_structured(threestudio.find(guidance_type).Config, cfg.system.guidance)


def test_paper_config_keeps_memory_savers_on():
    """The paper config must fit a 24 GB card (issue: ≤ 20 GB peak): its recomputation switches stay on."""
    cfg = load_config(str(ROOT / "configs" / "zeronvs.yaml"))
    assert cfg.system.renderer.grad_checkpoint_chunk_size > 0
    assert cfg.system.guidance.vae_gradient_checkpointing is True


@pytest.mark.parametrize("name", ["zeronvs_nvs.yaml"])
def test_unknown_unet_compile_mode_is_a_config_error(name):
    cfg = load_config(
        str(ROOT / "configs" / name), cli_args=["data.image_path=unused.png", "system.guidance.compile_unet=fast"]
    )
    with pytest.raises(ConfigError, match="compile_unet.*reduce-overhead"):
        threestudio.find(cfg.system_type)(cfg.system)
