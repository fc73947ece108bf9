"""No system key is accepted and ignored: every leaf key of a shipped config's ``system`` section, changed, either
changes something the built system produces or is refused with an error. What is compared, seeded, in two stages
(the second only when the first shows no difference, to keep the walk short):

1. the built system: its modules' initial parameters, the optimizers' param groups (the proposal network's own
   too) and the lr scheduler after a few steps, a render of a tiny view at the config's interesting steps, and the
   exported mesh;
2. one training step's loss terms (the guidance loaded, with the tiny random diffusion model; the datamodule's
   training batch of that step) at those steps.

The walk is over the config's own keys (see tests/test_key_effects.py for the data keys), so a key added to a shipped
config later is checked too. Keys whose effect by design cannot show on a CPU in one step are listed in
``BY_DESIGN`` with the reason."""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch
from system_steps import ROOT, build, training_batch, training_losses
from test_key_effects import changed, flatten, leaves, same

import threestudio
from threestudio.utils.config import config_to_primitive, load_config
from threestudio.utils.errors import UserError

pytestmark = pytest.mark.slow

TINY_MODEL = ["system.guidance.pretrained_model_name_or_path=random",
              f"system.guidance.pretrained_config={ROOT / 'configs' / 'diffusion_tiny.yaml'}"]
TINY_VIEWS = ["data.height=16", "data.width=16", "data.random_camera.height=16", "data.random_camera.width=16",
              "data.random_camera.batch_size=1", "data.random_camera.eval_height=8", "data.random_camera.eval_width=8"]
TINY_NERF = ["system.geometry.pos_encoding_config.n_levels=4",
             "system.geometry.pos_encoding_config.log2_hashmap_size=10",
             "system.renderer.proposal_network_config.encoding_config.log2_hashmap_size=10",
             "system.exporter.resolution=16", "system.renderer.num_samples_per_ray=8",
             "system.renderer.num_samples_per_ray_proposal=8"]
STAGED = ["data.height=[16,16]", "data.width=[16,16]", "data.random_camera.height=[16,16]",
          "data.random_camera.width=[16,16]", "data.random_camera.batch_size=[1,1]",
          "data.random_camera.eval_height=8", "data.random_camera.eval_width=8"]
CASES = {
    "smoke.yaml": [*TINY_VIEWS, *TINY_NERF],
    # anchoring walked with 4 DDIM steps for its anchors instead of ZeroNVS's 500 (the key is then walked too)
    "zeronvs.yaml": [*STAGED, *TINY_NERF, *TINY_MODEL, "system.exporter.threshold=auto",
                     "system.guidance.anchor_ddim_steps=4"],
    # + data.scene.scene_dir: DTU scan 24 from ../shared (the test skips without it, fails under CI=true)
    "zeronvs_dtu.yaml": ["data.height=[12,12]", "data.width=[16,16]", *STAGED[2:5], "data.random_camera.eval_height=6",
                         "data.random_camera.eval_width=8", "data.scene.target_views=[31]", *TINY_NERF, *TINY_MODEL,
                         "system.exporter.threshold=auto"],
}
# the DTU config's system section is the paper config's with a few protocol values: only the keys whose value differs
# from zeronvs.yaml's are walked there (the others are walked on zeronvs.yaml, with the same system)
WALKED_WITH = {"zeronvs_dtu.yaml": ("zeronvs.yaml", CASES["zeronvs.yaml"])}
# keys whose effect by design does not show in this walk (CPU, one step from a fresh system), with the reason
BY_DESIGN = {
    "system.guidance.input_selection": "acts with several input views only (zeronvs_dtu.yaml's --views 3/6/9 runs; "
                                       "one input conditions every sample): test_zeronvs_guidance.py checks both rules",
    "system.fast_paths": "picks Triton/tiny-cuda-nn on CUDA only; the same numbers by design (test_triton_kernels.py)",
    "system.renderer.grad_checkpoint_chunk_size": "memory only: the same gradients by design (test_recompute.py)",
    "system.guidance.vae_gradient_checkpointing": "memory only: the same gradients (test_zeronvs_guidance.py)",
    "system.guidance.half_precision_weights": "the CPU always computes in fp32; bf16/fp16 on CUDA only",
    "system.guidance.trust_checkpoint": "acts only on a .ckpt that needs full unpickling (test_trial_safety.py)",
    "system.max_nonfinite_steps": "acts only on NaN/inf steps (test_hostile_trials.py)",
    "system.export_after_train": "the runner's --train ends with an export (test_pipeline.py)",
    "system.test_video_fps": "the test pass's video only (test_pipeline.py)",
    "system.exporter.remove_outliers": "acts only on meshes with small detached components, which an untrained "
                                       "field's mesh lacks (test_geometry_export.py: a sphere and two specks)",
    "system.exporter.outlier_n_faces_threshold": "as remove_outliers (test_geometry_export.py: fractions and counts)",
    "system.material.textureless_prob": "a per-step probability (threestudio's random shading): one seeded step "
                                        "draws one shading, so a change shows only over many steps",
}
# anchoring keys act only with anchors (n_aux_c2w > 0): checked with anchoring on
NEEDS = {key: ["system.guidance.n_aux_c2w=1"] for key in (
    "system.guidance.anchor_ddim_steps", "system.guidance.anchor_ddim_eta", "system.guidance.anchor_guidance_scale",
    "system.guidance.seed", "system.guidance.guidance_scale_aux", "system.guidance.p_use_aux_cameras")}


class CachedModels:
    """The tiny random diffusion model loaded once per (path, config); each guidance gets its own copy."""

    def __init__(self):
        import zeronvs_diffusion.sources as sources

        self.sources, self.load, self.cache = sources, sources.load_prior, {}

    def __enter__(self):
        def cached(path, config=None, **kwargs):
            key = (str(path), str(config))
            if key not in self.cache:
                self.cache[key] = self.load(path, config=config, **kwargs)
            return copy.deepcopy(self.cache[key])

        self.sources.load_prior = cached
        return self

    def __exit__(self, *exc):
        self.sources.load_prior = self.load


def changed_value(value: Any) -> Any:
    """:func:`test_key_effects.changed`, except that a schedule ``[start_step, start, end, end_step]`` gets another
    end value (a later start step would show only between the two start steps; a probability's end value in [0, 1]
    becomes its complement)."""
    if isinstance(value, list) and len(value) == 4 and all(isinstance(v, (int, float)) for v in value):
        end = value[2]
        # a probability or a percentage: its complement (0 → 1), a change that a seeded draw cannot hide
        return [value[0], value[1], 1.0 - end if 0.0 <= end <= 1.0 else changed(end), value[3]]
    return changed(value)


def interesting_steps(system: Dict[str, Any]) -> List[int]:
    """0, far beyond everything, and the step-valued numbers of the system section (schedule ends, *_steps)."""
    steps = {0, 10**7}
    for key, value in leaves(system, "system"):
        name = key.rsplit(".", 1)[-1]
        if isinstance(value, int) and not isinstance(value, bool) and ("step" in name or "until" in name):
            steps.update({value, value + 1})
        if isinstance(value, list) and len(value) == 4 and all(isinstance(v, (int, float)) for v in value):
            steps.update({int(value[0]), int(value[3]), (int(value[0]) + int(value[3])) // 2})
    return sorted(s for s in steps if s >= 0)


def view_batch(datamodule: Any) -> Dict[str, Any]:
    return next(iter(datamodule.val_dataloader()))


def built_fingerprint(cfg: Any, datamodule: Any, steps: List[int]) -> List[Any]:
    """Stage 1: what the built system holds and renders (no diffusion model)."""
    torch.manual_seed(0)
    system = threestudio.find(cfg.system_type)(cfg.system)
    out: List[Any] = [system.state_dict()]
    opt = system.configure_optimizers()
    optimizer, scheduler = opt, None
    if isinstance(opt, dict):
        optimizer, scheduler = opt["optimizer"], opt["lr_scheduler"]["scheduler"]
    # the main optimizer and the proposal network's own (ZeroNVS's; None without prop_optimizer_config)
    for each in (optimizer, getattr(system, "proposal_optimizer", None)):
        if each is not None:
            out.append(type(each).__name__)
            out += [{k: v for k, v in g.items() if k != "params"} for g in each.param_groups]
            out += [len(g["params"]) for g in each.param_groups]
    if scheduler is not None:
        for _ in range(3):
            optimizer.step()
            scheduler.step()
        out.append(scheduler.get_last_lr())
    batch = view_batch(datamodule)
    system.eval()  # as validation renders (no random background)
    with torch.no_grad():
        for step in steps:
            system.set_global_step(step)
            system.do_update_step(0, step)
            torch.manual_seed(0)
            render = system(batch)
            out.append({k: render[k] for k in ("comp_rgb", "depth", "opacity", "comp_normal") if k in render})
    with tempfile.TemporaryDirectory() as folder:
        out += [Path(path).read_bytes() for path in sorted(export(system, folder))]
    return list(flatten(out))


def export(system: Any, folder: str) -> List[str]:
    exporter = threestudio.find(system.cfg.exporter_type)(system.cfg.exporter, system.geometry, system.material)
    return exporter.export(folder)


def step_fingerprint(config: str, overrides: List[str], steps: List[int]) -> List[Any]:
    """Stage 2: one training step's loss terms at each interesting step (the guidance loaded)."""
    torch.manual_seed(0)
    _, datamodule, system = build(config, overrides)
    out = []
    for step in steps:
        terms = training_losses(system, training_batch(datamodule, step), step=step)
        out.append({k: v.detach() for k, v in terms.items()})
    return list(flatten(out))


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_system_key_changes_the_system_or_is_refused(name):
    overrides = CASES[name]
    if name == "zeronvs_dtu.yaml":
        from conftest import require_shared

        overrides = [*overrides, f"data.scene.scene_dir={require_shared('data', 'dtu', 'dtu_scan24')}"]
    cfg = load_config(str(ROOT / "configs" / name), cli_args=overrides)
    system_keys = config_to_primitive(cfg.system)
    steps = interesting_steps(system_keys)
    with CachedModels():
        _, datamodule, _ = build(name, overrides, mode="validate")
        base_built = built_fingerprint(cfg, datamodule, steps)
        assert same(base_built, built_fingerprint(cfg, datamodule, steps))  # deterministic
        base_steps: Dict[tuple, List[Any]] = {}
        ignored, unchecked, decided = [], [], {}
        walked_already = dict(leaves(config_to_primitive(load_config(
            str(ROOT / "configs" / WALKED_WITH[name][0]), cli_args=WALKED_WITH[name][1]).system), "system")) \
            if name in WALKED_WITH else {}
        for key, value in leaves(system_keys, "system"):
            new = changed_value(value)
            if key in BY_DESIGN or walked_already.get(key, object()) == value:
                continue
            if new is None:
                unchecked.append(key)
                continue
            extra = NEEDS.get(key, [])
            edit = f"{key}={new!r}".replace("'", '"')
            try:
                edited = load_config(str(ROOT / "configs" / name), cli_args=[*overrides, *extra, edit])
                if not extra and not same(base_built, built_fingerprint(edited, datamodule, steps)):
                    decided[key] = "built"
                    continue
                if tuple(extra) not in base_steps:
                    base_steps[tuple(extra)] = step_fingerprint(name, [*overrides, *extra], steps)
                result = step_fingerprint(name, [*overrides, *extra, edit], steps)
            except (UserError, ValueError, RuntimeError) as e:  # refused (ConfigError is a UserError)
                decided[key] = f"refused: {str(e).splitlines()[0][:100]}"
                continue
            if same(base_steps[tuple(extra)], result):
                ignored.append(f"{key}: {value!r} → {new!r}")
            else:
                decided[key] = "step"
    if os.environ.get("KEY_EFFECTS_VERBOSE"):
        print("\n".join(f"{k}: {v}" for k, v in decided.items()))
    assert not ignored, "system keys accepted and ignored:\n" + "\n".join(ignored)
    assert len(unchecked) <= 4, unchecked  # null-valued keys have no value kind to change to
