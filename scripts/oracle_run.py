"""Single-image SDS against the oracle prior of a known world, scored on a held-out orbit (``scripts/oracle_sds.py``).

:func:`run_oracle_sds` runs the production path through :func:`threestudio.runner.run` — its pre-write checks, trial
lock and trial layout (``OUT/oracle/<scene>@<time>/``), ``zeronvs-system``, ``single-image-datamodule``, its random
cameras, the guidance's timestep schedule and weighting, configs/zeronvs.yaml's system and camera ranges — with
``system.guidance.pretrained_model_name_or_path=oracle:WORLD``. The input image is the world rendered at the input
camera (``data.default_*``), so the distilled NeRF has a ground truth at every pose; :class:`OracleScore` scores the
NeRF on a held-out orbit when training ends. docs/GUIDANCE.md says what the oracle is and is not.

The config changes are one transform of the loaded config (:func:`oracle_config`), never over a key the user
overrides: by default a CPU-sized NeRF and resolution (:data:`CPU_SIZE`, ``--full-nerf`` keeps the config's NeRF and
resolution stages); every step-valued entry compressed by ``steps / trainer.max_steps`` (:func:`compress_steps`:
schedules in their 3- and 4-element forms, step counts and resolution milestones) so a short run passes through the
same phases as the 4000-step paper run; ``lambda_sds`` scaled by (config height / run height)² to keep the config's
per-pixel balance between the SDS sum and the pixel-mean losses; the world's background; no validation renders.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from omegaconf import OmegaConf
from torch import Tensor

logger = logging.getLogger(__name__)

TIMESTAMP_ENV = "THREESTUDIO_TRIAL_TIMESTAMP"  # the runner's (threestudio.runner._TIMESTAMP_ENV)

# step-valued entries of the pipeline config, compressed with the run length
SCHEDULE_KEYS = (  # a number or a schedule [start_step, v0, v1, end_step] / [v0, v1, end_step]
    "system.guidance.min_step_percent", "system.guidance.max_step_percent", "system.guidance.p_use_aux_cameras",
    "system.guidance.grad_clip",
)
STEP_KEYS = (  # a number of steps
    "system.guidance.anisotropic_offset", "data.random_camera.progressive_until", "system.freq.ref_only_steps",
    "system.material.ambient_only_steps",
)
MILESTONE_KEYS = ("data.resolution_milestones", "data.random_camera.resolution_milestones")  # lists of steps
LOSS_SECTION = "system.loss"  # every lambda_* may be a schedule
# held-out orbit: elevations and distances at these fractions of the training ranges (alternating per view);
# azimuths evenly all around, offset by half a step from the input view
ORBIT_FRACTIONS = (0.3, 0.6)

# CPU-sized run at H px (CPU_SIZE(H)): one resolution stage (the config's stage 2 takes 1 view), a small hash grid
# (8 levels of 2^14, finest 137) and proposal grid (4 levels of 2^12), 16 + 16 samples per ray, no chunked
# recomputation (the graphs are small); the rest stays the config's.
def cpu_size(height: int, batch_size: int = 1) -> Dict[str, Any]:
    h = int(height)
    return {
        "data.height": h, "data.width": h, "data.resolution_milestones": [],
        "data.random_camera.height": h, "data.random_camera.width": h,
        "data.random_camera.batch_size": batch_size, "data.random_camera.resolution_milestones": [],
        "data.random_camera.eval_height": h, "data.random_camera.eval_width": h,
        "system.geometry.pos_encoding_config.n_levels": 8, "system.geometry.pos_encoding_config.log2_hashmap_size": 14,
        "system.geometry.pos_encoding_config.base_resolution": 8,
        "system.geometry.pos_encoding_config.per_level_scale": 1.5,
        "system.renderer.proposal_network_config.encoding_config.n_levels": 4,
        "system.renderer.proposal_network_config.encoding_config.log2_hashmap_size": 12,
        "system.renderer.num_samples_per_ray": 16, "system.renderer.num_samples_per_ray_proposal": 16,
        "system.renderer.grad_checkpoint_chunk_size": 0, "system.guidance.vae_gradient_checkpointing": False,
        "trainer.precision": "32-true",
    }


# The one deviation from the config's system in every oracle run: the worlds' sky is the NeRF's own background colour
# (grey 0.5, what it renders over at evaluation), so training renders over that colour too. With the paper config's
# random background colours in every training view, the grey sky can only be built as opaque density, and runs of
# hundreds of steps fill the volume in front of every camera instead (docs/PERFORMANCE.md, "Oracle SDS check").
WORLD_BACKGROUND = {"system.background.random_aug": False}
# the runner's train mode validates on the config's schedule and tests after fit: the oracle scores its own orbit
RUN_SETTINGS = {"trainer.limit_val_batches": 0, "trainer.num_sanity_val_steps": 0}


def _set(cfg: Any, key: str, value: Any) -> None:
    OmegaConf.update(cfg, key, value, merge=False, force_add=True)


def _is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) or OmegaConf.is_list(value)


def compress_schedule(value: Any, factor: float) -> Any:
    """A schedule's step positions × ``factor`` (``[s0, v0, v1, s1]`` → ``[s0·f, v0, v1, s1·f]``, ``[v0, v1, s1]``
    → ``[v0, v1, s1·f]``); a number stays."""
    if not _is_list(value):
        return value
    value = list(value)
    if len(value) == 4:
        return [int(round(value[0] * factor)), value[1], value[2], int(round(value[3] * factor))]
    if len(value) == 3:
        return [value[0], value[1], int(round(value[2] * factor))]
    return value


def compress_steps(cfg: Any, factor: float, keep: Sequence[str] = ()) -> None:
    """Multiply every step-valued entry of ``cfg`` (:data:`SCHEDULE_KEYS`, ``system.loss.*``, :data:`STEP_KEYS`,
    :data:`MILESTONE_KEYS`) by ``factor``, in place, except the keys in ``keep``."""
    loss = OmegaConf.select(cfg, LOSS_SECTION) or {}
    schedules = [*SCHEDULE_KEYS, *(f"{LOSS_SECTION}.{k}" for k in loss)]
    for key in schedules:
        value = OmegaConf.select(cfg, key)
        if key not in keep and _is_list(value):
            _set(cfg, key, compress_schedule(value, factor))
    for key in STEP_KEYS:
        value = OmegaConf.select(cfg, key)
        if key not in keep and isinstance(value, (int, float)) and not isinstance(value, bool):
            # a positive step count stays positive (0 would switch the feature off, e.g. the anisotropic schedule)
            _set(cfg, key, max(type(value)(value * factor), 1) if value > 0 else value)
    for key in MILESTONE_KEYS:
        value = OmegaConf.select(cfg, key)
        if key not in keep and _is_list(value):
            _set(cfg, key, [max(1, int(round(v * factor))) for v in value])


def _first(value: Any) -> int:
    return int(list(value)[0] if _is_list(value) else value)


def _last(value: Any) -> int:
    return int(list(value)[-1] if _is_list(value) else value)


def oracle_config(
    cfg: Any, steps: int, height: int, cpu_sized: bool, user_keys: Sequence[str], orbit_views: int
) -> None:
    """The oracle run's config, in place (module docstring); keys in ``user_keys`` keep the user's values."""
    keep = set(user_keys)

    def put(values: Dict[str, Any]) -> None:
        for key, value in values.items():
            if key not in keep:
                _set(cfg, key, value)

    config_height = _first(OmegaConf.select(cfg, "data.random_camera.height"))
    if cpu_sized:
        put(cpu_size(height))
    factor = steps / float(OmegaConf.select(cfg, "trainer.max_steps"))
    put({"trainer.max_steps": int(steps)})
    compress_steps(cfg, factor, keep)
    run_height = _first(OmegaConf.select(cfg, "data.random_camera.height"))
    lambda_sds = OmegaConf.select(cfg, "system.loss.lambda_sds")
    if lambda_sds is not None and not _is_list(lambda_sds):
        put({"system.loss.lambda_sds": float(lambda_sds) * (config_height / run_height) ** 2})
    if str(OmegaConf.select(cfg, "data.default_fovy_deg")) == "auto":  # no EXIF in a rendered world: the fallback
        put({"data.default_fovy_deg": OmegaConf.select(cfg, "data.fovy_fallback_deg")})
    put({**WORLD_BACKGROUND, **RUN_SETTINGS, "data.random_camera.n_test_views": int(orbit_views)})


def oracle_resolution(cfg: Any) -> int:
    """Pixels a side of the oracle's latents and of the scored renders: the last random-view stage's height."""
    return _last(OmegaConf.select(cfg, "data.random_camera.height"))


def input_camera(cfg: Any) -> Dict[str, Tensor]:
    """The input view's camera dict (B = 1) from ``data.default_*`` (the datamodule's own construction)."""
    from threestudio.data.random_camera import ReferenceCamera

    d = cfg.data
    return ReferenceCamera(
        d.default_elevation_deg, d.default_azimuth_deg, d.default_camera_distance, d.default_fovy_deg
    ).cameras()


def input_cameras(cfg: Any, n_inputs: int) -> Dict[str, Tensor]:
    """``n_inputs`` input cameras (B = n_inputs): the scene's input camera (``data.default_*``) first, the others at
    its elevation, distance and fov, at azimuth offsets of 360°·i/n_inputs."""
    from threestudio.data.random_camera import orbit_cameras

    d = cfg.data
    return orbit_cameras(n_inputs, d.default_elevation_deg, d.default_camera_distance, d.default_fovy_deg,
                         d.default_azimuth_deg)


def write_world(scene_path: str, camera: Dict[str, Tensor], resolution: int, out_dir: str,
                knowledge: str = "full") -> str:
    """Write ``out_dir/world.yaml``: the scene plus the input camera(s) (``camera``, B ≥ 1), the oracle's
    resolution and what it knows (``knowledge``: full | visible)."""
    import yaml

    from zeronvs_diffusion.oracle.scene import Scene, read_mapping

    spec = dict(read_mapping(scene_path, "oracle scene"))
    Scene.from_dict(spec, where=scene_path)  # validates the scene (errors name the key)
    views = [{"c2w": c.tolist(), "fov_deg": float(f)} for c, f in zip(camera["c2w"], camera["fov_deg"])]
    if len(views) == 1:
        spec["input_camera"] = views[0]
    else:
        spec["input_cameras"] = views
    spec["resolution"] = int(resolution)
    spec["knowledge"] = knowledge
    path = os.path.join(out_dir, "world.yaml")
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(spec, f, sort_keys=False)
    return path


def write_posed_scene(folder: str, images: Tensor, c2w: Tensor, fov_deg: float) -> str:
    """A nerfstudio ``transforms.json`` scene in ``folder``: ``images`` (N, S, S, 3) in [0, 1] as
    ``images/view_{i:03d}.png`` at OpenGL camera-to-world ``c2w`` (N, 4, 4), one centred pinhole camera of vertical
    fov ``fov_deg``. Returns ``folder``."""
    import json
    import math

    from threestudio.utils.image import save_image

    size = int(images.shape[1])
    focal = 0.5 * size / math.tan(math.radians(fov_deg) / 2)
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    frames = []
    for i, (image, pose) in enumerate(zip(images, c2w)):
        name = f"images/view_{i:03d}.png"
        save_image(os.path.join(folder, name), image)
        frames.append({"file_path": name, "transform_matrix": pose.double().tolist()})
    meta = {"fl_x": focal, "fl_y": focal, "cx": size / 2, "cy": size / 2, "w": size, "h": size, "frames": frames}
    with open(os.path.join(folder, "transforms.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    return folder


def posed_inputs_keys(scene_dir: str, n_inputs: int, n_targets: int, size: int) -> Dict[str, Any]:
    """The config of a run from ``n_inputs`` posed views (``posed-inputs-datamodule``; the held-out orbit as its
    target views): the scene of :func:`write_posed_scene`, in the first input's frame at scale 1."""
    return {
        "data_type": "posed-inputs-datamodule",
        "data.scene": {
            "scene_dir": scene_dir, "input_views": list(range(n_inputs)),
            "target_views": list(range(n_inputs, n_inputs + n_targets)), "height": size, "width": size,
            "crop_square": False, "background": "none", "pose_scale": 1.0,
        },
        "data.scene_intrinsics": "calibrated",
    }


def heldout_orbit(cfg: Any, n_views: int) -> Dict[str, Tensor]:
    """``n_views`` cameras all around (azimuths offset half a step from the input's), elevations and distances
    alternating at :data:`ORBIT_FRACTIONS` of ``data.random_camera``'s ranges, at the input's fov."""
    from threestudio.data.random_camera import orbit_cameras

    rc = cfg.data.random_camera
    views = []
    for k in range(n_views):
        frac = ORBIT_FRACTIONS[k % len(ORBIT_FRACTIONS)]
        elevation = rc.elevation_range[0] + frac * (rc.elevation_range[1] - rc.elevation_range[0])
        distance = rc.camera_distance_range[0] + frac * (rc.camera_distance_range[1] - rc.camera_distance_range[0])
        azimuth = cfg.data.default_azimuth_deg + (k + 0.5) * 360.0 / n_views
        views.append(orbit_cameras(1, elevation, distance, cfg.data.default_fovy_deg, azimuth))
    return {key: torch.cat([v[key] for v in views]) for key in views[0]}


def render_nerf(system: Any, cameras: Dict[str, Tensor], size: int) -> Tensor:
    """The system's renders (B, H, W, 3) in [0, 1] of ``cameras``, one view at a time, in eval mode."""
    from threestudio.data.random_camera import camera_rays

    was_training = system.training
    system.eval()
    images = []
    try:
        for i in range(cameras["c2w"].shape[0]):
            view = {key: value[i : i + 1].to(system.device) for key, value in cameras.items()}
            view.update(camera_rays(view, size, size))
            images.append(system(view)["comp_rgb"].detach().clamp(0, 1).cpu())
    finally:
        system.train(was_training)
    return torch.cat(images)


def score(pred: Tensor, truth: Tensor) -> Dict[str, float]:
    """Mean PSNR and SSIM over views of (B, H, W, 3) images (threestudio.utils.metrics)."""
    from threestudio.utils.metrics import psnr, ssim

    pairs = list(zip(pred.numpy(), truth.numpy()))
    return {
        "psnr": sum(psnr(p, t) for p, t in pairs) / len(pairs),
        "ssim": sum(ssim(p, t) for p, t in pairs) / len(pairs),
    }


def field_evaluations_per_step(cfg: Any) -> Dict[str, int]:
    """Field evaluations of one (first-stage) training step: rays (random views + the reference view) × samples
    per ray, for the geometry and (with the proposal estimator) the proposal network."""
    rc, r = cfg.data.random_camera, cfg.system.renderer
    rays = _first(rc.batch_size) * _first(rc.height) * _first(rc.width) + _first(cfg.data.height) * _first(
        cfg.data.width
    )
    geometry = rays * int(r.num_samples_per_ray)
    if r.estimator == "importance":
        geometry += rays * int(r.num_samples_per_ray_importance)
    proposal = rays * int(r.num_samples_per_ray_proposal) if r.estimator == "proposal" else 0
    return {"rays": rays, "geometry": geometry, "proposal": proposal, "total": geometry + proposal}


def _callback_base() -> type:
    from lightning.pytorch.callbacks import Callback

    return Callback


class OracleScore(_callback_base()):
    """Held-out orbit PSNR every ``every`` steps (0: never) into ``curve``, and when training ends the held-out
    orbit and input-view scores into ``result`` (and ``heldout.png``: renders above, truth below)."""

    def __init__(self, orbit: Dict[str, Tensor], truth: Tensor, camera: Dict[str, Tensor], input_rgb: Tensor,
                 size: int, out_dir: str, every: int = 0, hook: Optional[Callable[[int, float], None]] = None):
        self.orbit, self.truth, self.camera, self.input_rgb = orbit, truth, camera, input_rgb
        self.size, self.out_dir, self.every, self.hook = size, out_dir, every, hook
        self.curve: List[List[float]] = []
        self.result: Dict[str, Any] = {}

    def on_train_batch_end(self, trainer: Any, system: Any, *args: Any) -> None:
        step = trainer.global_step
        if self.every > 0 and (step % self.every == 0 or step == trainer.max_steps):
            value = score(render_nerf(system, self.orbit, self.size), self.truth)["psnr"]
            self.curve.append([int(step), value])
            logger.info("step %d: held-out orbit PSNR %.2f dB", step, value)
            if self.hook is not None:
                self.hook(step, value)

    def on_train_end(self, trainer: Any, system: Any) -> None:
        from threestudio.utils.image import labelled_rows, save_image

        pred = render_nerf(system, self.orbit, self.size)
        heldout = score(pred, self.truth)
        input_pred = render_nerf(system, self.camera, self.size)
        # the held-out orbit, left to right: what the NeRF renders above what the world looks like
        rows = [(f"NeRF (SDS, {trainer.global_step} steps)", torch.cat(list(pred), 1)),
                ("oracle world", torch.cat(list(self.truth), 1))]
        save_image(os.path.join(self.out_dir, "heldout.png"), labelled_rows(rows))
        self.result = {
            "heldout_psnr": heldout["psnr"],
            "heldout_ssim": heldout["ssim"],
            "input_psnr": score(input_pred, self.input_rgb)["psnr"],
        }


def run_oracle_sds(
    scene_path: str,
    out_dir: str,
    steps: int = 400,
    height: int = 32,
    overrides: Sequence[str] = (),
    config_path: str = "configs/zeronvs.yaml",
    cpu_sized: bool = True,
    orbit_views: int = 12,
    eval_every: int = 0,
    on_curve: Optional[Callable[[int, float], None]] = None,
    input_views: Optional[int] = None,
    knowledge: str = "full",
) -> Dict[str, Any]:
    """Distil a NeRF from the world's input view with SDS against its oracle, through the runner, and score it.

    ``input_views`` K: K posed input cameras (:func:`input_cameras`) through ``posed-inputs-datamodule`` instead
    of the single-image datamodule (None: the single-image run). ``knowledge``: what the oracle knows (``full``, or
    ``visible``: only what the conditioning view sees; docs/GUIDANCE.md).
    ``overrides`` (``key=value``) win over every change of :func:`oracle_config`. Returns ``heldout_psnr``,
    ``heldout_ssim``, ``input_psnr``, ``steps``, ``wall_s``, plus ``scene``, ``height``, ``scale``, ``field_evals``
    (per step), ``heldout_png`` (``out_dir/heldout.png``, absolute), ``trial_dir`` (absolute) and, with
    ``eval_every > 0``, ``curve``: [[step, held-out PSNR], ...].
    """
    from threestudio.runner import run
    from threestudio.utils.config import load_config
    from threestudio.utils.image import save_image
    from zeronvs_diffusion.oracle import load_oracle, render

    start = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    user_keys = [o.split("=", 1)[0] for o in overrides]
    name = os.path.splitext(os.path.basename(scene_path))[0]
    trial_args = [f"exp_root_dir={out_dir}", "name=oracle", f"tag={name}", "use_timestamp=true", *overrides]

    def transform(cfg: Any) -> None:
        oracle_config(cfg, steps, height, cpu_sized, user_keys, orbit_views)

    probe = load_config(config_path, cli_args=trial_args)
    transform(probe)
    size = oracle_resolution(probe)
    camera = input_camera(probe)
    inputs = input_cameras(probe, input_views) if input_views else camera
    world = write_world(scene_path, inputs, size, out_dir, knowledge)
    oracle = load_oracle(world)
    image_path = os.path.join(out_dir, "input.png")
    input_rgb, _ = render(oracle.scene, inputs["c2w"], inputs["fov_deg"], size, size)
    save_image(image_path, input_rgb[0])
    orbit = heldout_orbit(probe, orbit_views)
    truth, _ = render(oracle.scene, orbit["c2w"], orbit["fov_deg"], size, size)
    model_keys = {
        "system.guidance.pretrained_model_name_or_path": f"oracle:{world}",
        "system.guidance.pretrained_config": None,
        "system.guidance.precomputed_scale": oracle.scale,
    }
    if input_views:
        scene_dir = write_posed_scene(os.path.join(out_dir, "scene"), torch.cat([input_rgb, truth]),
                                      torch.cat([inputs["c2w"], orbit["c2w"]]), float(camera["fov_deg"][0]))
        model_keys.update(posed_inputs_keys(scene_dir, input_views, orbit_views, size))
    else:
        model_keys["data.image_path"] = image_path

    def run_transform(cfg: Any) -> None:
        transform(cfg)
        if input_views:  # the posed scene's targets are the test views; its first input is the image
            for section, key in (("data.random_camera", "n_test_views"), ("data", "image_path")):
                OmegaConf.select(cfg, section).pop(key, None)
        for key, value in model_keys.items():
            if key not in user_keys or key == "system.guidance.pretrained_model_name_or_path":
                _set(cfg, key, value)

    logger.info("oracle SDS: %s, %d steps at %d px, scale %.4f", scene_path, steps, size, oracle.scale)
    scorer = OracleScore(orbit, truth, camera, input_rgb[:1], size, out_dir, eval_every, on_curve)
    saved = os.environ.pop(TIMESTAMP_ENV, None)  # each oracle run is a new trial with its own time stamp
    try:
        trial_dir = run(config_path, "train", cli_args=trial_args, transform=run_transform, callbacks=[scorer])
    finally:
        os.environ.pop(TIMESTAMP_ENV, None)
        if saved is not None:
            os.environ[TIMESTAMP_ENV] = saved
    result = {
        **scorer.result,
        "steps": int(steps),
        "wall_s": time.perf_counter() - start,
        "scene": scene_path,
        "height": size,
        "scale": oracle.scale,
        "input_views": int(input_views or 1),
        "knowledge": knowledge,
        "field_evals": field_evaluations_per_step(probe),
        "heldout_png": os.path.abspath(os.path.join(out_dir, "heldout.png")),  # beside input.png and world.yaml
        "trial_dir": os.path.abspath(trial_dir),  # the runner's trial: OUT/oracle/<scene>@<time>
    }
    if eval_every > 0:
        result["curve"] = scorer.curve
    return result
