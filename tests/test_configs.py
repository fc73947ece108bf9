"""Every shipped config parses: its system and each component's section match their dataclass Configs."""

from __future__ import annotations

from pathlib import Path

import pytest

import threestudio
from threestudio.utils.config import config_to_primitive, load_config, parse_structured
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
    assert type(system) is threestudio.find(cfg.system_type)
    written = config_to_primitive(cfg.system)
    assert_written_values_kept(config_to_primitive(system.cfg), written, "system")
    for part in ("geometry", "material", "background", "renderer"):  # each built component holds its section
        if part in written:
            assert_written_values_kept(config_to_primitive(getattr(system, part).cfg), written[part], f"system.{part}")
    guidance_type = getattr(system.cfg, "guidance_type", None)
    if guidance_type and "guidance" in cfg.system:
        parsed = parse_structured(threestudio.find(guidance_type).Config, cfg.system.guidance)
        assert_written_values_kept(config_to_primitive(parsed), written["guidance"], "system.guidance")


# the data keys a shipped config leaves to the command line (building a datamodule reads no image pixels)
DATA_REQUIRED = {"nerf_multiview.yaml": ["data.scene_dir=unused"], "zeronvs_nvs.yaml": ["data.scene_dir=unused"]}


@pytest.mark.parametrize(
    "name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml") if p.name not in NOT_PIPELINES)
)
def test_shipped_config_builds_its_datamodule(name, tmp_path):
    """The data section parses and passes the datamodule's checks (its files are read later, in setup)."""
    # (the single-image configs' default_fovy_deg: auto reads the image's EXIF: give them a real image)
    required = DATA_REQUIRED.get(name, ["data.image_path=skimage:motorcycle_left"])
    if name == "zeronvs_dtu.yaml":  # its input image and fov come from the scan's files
        from conftest import require_shared

        required = [f"data.scene.scene_dir={require_shared('data', 'dtu', 'dtu_scan24')}"]
    if name == "zeronvs_mipnerf360.yaml":  # its input view, fov and elevation come from the scene's files
        from mipnerf360_scene import write_scene

        required = [f"data.scene.scene_dir={write_scene(tmp_path / 'scene')}", "data.scene.resolution=32"]
    cfg = load_config(str(ROOT / "configs" / name), cli_args=required)
    datamodule = threestudio.find(cfg.data_type)(cfg.data)
    assert_written_values_kept(config_to_primitive(datamodule.cfg), config_to_primitive(cfg.data), "data")


def assert_written_values_kept(parsed, written, where: str) -> None:
    """Every key written in the YAML holds the written value in the parsed config (nested sections too)."""
    if isinstance(written, dict):
        for key, value in written.items():
            assert key in parsed, f"{where}.{key}"
            assert_written_values_kept(parsed[key], value, f"{where}.{key}")
    elif isinstance(written, list):
        assert isinstance(parsed, list) and len(parsed) == len(written), where
        for k, (p, w) in enumerate(zip(parsed, written)):
            assert_written_values_kept(p, w, f"{where}[{k}]")
    elif written == "auto" and where.startswith("data"):  # resolved from the input when the datamodule is built
        assert isinstance(parsed, (int, float)) or (isinstance(parsed, list) and parsed), where
    elif where.endswith(".fast_paths") and written is False:  # YAML reads a bare `off` as false
        assert parsed == "off", where
    else:
        assert parsed == written, where


def test_paper_config_keeps_memory_savers_on():
    """The paper config must fit a 24 GB card (issue: ≤ 20 GB peak): its recomputation switches stay on."""
    cfg = load_config(str(ROOT / "configs" / "zeronvs.yaml"))
    assert cfg.system.renderer.grad_checkpoint_chunk_size > 0
    assert cfg.system.guidance.vae_gradient_checkpointing is True


@pytest.mark.parametrize("name", ["zeronvs_nvs.yaml"])
def test_unknown_unet_compile_mode_is_a_config_error(name):
    cli_args = ["data.image_path=unused.png", "system.diffusion_model.compile_unet=fast"]
    cfg = load_config(str(ROOT / "configs" / name), cli_args=cli_args)
    with pytest.raises(ConfigError, match="system.diffusion_model.compile_unet.*reduce-overhead"):
        threestudio.find(cfg.system_type)(cfg.system)


def test_nvs_system_refuses_its_old_guidance_section():
    """nvs-system's model section is system.diffusion_model (it samples a model, it has no guidance): the old name
    is refused with a one-line hint naming the new one."""
    cfg = load_config(str(ROOT / "configs" / "zeronvs_nvs.yaml"),
                      cli_args=["data.scene_dir=unused", "system.guidance.precomputed_scale=0.7"])
    with pytest.raises(ConfigError, match=r"^system.guidance was renamed: .*use system.diffusion_model \(same keys\)$"):
        threestudio.find(cfg.system_type)(cfg.system)


def test_guidance_section_is_checked_in_every_mode():
    """zeronvs-system parses system.guidance when it is built, not only when --train loads the model."""
    cfg = load_config(str(ROOT / "configs" / "smoke.yaml"), cli_args=["system.guidance.no_such_key=1"])
    with pytest.raises(ConfigError, match="guidance.no_such_key"):
        threestudio.find(cfg.system_type)(cfg.system)
    cfg = load_config(str(ROOT / "configs" / "smoke.yaml"), cli_args=["system.guidance.dtype=half"])
    with pytest.raises(ConfigError, match="dtype"):
        threestudio.find(cfg.system_type)(cfg.system)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["system.guidance.precomputed_scale=0.7"], "system.guidance .*lambda_sds"),
        (["system.random_camera.height=32"], "system.random_camera .*lambda_sds"),
        (["system.loss.lambda_sds=0.1", "system.guidance.precomputed_scale=0.7", "system.random_camera.bogus=1"],
         "random_camera.bogus"),
        (["system.loss.lambda_sds=0.1", "system.guidance.bogus=1"], "guidance.bogus"),
    ],
)
def test_multiview_sds_sections_are_checked_whatever_lambda_sds(overrides, match):
    """nerf-multiview parses system.guidance / system.random_camera with SDS on and refuses them with SDS off."""
    cfg = load_config(str(ROOT / "configs" / "nerf_multiview.yaml"), cli_args=["data.scene_dir=unused", *overrides])
    with pytest.raises(ConfigError, match=match):
        threestudio.find(cfg.system_type)(cfg.system)
