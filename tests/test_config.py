"""Config parsing, schedules, the registry and trial-folder naming."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import threestudio
from threestudio.utils.config import load_config, parse_structured, safe_folder_name
from threestudio.utils.errors import ConfigError, UserError
from threestudio.utils.schedule import C

ROOT = Path(__file__).resolve().parents[1]


def test_schedule_linear_interpolation():
    sched = [1000, 0.98, 0.025, 2500]
    assert C(sched, 0, 0) == pytest.approx(0.98)
    assert C(sched, 0, 1000) == pytest.approx(0.98)
    assert C(sched, 0, 1750) == pytest.approx((0.98 + 0.025) / 2)
    assert C(sched, 0, 2500) == pytest.approx(0.025)
    assert C(sched, 0, 10_000) == pytest.approx(0.025)
    assert C([0.75, 0.02, 1000], 0, 500) == pytest.approx((0.75 + 0.02) / 2)  # start step 0
    assert C(0.3, 0, 123) == 0.3
    assert C([5, 1.0, 2.0, 5], 0, 4) == 1.0 and C([5, 1.0, 2.0, 5], 0, 5) == 2.0


def test_schedule_rejects_bad_shapes():
    with pytest.raises(ConfigError):
        C([1, 2], 0, 0)
    with pytest.raises(ConfigError):
        C("abc", 0, 0)


@dataclass
class _Inner:
    lr: float = 0.1


@dataclass
class _Outer:
    inner: _Inner = field(default_factory=_Inner)
    steps: int = 3
    extra: dict = field(default_factory=dict)


def test_parse_structured_names_unknown_and_mistyped_keys():
    cfg = parse_structured(_Outer, {"steps": 5, "inner": {"lr": 0.5}})
    assert cfg.steps == 5 and cfg.inner.lr == 0.5
    with pytest.raises(ConfigError, match=r"'stpes'.*valid keys here: inner, steps, extra"):
        parse_structured(_Outer, {"stpes": 5})
    with pytest.raises(ConfigError, match=r"steps"):
        parse_structured(_Outer, {"steps": "many"})
    with pytest.raises(ConfigError, match=r"lrr"):
        parse_structured(_Outer, {"inner": {"lrr": 1.0}})


def test_load_config_trial_folder_and_overrides(tmp_path):
    yaml = tmp_path / "exp.yaml"
    yaml.write_text(
        "name: demo\ntag: 'a b[1]'\nexp_root_dir: ROOT\ndata_type: x\nsystem_type: y\n".replace("ROOT", str(tmp_path))
    )
    cfg = load_config(str(yaml), cli_args=["use_timestamp=false", "seed=7", "system.loss.lambda_sds=[0,1.0,0.5,10]"])
    assert cfg.seed == 7
    assert list(cfg.system.loss.lambda_sds) == [0, 1.0, 0.5, 10]
    assert cfg.trial_dir == str(tmp_path / "demo" / "a_b_1")
    cfg2 = load_config(str(yaml))
    assert cfg2.trial_name.startswith("a_b_1@") and len(cfg2.trial_name) == len("a_b_1@YYYYmmdd-HHMMSS")
    with pytest.raises(ConfigError, match="nmae"):
        load_config(str(yaml), cli_args=["nmae=x"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(str(yaml), cli_args=["seed"])
    with pytest.raises(UserError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))


def test_safe_folder_name():
    assert safe_folder_name("[128, 256]_skimage:motorcycle_left") == "128_256_skimage_motorcycle_left"
    assert safe_folder_name("  ") == "default"


def test_registry_lists_valid_names_on_typo():
    with pytest.raises(ConfigError, match="implicit-volume"):
        threestudio.find("implicit-volumee")


def test_registry_table_matches_registrations():
    """Every name in the lazy table is registered by the module it points to."""
    for name in threestudio._COMPONENT_MODULES:
        try:
            cls = threestudio.find(name)
        except ModuleNotFoundError as e:  # pragma: no cover - only while a part is unwritten
            pytest.fail(f"{name}: module missing ({e})")
        assert isinstance(cls, type)


@pytest.mark.slow
def test_import_is_light_and_needs_no_cuda_packages():
    code = (
        "import sys, threestudio; "
        "heavy = [m for m in ('torch', 'lightning', 'diffusers', 'tinycudann', 'nerfacc') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
    code = (
        "import sys, threestudio\n"
        "for n in threestudio._COMPONENT_MODULES: threestudio.find(n)\n"
        "print(','.join(m for m in ('tinycudann', 'nerfacc') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.slow
def test_diffusion_package_stands_alone():
    """zeronvs_diffusion imports nothing of threestudio; its errors are threestudio's UserError/ConfigError."""
    code = (
        "import sys, zeronvs_diffusion.model, zeronvs_diffusion.convert, zeronvs_diffusion.sampling\n"
        "print(','.join(m for m in sys.modules if m.split('.')[0] == 'threestudio'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
    from threestudio.utils.errors import ConfigError, UserError
    from zeronvs_diffusion.errors import CheckpointError, UnsupportedConfigError

    assert issubclass(CheckpointError, UserError) and issubclass(UnsupportedConfigError, ConfigError)


@pytest.mark.parametrize("key", ["trial_dir", "exp_dir", "trial_name", "n_gpus"])
def test_derived_keys_on_the_command_line_are_refused(key):
    """Once silently overwritten by load_config; now one line saying what to set instead."""
    with pytest.raises(ConfigError, match=rf"{key} cannot be set: it is"):
        load_config(str(ROOT / "configs" / "smoke.yaml"), cli_args=[f"{key}=x"])


def test_only_render_keys_reach_the_renderer():
    """A stray batch key (e.g. `shading`, `ambient_ratio`) used to flow through renderer(**batch) into the material."""
    from types import SimpleNamespace

    from threestudio.systems.base import BaseLift3DSystem

    fake = SimpleNamespace(renderer=lambda **kwargs: kwargs, RENDER_KEYS=BaseLift3DSystem.RENDER_KEYS)
    batch = {"rays_o": 1, "rays_d": 2, "light_positions": 3, "shading": "textureless", "ambient_ratio": 1.0, "c2w": 4}
    assert BaseLift3DSystem.forward(fake, batch) == {"rays_o": 1, "rays_d": 2, "light_positions": 3}
