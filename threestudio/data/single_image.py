"""The single-image datamodule: one input view (image + camera) plus random views for score distillation.

Train batches (one per step, built once by :meth:`SingleImageIterableDataset.make_batch` at the trainer's step;
in a Lightning fit the loader yields a placeholder and ``on_before_batch_transfer`` builds the batch):
the reference view at the current stage resolution, with the keys of docs/DESIGN.md —
``rays_o``, ``rays_d`` (1, H, W, 3), ``c2w`` and ``canonical_c2w`` (1, 4, 4), ``fov_deg``,
``elevation_deg``, ``azimuth_deg``, ``camera_distance`` (1,), ``height``, ``width`` (ints),
``rgb`` (1, H, W, 3), ``mask`` (1, H, W, 1), ``light_positions`` (1, 3) — and, unless
``use_random_camera`` is false, ``"random_camera"``: a batch of random views from
:class:`~threestudio.data.random_camera.RandomCameraSampler`.

Validation/test batches: one view of an orbit around the origin per item (see ``random_camera.eval_*``)
with the camera keys, ``rays_o``/``rays_d`` at ``eval_height`` × ``eval_width`` and ``index`` (1,) long.

Image handling: RGB(A) files are read as straight-alpha RGBA; ``mask = alpha > 0.5`` (all ones for RGB).
A non-square image is made square by ``crop_mode`` (``center_crop``, ``pad`` with transparent pixels, or
``stretch``); ``default_fovy_deg`` is the vertical field of view of that square. ``rgb`` holds the straight
colour (resized premultiplied, so transparent neighbours do not bleed in) and white where alpha is 0.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
from lightning.pytorch import LightningDataModule
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

import threestudio
from threestudio.data.random_camera import (
    MAX_CAMERA_DISTANCE,
    RandomCameraConfig,
    RandomCameraSampler,
    ReferenceCamera,
    camera_rays,
)
from threestudio.data.utils import StagedResolution
from threestudio.utils.base import Configurable, Updateable
from threestudio.utils.config import config_to_primitive, in_section, parse_structured
from threestudio.utils.errors import ConfigError, UserError
from threestudio.utils.image import composite, crop_to_square, load_image, resize_image

logger = logging.getLogger(__name__)

CROP_MODES = ("center_crop", "pad", "stretch")
MIN_INPUT_SIDE = 4  # a 1×1 "image" holds no view to lift


@dataclass
class SingleImageDataModuleConfig:
    """Config of ``single-image-datamodule`` (key names as in ZeroNVS's ``data/image.py``)."""

    # an int or one size per stage, switched at resolution_milestones (global steps)
    height: Any = 96
    width: Any = 96
    resolution_milestones: List[int] = field(default_factory=list)
    # the input view's camera: z-up world, looking at the origin; vertical fov of the (square) image
    default_elevation_deg: float = 0.0
    default_azimuth_deg: float = 0.0
    default_camera_distance: float = 1.0
    # a number, or "auto": from the image's EXIF focal length (threestudio.utils.exif), else fovy_fallback_deg;
    # "auto" in random_camera.fovy_range / eval_fovy_deg (e.g. through ${data.default_fovy_deg}) follows it
    default_fovy_deg: Any = 60.0
    fovy_fallback_deg: float = 52.55
    image_path: str = ""
    crop_mode: str = "center_crop"  # how a non-square image is made square: center_crop | pad | stretch
    use_random_camera: bool = True
    # random training views and val/test orbits; its rays_d_normalize also applies to the reference view
    random_camera: RandomCameraConfig = field(default_factory=RandomCameraConfig)
    # std of one random shift of the reference rays' origins and directions, drawn once per resolution stage
    # (when the stage starts), as ZeroNVS does
    rays_noise_scale: float = 2e-3
    batch_size: int = 1  # the reference view is one image
    # kept for configs written for ZeroNVS; there is no depth/normal estimator here, so they must stay false
    requires_depth: bool = False
    requires_normal: bool = False
    # conditioning() returns the square image at its own size, downsized to at most this many pixels a side
    conditioning_max_size: int = 512


# fovs a photo can have: outside it an EXIF focal length (65535 mm, a camera's "unknown") or a given fov is a mistake
PLAUSIBLE_FOVY_DEG = (1.0, 170.0)


def _check_config(cfg: SingleImageDataModuleConfig) -> None:
    if not cfg.image_path:
        raise ConfigError("config key data.image_path is empty; set it to the input image (RGB or RGBA file)")
    if cfg.crop_mode not in CROP_MODES:
        raise ConfigError(f"config key data.crop_mode is {cfg.crop_mode!r}; valid: {', '.join(CROP_MODES)}")
    for key, what in (("requires_depth", "depth map"), ("requires_normal", "normal map")):
        if getattr(cfg, key):
            raise ConfigError(
                f"config key data.{key}=true needs a {what} of the input, but this implementation has no "
                f"{what} estimator; set data.{key}=false (and the matching system.loss weights to 0)"
            )
    if cfg.batch_size != 1:
        raise ConfigError(f"config key data.batch_size must be 1 (there is one input view), got {cfg.batch_size}")
    low, high = PLAUSIBLE_FOVY_DEG
    if not isinstance(cfg.default_fovy_deg, (int, float)) or not low <= cfg.default_fovy_deg <= high:
        raise ConfigError(
            f"config key data.default_fovy_deg must lie in [{low:g}, {high:g}] degrees, got {cfg.default_fovy_deg}"
        )
    if not -90 <= cfg.default_elevation_deg <= 90:  # also NaN
        raise ConfigError(
            f"config key data.default_elevation_deg must lie in [-90, 90] degrees, got {cfg.default_elevation_deg}"
        )
    if not math.isfinite(cfg.default_azimuth_deg):
        raise ConfigError(f"config key data.default_azimuth_deg must be a finite number, got {cfg.default_azimuth_deg}")
    if not 0 < cfg.default_camera_distance <= MAX_CAMERA_DISTANCE:  # also NaN
        raise ConfigError(
            f"config key data.default_camera_distance must lie in (0, {MAX_CAMERA_DISTANCE:g}], got "
            f"{cfg.default_camera_distance}"
        )
    if cfg.conditioning_max_size < 1:
        raise ConfigError(f"config key data.conditioning_max_size must be positive, got {cfg.conditioning_max_size}")


def resolve_auto_fovy(cfg: DictConfig) -> DictConfig:
    """Make ``default_fovy_deg: auto`` the EXIF fov of ``image_path`` (else ``fovy_fallback_deg``), in place.

    "auto" entries of ``random_camera.fovy_range`` and ``random_camera.eval_fovy_deg`` get the input's fov
    (the number given, or the one found). Logs one line when it picks the fov. Returns ``cfg``.
    """
    fovy = cfg.get("default_fovy_deg", SingleImageDataModuleConfig.default_fovy_deg)
    if str(fovy) == "auto":
        fovy, _ = auto_fovy(cfg)
        cfg.default_fovy_deg = fovy
    elif not isinstance(fovy, (int, float)) or isinstance(fovy, bool):
        raise ConfigError(f"config key data.default_fovy_deg must be a number of degrees or auto, got {fovy!r}")
    camera = cfg.get("random_camera")
    if camera is not None:
        if camera.get("fovy_range") is not None:
            camera.fovy_range = [fovy if str(v) == "auto" else v for v in camera.fovy_range]
        if str(camera.get("eval_fovy_deg")) == "auto":
            camera.eval_fovy_deg = fovy
    return cfg


def auto_fovy(cfg: DictConfig) -> tuple[float, str]:
    """The fov ``auto`` stands for and where it comes from, in words: a bundled example's known camera
    (:mod:`threestudio.data.examples`), the image's EXIF focal length, else ``fovy_fallback_deg``."""
    from threestudio.data.examples import example_camera
    from threestudio.utils.exif import exif_fovy
    from threestudio.utils.image import check_image_file, resolve_image_path

    image_path = str(cfg.get("image_path") or "")
    example = example_camera(image_path)
    if example is not None:
        logger.info("data.default_fovy_deg = %g from %s", example.fovy_deg, example.source)
        return example.fovy_deg, example.source
    path = resolve_image_path(image_path) if image_path else ""
    if image_path:
        check_image_file(path)
    found = exif_fovy(path, str(cfg.get("crop_mode", "center_crop"))) if path else None
    if found is not None and not PLAUSIBLE_FOVY_DEG[0] <= found.fovy_deg <= PLAUSIBLE_FOVY_DEG[1]:
        logger.warning(
            "%s: its EXIF gives a vertical fov of %.3g°, outside the plausible %g-%g° (%s); it is not used",
            image_path, found.fovy_deg, *PLAUSIBLE_FOVY_DEG, found.description,
        )
        found = None
    if found is not None:
        fovy = round(found.fovy_deg, 3)
        logger.info("data.default_fovy_deg = %.3f from the EXIF of %s: %s", fovy, image_path, found.description)
        return fovy, f"EXIF: {found.description}"
    fovy = float(cfg.get("fovy_fallback_deg", SingleImageDataModuleConfig.fovy_fallback_deg))
    logger.info(
        "data.default_fovy_deg = %g (data.fovy_fallback_deg): %s has no EXIF focal length; pass --fov or "
        "data.default_fovy_deg=DEG if you know the input's vertical fov", fovy, image_path or "no image",
    )
    return fovy, "data.fovy_fallback_deg (no EXIF focal length)"


def resize_rgba(rgba: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Straight-alpha RGBA (H, W, 4) → straight colour (h, w, 3) and alpha (h, w, 1), antialiased.

    Colours are averaged weighted by alpha (premultiplied resize), so fully transparent pixels do not
    bleed into the edges; where the resized alpha is 0 the colour is white.
    """
    alpha = rgba[..., 3:4]
    resized = resize_image(torch.cat([rgba[..., :3] * alpha, alpha], dim=-1), height, width)
    alpha_r = resized[..., 3:4].clamp(0.0, 1.0)
    rgb = torch.where(alpha_r > 0, resized[..., :3] / alpha_r.clamp_min(1e-8), torch.ones_like(resized[..., :3]))
    return rgb.clamp(0.0, 1.0), alpha_r


@dataclass
class InputView:
    """One input view of the training batches: ``rgba`` (H, W, 4) straight alpha (the square after ``crop_mode``
    for one image; the whole frame for a posed scene's input) and ``cameras``, its camera dict (B = 1: ``c2w``,
    ``fov_deg``, ``elevation_deg``, ``azimuth_deg``, ``camera_distance``, ``light_positions``), rendered as a centred
    pinhole camera of that fov."""

    rgba: Tensor
    cameras: Dict[str, Tensor]


def square_input(rgba: Tensor, fovy_deg: float, crop_mode: str) -> tuple:
    """The ``crop_mode`` square of a frame (H, W, 4) and its vertical fov (a square cut from a taller frame sees a
    smaller vertical fov)."""
    square = crop_to_square(rgba, crop_mode, pad_value=0.0)
    rows = square.shape[0] if crop_mode != "stretch" else rgba.shape[0]
    if rows != rgba.shape[0]:
        fovy_deg = math.degrees(2 * math.atan(math.tan(math.radians(fovy_deg) / 2) * rows / rgba.shape[0]))
    return square, fovy_deg


class SingleImageIterableDataset(IterableDataset, Updateable):
    """Endless training batches: the reference view(s) at the current stage plus lazily drawn random views.

    ``views``: the input views (one for a single image). Each step's reference batch holds ``views_per_step`` of
    them, taken in turn (step s uses views ``(s·k + i) mod N``, i < k), so every view is supervised equally often
    and the step's reference-ray budget is k views; one view gives the single-image batch.
    ``update_step(epoch, global_step)`` selects the resolution stage and forwards the step to the random
    camera sampler; :meth:`make_batch` builds the batch from that state, so batches follow the current step.
    In a Lightning fit the datamodule does both, once per step (see ``on_before_batch_transfer``).
    """

    def __init__(
        self,
        cfg: SingleImageDataModuleConfig,
        views: List[InputView],
        sampler: Optional[RandomCameraSampler] = None,
        views_per_step: int = 1,
    ) -> None:
        super().__init__()
        if not 1 <= views_per_step <= len(views):
            raise ConfigError(f"reference views per step must lie in [1, {len(views)}] (the input views), "
                              f"got {views_per_step}")
        self.cfg = cfg
        self.views = views
        self.views_per_step = int(views_per_step)
        self.random_pose_generator = sampler
        self.stages = StagedResolution(cfg.height, cfg.width, cfg.resolution_milestones, prefix="data")
        self._views: Dict[tuple, Dict[str, Tensor]] = {}  # (stage, view) → rays, rgb, mask
        self._noisy_rays: Dict[tuple, tuple] = {}  # (stage, view) → (rays_o, rays_d) with that stage's ray noise
        self.global_step = 0

    @property
    def height(self) -> int:
        return self.stages.at(self.global_step).height

    @property
    def width(self) -> int:
        return self.stages.at(self.global_step).width

    def reference_view(self, stage_index: int, view: int = 0) -> Dict[str, Tensor]:
        """Noise-free rays, ``rgb`` and ``mask`` of input view ``view`` at stage ``stage_index`` (cached)."""
        key = (stage_index, view)
        if key not in self._views:
            stage = self.stages.stages[stage_index]
            rgb, alpha = resize_rgba(self.views[view].rgba, stage.height, stage.width)
            rays = camera_rays(
                self.views[view].cameras, stage.height, stage.width, self.cfg.random_camera.rays_d_normalize
            )
            rays.update(rgb=rgb[None].contiguous(), mask=(alpha > 0.5).float()[None].contiguous())
            self._views[key] = rays
            logger.debug("reference view %d at %dx%d", view, stage.height, stage.width)
        return self._views[key]

    def noisy_reference_rays(self, stage_index: int, view: int = 0) -> tuple:
        """``rays_o``, ``rays_d`` (1, H, W, 3) of input view ``view`` at stage ``stage_index`` shifted by one
        N(0, rays_noise_scale²) 3-vector each, drawn when the view is first used in the stage and kept for it."""
        key = (stage_index, view)
        if key not in self._noisy_rays:
            rays = self.reference_view(stage_index, view)
            rays_o, rays_d = rays["rays_o"], rays["rays_d"]
            if self.cfg.rays_noise_scale > 0:
                rays_o = rays_o + torch.randn(3) * self.cfg.rays_noise_scale
                rays_d = rays_d + torch.randn(3) * self.cfg.rays_noise_scale
                if self.cfg.random_camera.rays_d_normalize:
                    rays_d = torch.nn.functional.normalize(rays_d, dim=-1)
            self._noisy_rays[key] = (rays_o, rays_d)
        return self._noisy_rays[key]

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        self.global_step = global_step
        if self.random_pose_generator is not None:
            self.random_pose_generator.update_step(epoch, global_step, on_load_weights)

    def __iter__(self):
        while True:
            yield {}

    def step_views(self) -> List[int]:
        """The input views of the current step's reference batch (see the class docstring)."""
        n, k = len(self.views), self.views_per_step
        return [(self.global_step * k + i) % n for i in range(k)]

    def make_batch(self) -> Dict[str, Any]:
        """The training batch at the current step (see the module docstring for its keys); with several input
        views also ``input_index`` (B,): the input view of each reference view."""
        stage_index = self.stages.index_at(self.global_step)
        stage = self.stages.stages[stage_index]
        chosen = self.step_views()
        parts = []
        for view in chosen:
            rays = self.reference_view(stage_index, view)
            rays_o, rays_d = self.noisy_reference_rays(stage_index, view)
            part = {k: v.clone() for k, v in self.views[view].cameras.items()}
            part.update(rays_o=rays_o, rays_d=rays_d, rgb=rays["rgb"], mask=rays["mask"])
            parts.append(part)
        batch: Dict[str, Any] = parts[0] if len(parts) == 1 else {
            key: torch.cat([p[key] for p in parts]) for key in parts[0]
        }
        batch.update(
            canonical_c2w=self.views[0].cameras["c2w"].clone(),  # the first input's camera defines the frame
            height=stage.height,
            width=stage.width,
        )
        if len(self.views) > 1:
            batch["input_index"] = torch.tensor(chosen, dtype=torch.long)
        if self.random_pose_generator is not None:
            batch["random_camera"] = self.random_pose_generator.sample()
        return batch


# what the training loader yields inside a Lightning fit: on_before_batch_transfer builds the real batch
_DEFERRED_BATCH = "deferred_training_batch"


@threestudio.register("single-image-datamodule")
class SingleImageDataModule(LightningDataModule, Configurable):
    """One input image and its camera; random views for distillation; orbits for validation and testing.

    Building it checks the config; :meth:`setup` reads the image (once).
    """

    Config = SingleImageDataModuleConfig
    cfg: SingleImageDataModuleConfig

    def __init__(self, cfg: Optional[Any] = None) -> None:
        super().__init__()
        self._configure_from(cfg)

    @classmethod
    def parse_config(cls, cfg: Optional[Any]) -> Any:
        """``cfg`` parsed after :meth:`resolve_config` (an ``auto`` fov becomes a number)."""
        return parse_structured(cls.Config, in_section(cls.resolve_config(cfg), "data"))

    def configure(self) -> None:
        _check_config(self.cfg)
        self.reference = ReferenceCamera(
            elevation_deg=float(self.cfg.default_elevation_deg),
            azimuth_deg=float(self.cfg.default_azimuth_deg),
            distance=float(self.cfg.default_camera_distance),
            fovy_deg=float(self.cfg.default_fovy_deg),
        )
        # checks the random camera config early (before setup), so bad keys fail at construction
        self.sampler = RandomCameraSampler(self.cfg.random_camera, self.reference)
        # validated here too, so a bad data.height fails at construction
        self.stages = StagedResolution(self.cfg.height, self.cfg.width, self.cfg.resolution_milestones, prefix="data")
        self.rgba: Optional[Tensor] = None  # (S, S, 4), read by setup

    @staticmethod
    def resolve_config(cfg: Optional[Any]) -> DictConfig:
        """``cfg`` with ``default_fovy_deg: auto`` (and "auto" in the random camera's fov keys) made a number.

        The runner calls this before it saves the trial's parsed config, so the fov used is recorded there.
        """
        return resolve_auto_fovy(OmegaConf.create(config_to_primitive(cfg) if cfg is not None else {}))

    def _load_image(self) -> Tensor:
        """The input as straight-alpha RGBA (S, S, 4) after ``crop_mode`` (for ``stretch``: as read)."""
        train_side = max(max(s.height, s.width) for s in self.stages.stages)
        image = load_image(self.cfg.image_path, min_side=max(train_side, self.cfg.conditioning_max_size))
        if min(image.shape[:2]) < MIN_INPUT_SIDE:
            raise UserError(f"image {self.cfg.image_path} is {image.shape[1]}x{image.shape[0]} px: too small to be "
                            f"the input view (at least {MIN_INPUT_SIDE} px on each side)")
        rgba = crop_to_square(image, self.cfg.crop_mode, pad_value=0.0).contiguous()
        logger.info(
            "single image %s: %dx%d, %dx%d after crop_mode=%s",
            self.cfg.image_path,
            image.shape[1],
            image.shape[0],
            rgba.shape[1],
            rgba.shape[0],
            self.cfg.crop_mode,
        )
        if min(rgba.shape[:2]) < train_side:
            logger.warning(
                "image %s is %dx%d after crop_mode=%s, smaller than the training resolution %d px: it is upsampled "
                "(blurry supervision); use a larger image or a smaller data.height/width",
                self.cfg.image_path, rgba.shape[1], rgba.shape[0], self.cfg.crop_mode, train_side,
            )
        return rgba

    def setup(self, stage: Optional[str] = None) -> None:
        """Read the image (first call only) and build the datasets of ``stage`` (None: all)."""
        if self.rgba is None:
            self.rgba = self._load_image()
        rgba = self.rgba
        if stage in (None, "fit"):
            sampler = self.sampler if self.cfg.use_random_camera else None
            views = [InputView(rgba, self.reference.cameras())]
            self.train_dataset = SingleImageIterableDataset(self.cfg, views, sampler)
        if stage in (None, "fit", "validate"):
            self.val_dataset = self.sampler.eval_dataset("val")
        if stage in (None, "test", "predict"):
            self.test_dataset = self.sampler.eval_dataset("test")

    def _loader(self, dataset: Any, batch_size: Optional[int], collate_fn: Any = None) -> DataLoader:
        # num_workers=0: update_step changes the dataset's state in the main process every step
        return DataLoader(dataset, batch_size=batch_size, num_workers=0, collate_fn=collate_fn or dataset.collate)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, batch_size=None, collate_fn=self._collate_train)

    def _collate_train(self, _: Any) -> Dict[str, Any]:
        """Outside a Lightning fit, the batch at the dataset's step; inside one, a placeholder that
        :meth:`on_before_batch_transfer` replaces (so each step's batch is built once, at that step)."""
        if self._in_fit():
            return {_DEFERRED_BATCH: True}
        return self.train_dataset.make_batch()

    def _in_fit(self) -> bool:
        trainer = getattr(self, "trainer", None)
        return trainer is not None and trainer.training

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, batch_size=self.cfg.random_camera.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, batch_size=self.cfg.random_camera.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """In a Lightning fit, move the training dataset to the trainer's step and build that step's batch.

        Lightning fetches a batch ahead (and calls ``on_train_batch_start`` only after fetching), so the loader
        yields a placeholder; this hook runs for the batch of the step about to be taken, so stage switches and
        progressive ranges happen exactly at their steps. This is the only place a fit pushes the step into the
        dataset.
        """
        if isinstance(batch, dict) and batch.get(_DEFERRED_BATCH):
            trainer = self.trainer
            self.train_dataset.update_step(trainer.current_epoch, trainer.global_step)
            batch = self.train_dataset.make_batch()
        return batch

    def conditioning(self) -> Dict[str, Tensor]:
        """The guidance's input view: the ``crop_mode`` square of the image, ``images`` (1, S, S, 3) in [0, 1]
        composited on white, ``c2w`` (1, 4, 4), ``fov_deg`` (1,) the vertical fov of that square. S is the square's
        own side (for ``stretch``, the longer side), capped at ``conditioning_max_size`` by antialiased downsizing.
        Needs :meth:`setup`."""
        if self.rgba is None:
            raise RuntimeError("call setup() before conditioning(): the image is read there")
        square, fovy = square_input(self.rgba, self.reference.fovy_deg, self.cfg.crop_mode)  # as read when square
        side = min(max(square.shape[0], square.shape[1]), self.cfg.conditioning_max_size)
        image = resize_image(composite(square, 1.0), side, side).clamp(0.0, 1.0)
        return {
            "images": image[None].contiguous(),
            "c2w": self.reference.c2w(),
            "fov_deg": torch.tensor([fovy], dtype=torch.float32),
        }
