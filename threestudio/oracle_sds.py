"""Single-image SDS against the oracle prior of a known world, scored on a held-out orbit.

:func:`run_oracle_sds` runs the production path — ``zeronvs-system``, ``single-image-datamodule``, its random
cameras, the guidance's timestep schedule and weighting, configs/zeronvs.yaml's system and camera ranges — with
``system.guidance.pretrained_model_name_or_path=oracle:WORLD`` and, by default, a CPU-sized NeRF and resolution
(:func:`cpu_overrides`). The input image is the world rendered at the input camera (``data.default_*``), so the
distilled NeRF has a ground truth at every pose. ``scripts/oracle_sds.py`` is its command line; docs/GUIDANCE.md
says what the oracle is and is not.

The config's step-valued schedules (timestep bounds, anisotropic offset, progressive camera ranges) are compressed
by ``steps / trainer.max_steps`` so a short run passes through the same phases as the 4000-step paper run, and
``lambda_sds`` is scaled by (config height / height)² to keep the config's per-pixel balance between the SDS sum
and the pixel-mean losses (:func:`sds_weight_overrides`).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

# step-valued entries of the pipeline config that are compressed with the run length
SCHEDULE_KEYS = ("system.guidance.min_step_percent", "system.guidance.max_step_percent")
STEP_KEYS = ("system.guidance.anisotropic_offset", "data.random_camera.progressive_until")
# held-out orbit: elevations and distances at these fractions of the training ranges (alternating per view);
# azimuths evenly all around, offset by half a step from the input view
ORBIT_FRACTIONS = (0.3, 0.6)


# The one deviation from the config's system in every oracle run: the worlds' sky is the NeRF's own background colour
# (grey 0.5, what it renders over at evaluation), so training renders over that colour too. With the paper config's
# random background colours in every training view, the grey sky can only be built as opaque density, and runs of
# hundreds of steps fill the volume in front of every camera instead (docs/PERFORMANCE.md, "Oracle SDS check").
WORLD_BACKGROUND_OVERRIDES = ("system.background.random_aug=false",)


def cpu_overrides(height: int, batch_size: int = 1) -> List[str]:
    """Config overrides for a CPU-sized run at ``height`` px: one resolution stage with ``batch_size`` random views
    (the config's stage 2 takes 1), a small hash grid (8 levels of 2^14, finest 137) and proposal grid (4 levels of
    2^12), 16 + 16 samples per ray, no chunked recomputation (the graphs are small); the rest stays the config's."""
    h = int(height)
    return [
        f"data.height={h}", f"data.width={h}", "data.resolution_milestones=[]",
        f"data.random_camera.height={h}", f"data.random_camera.width={h}",
        f"data.random_camera.batch_size={batch_size}", "data.random_camera.resolution_milestones=[]",
        f"data.random_camera.eval_height={h}", f"data.random_camera.eval_width={h}",
        "system.geometry.pos_encoding_config.n_levels=8", "system.geometry.pos_encoding_config.log2_hashmap_size=14",
        "system.geometry.pos_encoding_config.base_resolution=8",
        "system.geometry.pos_encoding_config.per_level_scale=1.5",
        "system.renderer.proposal_network_config.encoding_config.n_levels=4",
        "system.renderer.proposal_network_config.encoding_config.log2_hashmap_size=12",
        "system.renderer.num_samples_per_ray=16", "system.renderer.num_samples_per_ray_proposal=16",
        "system.renderer.grad_checkpoint_chunk_size=0", "system.guidance.vae_gradient_checkpointing=false",
        "trainer.precision=32-true",
    ]


def _dotted_get(cfg: Any, key: str) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, key)


def compressed_schedule_overrides(cfg: Any, factor: float) -> List[str]:
    """Overrides that multiply the step positions of the schedules in :data:`SCHEDULE_KEYS` and the step counts of
    :data:`STEP_KEYS` by ``factor`` (``[start, v0, v1, end]`` → ``[start·f, v0, v1, end·f]``)."""
    out = []
    for key in SCHEDULE_KEYS:
        value = _dotted_get(cfg, key)
        if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 4:
            s0, v0, v1, s1 = value
            out.append(f"{key}=[{int(round(s0 * factor))},{v0},{v1},{int(round(s1 * factor))}]")
    for key in STEP_KEYS:
        value = _dotted_get(cfg, key)
        if isinstance(value, (int, float)):
            out.append(f"{key}={type(value)(value * factor)}")
    return out


def sds_weight_overrides(cfg: Any, height: int, overrides: Sequence[str]) -> List[str]:
    """``system.loss.lambda_sds`` × (config's first random-view height / ``height``)², unless overridden.

    The SDS loss is a sum over latent elements, the reference and regulariser losses are means over pixels: at
    ``height`` instead of the config's resolution the mean losses weigh (H_config / H)² times more per pixel. The
    factor keeps the config's per-pixel balance (with the oracle's pixel latents; docs/GUIDANCE.md)."""
    if any(o.split("=", 1)[0] == "system.loss.lambda_sds" for o in overrides):
        return []
    config_height = _dotted_get(cfg, "data.random_camera.height")
    if isinstance(config_height, Sequence) and not isinstance(config_height, str):
        config_height = config_height[0]
    factor = (float(config_height) / float(height)) ** 2
    return [f"system.loss.lambda_sds={float(_dotted_get(cfg, 'system.loss.lambda_sds')) * factor}"]


def input_camera(cfg: Any) -> Dict[str, Tensor]:
    """The input view's camera dict (B = 1) from ``data.default_*`` (the datamodule's own construction)."""
    from threestudio.data.random_camera import ReferenceCamera

    d = cfg.data
    return ReferenceCamera(
        d.default_elevation_deg, d.default_azimuth_deg, d.default_camera_distance, d.default_fovy_deg
    ).cameras()


def write_world(scene_path: str, camera: Dict[str, Tensor], resolution: int, out_dir: str) -> str:
    """Write ``out_dir/world.yaml``: the scene plus the input camera and the oracle's resolution."""
    import yaml

    from zeronvs_diffusion.oracle.scene import Scene, read_mapping

    spec = dict(read_mapping(scene_path, "oracle scene"))
    Scene.from_dict(spec, where=scene_path)  # validates the scene (errors name the key)
    spec["input_camera"] = {"c2w": camera["c2w"][0].tolist(), "fov_deg": float(camera["fov_deg"][0])}
    spec["resolution"] = int(resolution)
    path = os.path.join(out_dir, "world.yaml")
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(spec, f, sort_keys=False)
    return path


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
    """Field evaluations of one training step from the config: rays (random views + the reference view) × samples
    per ray, for the geometry and (with the proposal estimator) the proposal network."""
    rc, r = cfg.data.random_camera, cfg.system.renderer
    rays = int(rc.batch_size) * int(rc.height) * int(rc.width) + int(cfg.data.height) * int(cfg.data.width)
    geometry = rays * int(r.num_samples_per_ray)
    if r.estimator == "importance":
        geometry += rays * int(r.num_samples_per_ray_importance)
    proposal = rays * int(r.num_samples_per_ray_proposal) if r.estimator == "proposal" else 0
    return {"rays": rays, "geometry": geometry, "proposal": proposal, "total": geometry + proposal}


def _single_stage(value: Any, what: str) -> int:
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(set(value)) != 1:
            raise ValueError(f"the oracle run scores one resolution; {what} has stages {list(value)}")
        value = value[0]
    return int(value)


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
) -> Dict[str, Any]:
    """Distil a NeRF from the world's input view with SDS against its oracle and score it.

    ``overrides`` (``key=value``) win over the CPU-sized defaults and the compressed schedules. Returns
    ``heldout_psnr``, ``heldout_ssim``, ``input_psnr``, ``steps``, ``wall_s``, plus ``scale``, ``field_evals``
    (per step) and, with ``eval_every > 0``, ``curve``: [[step, held-out PSNR], ...].
    """
    import lightning.pytorch as pl
    from omegaconf import OmegaConf

    import threestudio
    from threestudio.runner import trainer_kwargs
    from threestudio.utils.config import load_config
    from threestudio.utils.image import labelled_rows, save_image
    from zeronvs_diffusion.oracle import load_oracle, render

    start = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    base = (cpu_overrides(height) if cpu_sized else []) + [f"trainer.max_steps={steps}"]
    raw = OmegaConf.merge(OmegaConf.load(config_path), OmegaConf.from_dotlist(list(overrides)))
    factor = steps / float(OmegaConf.select(raw, "trainer.max_steps"))
    base += compressed_schedule_overrides(raw, factor)
    base += sds_weight_overrides(raw, height, overrides)
    if str(OmegaConf.select(raw, "data.default_fovy_deg")) == "auto":  # no EXIF in a rendered world: the fallback
        base.append(f"data.default_fovy_deg={OmegaConf.select(raw, 'data.fovy_fallback_deg')}")
    base += list(WORLD_BACKGROUND_OVERRIDES)
    first = load_config(config_path, cli_args=[*base, *overrides])
    size = _single_stage(first.data.random_camera.height, "data.random_camera.height")
    camera = input_camera(first)
    world = write_world(scene_path, camera, size, out_dir)
    oracle = load_oracle(world)
    image_path = os.path.join(out_dir, "input.png")
    input_rgb, _ = render(oracle.scene, camera["c2w"], camera["fov_deg"], size, size)
    save_image(image_path, input_rgb[0])
    user_keys = {o.split("=", 1)[0] for o in overrides}
    run_keys = [
        f"system.guidance.pretrained_model_name_or_path=oracle:{world}", "system.guidance.pretrained_config=null",
        f"data.image_path={image_path}",
    ]
    if "system.guidance.precomputed_scale" not in user_keys:
        run_keys.append(f"system.guidance.precomputed_scale={oracle.scale}")
    cfg = load_config(config_path, cli_args=[*base, *run_keys, *overrides])
    logger.info("oracle SDS: %s, %d steps at %d px, scale %.4f", scene_path, steps, size, oracle.scale)

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = threestudio.find(cfg.data_type)(cfg.data)
    system = threestudio.find(cfg.system_type)(cfg.system)
    datamodule.setup("fit")
    system.prepare("train", datamodule)
    system.set_save_dir(os.path.join(out_dir, "save"))
    orbit = heldout_orbit(cfg, orbit_views)
    truth, _ = render(oracle.scene, orbit["c2w"], orbit["fov_deg"], size, size)
    callbacks, curve = [], []
    if eval_every > 0:
        callbacks.append(_make_curve_callback()(eval_every, orbit, truth, size, curve, on_curve))
    from threestudio.utils.progress import lightning_progress_callbacks

    kwargs = trainer_kwargs(cfg.trainer, 1)
    bar = lightning_progress_callbacks(kwargs.get("enable_progress_bar"))  # none under --quiet
    callbacks += bar
    kwargs.update(logger=False, enable_checkpointing=False, enable_progress_bar=bool(bar), limit_val_batches=0,
                  num_sanity_val_steps=0)
    trainer = pl.Trainer(callbacks=callbacks, default_root_dir=out_dir, **kwargs)
    trainer.fit(system, datamodule=datamodule)

    pred = render_nerf(system, orbit, size)
    heldout = score(pred, truth)
    input_pred = render_nerf(system, camera, size)
    # the held-out orbit, left to right: what the NeRF renders above what the world looks like
    rows = [(f"NeRF (SDS, {steps} steps)", torch.cat(list(pred), 1)), ("oracle world", torch.cat(list(truth), 1))]
    save_image(os.path.join(out_dir, "heldout.png"), labelled_rows(rows))
    result = {
        "heldout_psnr": heldout["psnr"],
        "heldout_ssim": heldout["ssim"],
        "input_psnr": score(input_pred, input_rgb)["psnr"],
        "steps": int(steps),
        "wall_s": time.perf_counter() - start,
        "scene": scene_path,
        "height": size,
        "scale": oracle.scale,
        "field_evals": field_evaluations_per_step(cfg),
    }
    if eval_every > 0:
        result["curve"] = curve
    return result


def _make_curve_callback():
    from lightning.pytorch.callbacks import Callback

    class CurveCallback(Callback):
        """Held-out orbit PSNR every ``every`` steps (and at the last step) into ``curve``."""

        def __init__(self, every: int, orbit: Dict[str, Tensor], truth: Tensor, size: int, curve: List, hook=None):
            self.every, self.orbit, self.truth, self.size = every, orbit, truth, size
            self.curve, self.hook = curve, hook

        def on_train_batch_end(self, trainer: Any, system: Any, *args: Any) -> None:
            step = trainer.global_step
            if step % self.every == 0 or step == trainer.max_steps:
                value = score(render_nerf(system, self.orbit, self.size), self.truth)["psnr"]
                self.curve.append([int(step), value])
                logger.info("step %d: held-out orbit PSNR %.2f dB", step, value)
                if self.hook is not None:
                    self.hook(step, value)

    return CurveCallback

