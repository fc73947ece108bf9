"""Both model sources implement :class:`zeronvs_diffusion.prior.DiffusionPrior` (without subclassing each other),
the guidance and the samplers use nothing of a model outside it, and the oracle does not import the released
model's module."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from threestudio.utils.camera import orbit_c2w
from zeronvs_diffusion.model import ZeroNVSModel, load_model
from zeronvs_diffusion.oracle import OracleModel, load_oracle
from zeronvs_diffusion.prior import INTERFACE, DiffusionPrior

ROOT = Path(__file__).resolve().parents[1]
# the callers of a prior, and the names they hold it under
CALLERS = {
    "threestudio/models/guidance/zeronvs_guidance.py": ("model",),
    "zeronvs_diffusion/sampling.py": ("model",),
    "threestudio/systems/nvs.py": ("_model",),
    "scripts/preview.py": ("model",),
}
NN_MODULE_USE = {"to", "eval", "requires_grad_"}


def used_model_attributes(path: Path, names: tuple) -> set:
    """Attributes read off ``model`` / ``self.model`` (or the given names) in the file at ``path``."""
    used = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Attribute):
            continue
        holder = node.value
        if isinstance(holder, ast.Name) and holder.id in names:
            used.add(node.attr)
        elif isinstance(holder, ast.Attribute) and holder.attr in names and isinstance(holder.value, ast.Name) \
                and holder.value.id == "self":
            used.add(node.attr)
    return used


def test_callers_use_only_the_interface():
    for relative, names in CALLERS.items():
        used = used_model_attributes(ROOT / relative, names)
        assert used, f"{relative}: no use of {names} found (has the caller moved?)"
        outside = used - set(INTERFACE) - NN_MODULE_USE
        assert not outside, f"{relative} reaches past DiffusionPrior: {sorted(outside)}"


def test_both_sources_implement_the_interface_without_subclassing_each_other():
    for cls in (ZeroNVSModel, OracleModel):
        assert issubclass(cls, DiffusionPrior) and not cls.__abstractmethods__, cls
        assert all(hasattr(cls, name) for name in INTERFACE if name not in ("scheduler", "conditioning"))
    assert not issubclass(OracleModel, ZeroNVSModel) and not issubclass(ZeroNVSModel, OracleModel)
    assert DiffusionPrior.__abstractmethods__ >= {"predict_eps", "project", "clip_embed", "latent_size"}


@pytest.mark.slow  # a fresh interpreter
def test_oracle_does_not_import_the_released_model():
    code = "import sys, zeronvs_diffusion.oracle, zeronvs_diffusion.prior; " \
           "print('zeronvs_diffusion.model' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_oracle_prior_works_through_the_interface(tmp_path):
    spec = yaml.safe_load((ROOT / "configs/oracle_scenes/two_primitives.yaml").read_text())
    c2w = orbit_c2w(torch.tensor([31.0]), torch.tensor([0.0]), torch.tensor([1.0]))
    spec.update(input_camera={"c2w": c2w[0].tolist(), "fov_deg": 50.0}, resolution=16)
    (tmp_path / "world.yaml").write_text(yaml.safe_dump(spec))
    model: DiffusionPrior = load_oracle(str(tmp_path / "world.yaml"))
    assert model.latent_size == (16, 16) and model.latent_channels == 3 and model.dtype == torch.float32
    image = ((model.decode(model.render_latents(c2w, torch.tensor([50.0]))) + 1) / 2).permute(0, 2, 3, 1)
    c_cross, c_concat = model.conditionings(image, c2w, c2w, 50.0, model.scale)
    assert c_cross.shape == (1, 1, 3 + 19) and c_concat.shape == (1, 3, 16, 16)
    x0 = model.encode_latents(image)
    eps = torch.randn_like(x0)
    alpha_bar = model.scheduler.alphas_cumprod[500]
    x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
    assert (model.predict_eps(x_t, 500, c_cross, c_concat) - eps).abs().max() < 1e-3  # the input view is exact


def test_released_model_latent_size():
    model: DiffusionPrior = load_model("random", config=str(ROOT / "configs" / "diffusion_tiny.yaml"))
    assert model.latent_size == (16, 16) and model.latent_channels == 4  # the tiny YAML's 16×16×4 latents
