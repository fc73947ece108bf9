"""SDS from N ≥ 1 posed input views of a scene, tested on the scene's other views (ZeroNVS's DTU protocol for N = 1,
the few-view "ZeroNVS*" baseline of ReconFusion / CAT3D for N > 1).

``posed-inputs-datamodule`` is the single-image datamodule (:mod:`threestudio.data.single_image`: the same
training batches, random cameras, validation orbit and conditioning) whose inputs are ``scene.input_views`` of the
posed scene ``scene`` (a :class:`SceneSectionConfig`: the scene keys of
:class:`threestudio.data.posed_views.PosedSceneConfig`, read with the shared posed-view loading; inputs named by
camera index or image file name), and whose test split is that scene's target views with their ground truth. Every
pose is expressed in the canonical frame of the *first* input camera (``data.default_elevation_deg`` /
``default_azimuth_deg`` / ``default_camera_distance``; ``scene.canonicalize`` must be true), as ZeroNVS's
``data.view_synthesis`` does for DTU (kylesargent/ZeroNVS ``threestudio/data/image.py``); the other inputs keep
their poses relative to it, translations × ``scene.pose_scale``.

- Reference views (RGB and mask losses): each input's whole frame at ``data.height`` × ``data.width`` (same aspect as
  the images). ``reference_views_per_step`` (default 1) of them per step, taken in turn, so a step costs the rays
  of one view as in the single-view pipeline and each input is supervised every N-th step; N uses every input in
  every step (N times the rays).
- Conditioning (:meth:`conditioning`): every input's ``crop_mode`` square (``center_crop``: ZeroNVS's central crop),
  its canonical-frame pose and fov. The guidance picks, per SDS sample, the input nearest to the sample's camera by
  rotation angle (``system.guidance.input_selection``).
- Random SDS cameras: the sampler of ``data.random_camera`` around the origin, its ranges (and ``progressive_until``)
  centred on the first input, as for one view; docs/MULTIVIEW.md ("Few views") gives the distribution and where the
  inputs fall in it.
- ``image_path`` and (when ``auto``) ``default_fovy_deg`` are the first input's, filled in from the scene by
  :meth:`resolve_config` (which reads the scene's cameras), so the trial's parsed config records them. The other
  inputs' fovs come from their own cameras, by the same ``scene_intrinsics`` rule.
- ``scene_intrinsics``: ``zeronvs`` (ZeroNVS's DTU evaluation) renders the reference views and every test view with
  a centred pinhole camera whose vertical fov is ``2·atan(cy / fy)`` of its camera; ``calibrated`` uses each test
  view's own intrinsics (principal point included) and, for the inputs, ``2·atan(H / 2fy)``.

``scene_format: mipnerf360`` takes the scene from :mod:`threestudio.data.mipnerf360` instead (a Mip-NeRF 360 release
folder or converted ``.npz``; ``scene`` keys: ``scene_dir``, ``view_idx``, ``resolution``,
``manual_gt_to_pred_scale``; see :class:`MipNeRF360SceneConfig`): one input, the ``view_idx``-th view in the angle
order, its ``resolution``² frame is the reference image, the test views are all the other views at that size, and
``default_fovy_deg: auto`` is the frames' fov. ``auto`` in ``default_elevation_deg``,
``random_camera.eval_elevation_deg`` and ``random_camera.elevation_range`` (ZeroNVS's Mip-NeRF 360 evaluation) is the
input camera's elevation ``e`` and ZeroNVS's range around it (:func:`threestudio.data.mipnerf360.elevation_range`);
all are recorded in the parsed config. ``data.scene`` is checked against the format's own typed config when the
datamodule is built.

Test batches are the posed-view batches (``rgb``, ``mask``, ``index``, ``cond_index``, ...;
:mod:`threestudio.data.posed_views`) at ``scene.height`` × ``scene.width``; the test loader yields one view per
batch. With ``scene.use_masks`` the targets carry the scene's object masks, and the test pass adds masked metrics.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torch.utils.data import DataLoader

import threestudio
from threestudio.data.posed_views import (
    SCENE_FORMATS,
    PosedScene,
    PosedSceneConfig,
    PosedViewDataset,
    ViewSet,
    canonical_camera,
    check_posed_scene_config,
    load_posed_scene,
)
from threestudio.data.random_camera import RandomCameraConfig
from threestudio.data.single_image import (
    InputView,
    SingleImageDataModule,
    SingleImageDataModuleConfig,
    SingleImageIterableDataset,
    resolve_auto_fovy,
    square_input,
)
from threestudio.data.view_selection import select_nearest
from threestudio.utils.camera import c2w_to_spherical, focal_to_fov, orbit_c2w
from threestudio.utils.config import config_to_primitive, in_section, parse_structured
from threestudio.utils.errors import ConfigError, UserError
from threestudio.utils.image import composite, load_image, resize_image

logger = logging.getLogger(__name__)

SCENE_INTRINSICS = ("zeronvs", "calibrated")
SCENE_SOURCES = ("posed", "mipnerf360")  # data.scene_format


_CANONICAL = "is not a scene key: the input camera of the single-image pipeline is data.{0}; remove it"


@dataclass
class SceneSectionConfig(PosedSceneConfig):
    """``data.scene``: the posed scene's files and views (:class:`~threestudio.data.posed_views.PosedSceneConfig`)."""

    KEY_HINTS: ClassVar[Dict[str, str]] = {
        **{key: _CANONICAL.format(key)
           for key in ("default_elevation_deg", "default_azimuth_deg", "default_camera_distance")},
        # canonicalize (required here) re-expresses every pose relative to the input camera: a world rotation cancels
        "flip_world_yz": "has no effect here: the poses are re-expressed relative to the input camera "
                         "(canonicalize), which undoes any rotation of the world; remove it",
    }


@dataclass
class SceneRandomCameraConfig(RandomCameraConfig):
    """``data.random_camera``: the SDS views and the validation orbit; the test views are the scene's."""

    KEY_HINTS: ClassVar[Dict[str, str]] = {
        "n_test_views": "is not used: the test pass renders the scene's target views (data.scene); remove it",
    }


@dataclass
class PosedInputsConfig(SingleImageDataModuleConfig):
    """``single-image-datamodule`` keys plus the posed scene (see the module docstring)."""

    random_camera: SceneRandomCameraConfig = field(default_factory=SceneRandomCameraConfig)

    KEY_HINTS: ClassVar[Dict[str, str]] = {
        "input_views": "is a scene key: set data.scene.input_views",
    }

    default_fovy_deg: Any = "auto"  # auto: from the first input's camera (see scene_intrinsics); a number wins
    # scene_format posed: a SceneSectionConfig; mipnerf360: a MipNeRF360SceneConfig (checked when built)
    scene: Any = field(default_factory=dict)
    scene_intrinsics: str = "zeronvs"  # zeronvs | calibrated
    # posed (threestudio.data.posed_views: data.scene.format auto | idr | llff | transforms) | mipnerf360
    # (threestudio.data.mipnerf360, ZeroNVS's Mip-NeRF 360 protocol: one input)
    scene_format: str = "posed"
    # input views in each step's reference batch (RGB/mask losses), taken in turn; 1 keeps the single-view cost
    reference_views_per_step: int = 1
    # with several inputs, widen random_camera.elevation_range / camera_distance_range (recorded in the parsed
    # config) so that the random SDS cameras cover every input (± 5°, ± 0.05); one input: no change
    cover_inputs: bool = True


@dataclass
class MipNeRF360SceneConfig:
    """``data.scene`` of ``scene_format: mipnerf360`` (ZeroNVS's ``data.view_synthesis`` for Mip-NeRF 360)."""

    scene_dir: str = ""  # release folder (poses_bounds.npy, images_N/) or a converted SCENE.npz
    view_idx: int = 0  # rank of the input view in the angle order (launch_eval_mipnerf360.sh's view_idxs)
    resolution: int = 256  # square frames of every view (ZeroNVS: 256)
    manual_gt_to_pred_scale: float = 1.0  # test-pose translations (relative to the input) are divided by it
    # filled from data.default_* (the canonical input camera): not scene keys
    default_elevation_deg: float = 0.0
    default_azimuth_deg: float = 0.0
    default_camera_distance: float = 1.0
    canonicalize: bool = True

    @property
    def height(self) -> int:
        return self.resolution

    @property
    def width(self) -> int:
        return self.resolution


@functools.lru_cache(maxsize=1)
def _mipnerf360_scene(scene_dir: str, view_idx: int, resolution: int):
    from threestudio.data.mipnerf360 import load_scene

    return load_scene(scene_dir, view_idx, resolution)


def _mipnerf360_config(cfg: Any) -> MipNeRF360SceneConfig:
    scene = dict(config_to_primitive(cfg.get("scene") or {}))
    allowed = {"scene_dir", "view_idx", "resolution", "manual_gt_to_pred_scale"}
    unknown = sorted(set(scene) - allowed)
    if unknown:
        raise ConfigError(f"data.scene.{unknown[0]} is not a key of scene_format mipnerf360; valid: "
                          f"{', '.join(sorted(allowed))}")
    if not scene.get("scene_dir") or scene.get("scene_dir") == "???":
        raise ConfigError("config key data.scene.scene_dir is empty; set it to the Mip-NeRF 360 scene folder or .npz")
    try:
        out = MipNeRF360SceneConfig(**scene)
        out.view_idx, out.resolution = int(out.view_idx), int(out.resolution)
        out.manual_gt_to_pred_scale = float(out.manual_gt_to_pred_scale)
    except (TypeError, ValueError):
        raise ConfigError(f"data.scene: view_idx and resolution must be integers, manual_gt_to_pred_scale a number; "
                          f"got {scene}") from None
    if out.resolution < 1 or out.manual_gt_to_pred_scale <= 0:
        raise ConfigError("data.scene.resolution and data.scene.manual_gt_to_pred_scale must be positive")
    for key in ("default_elevation_deg", "default_azimuth_deg", "default_camera_distance"):
        value = cfg.get(key, getattr(PosedInputsConfig, key))
        if str(value) != "auto":  # auto: not resolved yet (resolve_config reads the scene first)
            setattr(out, key, float(value))
    return out


class MipNeRF360SceneViews:
    """The scene side of the datamodule for ``scene_format: mipnerf360``: ``targets``, ``cond_index`` and
    ``canonical_c2w`` of the test pass, from :mod:`threestudio.data.mipnerf360`."""

    def __init__(self, cfg: MipNeRF360SceneConfig) -> None:
        self.cfg = cfg
        self.loaded = None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.loaded is not None:
            return
        cfg = self.cfg
        scene = self.loaded = _mipnerf360_scene(cfg.scene_dir, cfg.view_idx, cfg.resolution)
        canonical = orbit_c2w(*(torch.tensor([v], dtype=torch.float64) for v in (
            cfg.default_elevation_deg, cfg.default_azimuth_deg, cfg.default_camera_distance)))[0]
        # ZeroNVS: c2w_k ← canonical · (inv(c2w_input) · c2w_k with its translation / manual_gt_to_pred_scale)
        relative = torch.linalg.inv(scene.c2w[scene.input_index]) @ scene.c2w
        relative[:, :3, 3] /= cfg.manual_gt_to_pred_scale
        c2w = canonical @ relative
        idx = torch.as_tensor(scene.target_indices, dtype=torch.long)
        n, size = len(idx), cfg.resolution
        focal = float(scene.intrinsics[0, 0])
        K = torch.tensor([[focal, 0.0, size / 2 - 0.5], [0.0, focal, size / 2 - 0.5], [0.0, 0.0, 1.0]])
        self.targets = ViewSet(
            indices=idx, c2w=c2w[idx], intrinsics=scene.intrinsics[idx], fov_deg=torch.full((n,), scene.fovy_deg),
            selection_c2w=scene.c2w[idx], raw_K=K.double().expand(n, 3, 3).clone(), raw_size=(size, size),
            rgb=scene.images[idx], mask=torch.ones(n, size, size, 1),
        )
        self.cond_index = torch.zeros(n, dtype=torch.long)
        self.canonical_c2w = c2w[scene.input_index].float()

    def input_rgba(self) -> Tensor:
        """The input view's frame as RGBA (S, S, 4)."""
        self.setup()
        rgb = self.loaded.images[self.loaded.input_index]
        return torch.cat([rgb, torch.ones_like(rgb[..., :1])], dim=-1)


def _resolve_mipnerf360(cfg: DictConfig) -> DictConfig:
    """``image_path`` and the ``auto`` fov and elevations from the scene (ZeroNVS's ``SingleImageDataModule.__init__``
    for Mip-NeRF 360)."""
    scene_cfg = _mipnerf360_config(cfg)
    scene = _mipnerf360_scene(scene_cfg.scene_dir, scene_cfg.view_idx, scene_cfg.resolution)
    source = scene.image_paths[scene.input_index] if scene.image_paths else scene_cfg.scene_dir
    if cfg.get("image_path") and os.path.abspath(cfg.image_path) != os.path.abspath(source):
        raise ConfigError("data.image_path comes from data.scene (its input view); remove the key")
    cfg.image_path = source
    if str(cfg.get("default_fovy_deg", "auto")) == "auto":
        cfg.default_fovy_deg = round(scene.fovy_deg, 4)
    resolve_auto_fovy(cfg)  # "auto" in the random camera's fov keys
    elevation = round(scene.elevation_deg, 4)
    if str(cfg.get("default_elevation_deg")) == "auto":
        cfg.default_elevation_deg = elevation
    camera = cfg.get("random_camera") or {}
    if str(camera.get("eval_elevation_deg")) == "auto":
        cfg.random_camera.eval_elevation_deg = elevation
    if str(camera.get("elevation_range")) == "auto":
        cfg.random_camera.elevation_range = list(scene.elevation_range)
    logger.info("Mip-NeRF 360 scene %s: input view %d (%s), fovy %.3f°, elevation %.2f° (ZeroNVS range %s)",
                scene_cfg.scene_dir, scene.input_index, scene.names[scene.input_index], scene.fovy_deg,
                scene.elevation_deg, list(scene.elevation_range))
    return cfg


def centred_intrinsics(fovy_deg: float, height: int, width: int, n: int) -> Tensor:
    """(n, 4) fx, fy, cx, cy of a centred pinhole camera with square pixels and vertical fov ``fovy_deg``."""
    focal = 0.5 * height / math.tan(math.radians(fovy_deg) / 2)
    return torch.tensor([[focal, focal, width / 2.0, height / 2.0]] * n, dtype=torch.float64).reshape(n, 4)


def input_fovy_deg(K: Tensor, image_height: int, mode: str) -> float:
    """Vertical fov (degrees) of an input camera with OpenCV intrinsics ``K`` (3, 3) under ``scene_intrinsics``:
    ``zeronvs`` 2·atan(cy / fy) (ZeroNVS's DTU cameras), ``calibrated`` 2·atan(H / 2fy)."""
    K = K.double()
    if mode == "zeronvs":
        return math.degrees(2 * math.atan2(float(K[1, 2]), float(K[1, 1])))
    return float(focal_to_fov(float(K[1, 1]), image_height))


def _resolve_scene_views(cfg: DictConfig, cameras: Any) -> int:
    """In place: ``data.scene``'s views named by file become camera indices (every input checked against the
    scene), ``pose_scale: auto`` a number. Returns the first input's camera index."""
    from threestudio.data.posed_views import resolve_view_names

    scene = cfg.scene
    for key in ("input_views", "target_views", "excluded_views"):
        if scene.get(key) is not None:
            scene[key] = resolve_view_names(list(scene[key]), cameras, f"data.scene.{key}")
    inputs = [int(i) for i in (scene.get("input_views") or [0])]
    bad = [i for i in inputs if not 0 <= i < len(cameras)]
    if bad:
        raise UserError(f"data.scene.input_views: camera index {bad[0]} is out of range; {cameras.source} has "
                        f"cameras 0..{len(cameras) - 1}")
    if str(scene.get("pose_scale")) == "auto":
        scene.pose_scale = auto_pose_scale(cameras, inputs[0], float(cfg.get("default_camera_distance", 1.0)))
    return inputs[0]


def _scene_cameras(scene: Any):
    """The scene's cameras (its format's reader, ``format: auto`` detected) from a ``data.scene`` mapping."""
    from threestudio.data.posed_views import detect_scene_format

    scene_dir = str(scene.get("scene_dir"))
    fmt = detect_scene_format(scene_dir, str(scene.get("format", PosedSceneConfig.format)), "data.scene.format")
    return SCENE_FORMATS[fmt](scene_dir, False)


@threestudio.register("posed-inputs-datamodule")
class PosedInputsDataModule(SingleImageDataModule):
    """SDS from N ≥ 1 posed scene views (the single-image pipeline with N inputs); test on the scene's targets."""

    Config = PosedInputsConfig
    cfg: PosedInputsConfig

    @staticmethod
    def resolve_config(cfg: Optional[Any]) -> DictConfig:
        """``cfg`` with ``image_path`` (the first input view's file) and, when ``auto``, ``default_fovy_deg`` (its
        camera's, see ``scene_intrinsics``) filled in from the scene, whose cameras it reads; input views named by
        file become camera indices. The runner calls this before it saves the trial's parsed config, so all three
        are recorded there."""
        cfg = OmegaConf.create(config_to_primitive(cfg) if cfg is not None else {})
        if cfg.get("scene_format", "posed") == "mipnerf360":
            return _resolve_mipnerf360(cfg)
        scene = cfg.get("scene") or {}
        scene_dir = scene.get("scene_dir")
        if not scene_dir or OmegaConf.is_missing(scene, "scene_dir"):
            raise ConfigError("config key data.scene.scene_dir is empty; set it to the posed scene folder")
        cameras = _scene_cameras(scene)
        index = _resolve_scene_views(cfg, cameras)
        image = cameras.image_paths[index]
        if cfg.get("image_path") and os.path.abspath(cfg.image_path) != os.path.abspath(image):
            raise ConfigError("data.image_path comes from data.scene (its first input view); remove the key")
        cfg.image_path = image
        if len(scene.get("input_views") or [0]) > 1 and cfg.get("cover_inputs", PosedInputsConfig.cover_inputs):
            cover_input_cameras(cfg, cameras)
        if str(cfg.get("default_fovy_deg", "auto")) == "auto":
            mode = cfg.get("scene_intrinsics", PosedInputsConfig.scene_intrinsics)
            cfg.default_fovy_deg = input_fovy_deg(cameras.K[index], load_image(image).shape[0], mode)
            logger.info("data.default_fovy_deg = %.3f (camera %d of %s, %s)", cfg.default_fovy_deg, index, scene_dir,
                        mode)
        return resolve_auto_fovy(cfg)  # "auto" in the random camera's fov keys follows the first input

    def configure(self) -> None:
        cfg = self.cfg
        if cfg.scene_intrinsics not in SCENE_INTRINSICS:
            raise ConfigError(
                f"config key data.scene_intrinsics is {cfg.scene_intrinsics!r}; valid: {', '.join(SCENE_INTRINSICS)}"
            )
        if cfg.scene_format == "idr":
            raise ConfigError("data.scene_format idr was renamed posed (it reads every format of data.scene.format: "
                              "auto, idr, llff, transforms); set data.scene_format=posed or remove the key")
        if cfg.scene_format not in SCENE_SOURCES:
            valid = ", ".join(SCENE_SOURCES)
            raise ConfigError(f"config key data.scene_format is {cfg.scene_format!r}; valid: {valid}")
        self.scene: Optional[PosedScene] = None  # read by setup (posed)
        self.mipnerf360: Optional[MipNeRF360SceneViews] = None
        if cfg.scene_format == "mipnerf360":
            self.mipnerf360 = MipNeRF360SceneViews(_mipnerf360_config(cfg))
            n_inputs = 1
        else:
            self.scene_cfg = parse_structured(SceneSectionConfig, in_section(cfg.scene, "data.scene"))
            if not self.scene_cfg.canonicalize:
                raise ConfigError("data.scene.canonicalize must be true: every pose is relative to the first input")
            check_posed_scene_config(self.scene_cfg, prefix="data.scene")
            n_inputs = len(self.scene_cfg.input_views)
        if not 1 <= cfg.reference_views_per_step <= n_inputs:
            raise ConfigError(f"config key data.reference_views_per_step must lie in [1, {n_inputs}] (the input "
                              f"views), got {cfg.reference_views_per_step}")
        super().configure()
        self.input_views: List[InputView] = []  # every input, first = the reference camera; built by setup

    def _check_aspect(self, rgba: Tensor, what: str) -> None:
        aspect = rgba.shape[1] / rgba.shape[0]
        for s in self.stages.stages:
            if abs(s.width / s.height - aspect) > 0.01 * aspect:
                raise ConfigError(
                    f"data.height × data.width ({s.height}×{s.width}) must keep the aspect of {what} "
                    f"({rgba.shape[0]}×{rgba.shape[1]})"
                )

    def _load_image(self) -> Tensor:
        """The first input's whole frame as straight-alpha RGBA (H, W, 4): the reference view is not cropped."""
        if self.mipnerf360 is not None:
            rgba = self.mipnerf360.input_rgba()  # the scene's square frame of the input view, as the test views
        else:
            rgba = load_image(self.cfg.image_path)
        self._check_aspect(rgba, "the input frame")
        return rgba

    def _other_inputs(self) -> List[InputView]:
        """Inputs 2..N: their frames and canonical-frame cameras (centred pinhole, fov by ``scene_intrinsics``)."""
        if self.scene is None or len(self.scene.inputs) < 2:
            return []
        inputs, views = self.scene.inputs, []
        for k in range(1, len(inputs)):
            index = int(inputs.indices[k])
            rgba = load_image(self.scene.input_paths[k])
            self._check_aspect(rgba, f"input view {index}")
            fovy = input_fovy_deg(inputs.raw_K[k], rgba.shape[0], self.cfg.scene_intrinsics)
            views.append(InputView(rgba, camera_dict(inputs.c2w[k:k + 1].float(), fovy)))
        return views

    def setup(self, stage: Optional[str] = None) -> None:
        """Read the inputs and the scene (first call only) and build the datasets of ``stage``."""
        if self.mipnerf360 is not None:
            self.mipnerf360.setup()
        elif self.scene is None:
            cfg = self.cfg
            canonical = canonical_camera(
                cfg.default_elevation_deg, cfg.default_azimuth_deg, cfg.default_camera_distance
            )
            self.scene = load_posed_scene(self.scene_cfg, canonical, prefix="data.scene")
        if self.rgba is None:
            self.rgba = self._load_image()
            self.input_views = [InputView(self.rgba, self.reference.cameras()), *self._other_inputs()]
            if len(self.input_views) > 1:
                log_input_coverage(self.input_views, self.cfg.random_camera)
        if stage in (None, "fit"):
            sampler = self.sampler if self.cfg.use_random_camera else None
            self.train_dataset = SingleImageIterableDataset(
                self.cfg, self.input_views, sampler, self.cfg.reference_views_per_step
            )
        if stage in (None, "fit", "validate"):
            self.val_dataset = self.sampler.eval_dataset("val")
        if stage in (None, "test", "predict"):
            self.test_dataset = self._test_dataset()

    def conditioning(self) -> Dict[str, Tensor]:
        """The guidance's input views: ``images`` (N, S, S, 3), the ``crop_mode`` square of every input's frame in
        [0, 1] composited on white (S = the first input's square side, capped at ``conditioning_max_size``),
        ``c2w`` (N, 4, 4) in the canonical frame and ``fov_deg`` (N,), each the vertical fov of its square.
        Needs :meth:`setup`."""
        first = super().conditioning()
        if len(self.input_views) < 2:
            return first
        side = first["images"].shape[1]
        images, c2w, fovs = [first["images"]], [first["c2w"]], [first["fov_deg"]]
        for view in self.input_views[1:]:
            square, fovy = square_input(view.rgba, float(view.cameras["fov_deg"][0]), self.cfg.crop_mode)
            images.append(resize_image(composite(square, 1.0), side, side).clamp(0.0, 1.0)[None])
            c2w.append(view.cameras["c2w"])
            fovs.append(torch.tensor([fovy], dtype=torch.float32))
        return {"images": torch.cat(images).contiguous(), "c2w": torch.cat(c2w), "fov_deg": torch.cat(fovs)}

    def _test_dataset(self) -> PosedViewDataset:
        if self.mipnerf360 is not None:
            m360 = self.mipnerf360
            size = m360.cfg.resolution
            return PosedViewDataset(m360.targets, m360.cond_index, m360.canonical_c2w, size, size)
        scene, targets = self.scene, self.scene.targets
        height, width = int(self.scene_cfg.height), int(self.scene_cfg.width)
        if self.cfg.scene_intrinsics == "zeronvs":
            fovy = float(self.cfg.default_fovy_deg)
            targets = dataclasses.replace(
                targets,
                intrinsics=centred_intrinsics(fovy, height, width, len(targets)),
                fov_deg=torch.full((len(targets),), fovy),
            )
        if len(targets):
            cond_index = select_nearest(scene.inputs.selection_c2w, scene.targets.selection_c2w)[0]
        else:
            cond_index = torch.zeros(0, dtype=torch.long)
        return PosedViewDataset(targets, cond_index, scene.inputs.c2w[0].float(), height, width)

    @property
    def object_masks(self) -> bool:
        """Whether the test views' masks are the scene's object masks (``scene.use_masks``): the test pass then adds
        RegNeRF's masked metrics."""
        return self.mipnerf360 is None and bool(self.scene_cfg.use_masks)

    @property
    def targets(self) -> ViewSet:
        """The scene's test views (for the systems' metrics)."""
        return self.mipnerf360.targets if self.mipnerf360 is not None else self.scene.targets

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_dataset, batch_size=None, num_workers=0, collate_fn=self.test_dataset.collate)


def camera_dict(c2w: Tensor, fovy_deg: float) -> Dict[str, Tensor]:
    """The camera dict (B = 1) of an input camera ``c2w`` (1, 4, 4) with vertical fov ``fovy_deg``; its light sits
    at the camera (as the reference camera's)."""
    elevation, azimuth, distance = c2w_to_spherical(c2w)
    return {
        "c2w": c2w, "fov_deg": torch.tensor([float(fovy_deg)]), "elevation_deg": elevation, "azimuth_deg": azimuth,
        "camera_distance": distance, "light_positions": c2w[:, :3, 3].clone(),
    }


def auto_pose_scale(cameras: Any, first: int, distance: float) -> float:
    """``data.scene.pose_scale: auto`` for a capture in arbitrary units: the scale that puts the cameras' focus point
    (the point nearest to every optical axis, :func:`threestudio.data.mipnerf360.focus_point`), measured along the
    first input's optical axis, at ``distance`` (``data.default_camera_distance``) from the first input."""
    from threestudio.data.mipnerf360 import focus_point

    c2w = cameras.c2w.numpy()
    focus = focus_point(c2w)
    depth = float(-(focus - c2w[first, :3, 3]) @ c2w[first, :3, 2])  # OpenGL: the camera looks along -z
    if not depth > 0:
        raise UserError("data.scene.pose_scale: auto needs cameras that look at a common point in front of the "
                        f"first input (its depth along the first input's axis is {depth:.3g}); give a number")
    scale = round(distance / depth, 6)
    logger.info("data.scene.pose_scale = %g (auto: the cameras' focus point %.3g scene units in front of input %d "
                "is put at distance %g)", scale, depth, first, distance)
    return scale


COVER_MARGIN = (5.0, 0.05)  # degrees of elevation, units of distance beyond the inputs


def input_spherical(cfg: Any, cameras: Any) -> Tensor:
    """(N, 3) elevation (deg), azimuth (deg), distance of the inputs ``data.scene.input_views`` (camera indices) in
    the canonical frame: the first at ``data.default_*``, the others relative to it, translations × pose_scale."""
    scene = cfg.scene
    index = [int(i) for i in scene.input_views]
    c2w = cameras.c2w[index].clone()
    c2w[:, :3, 3] *= float(scene.get("pose_scale", PosedSceneConfig.pose_scale))
    canonical = canonical_camera(*(float(cfg.get(key, getattr(PosedInputsConfig, key))) for key in (
        "default_elevation_deg", "default_azimuth_deg", "default_camera_distance")))
    posed = canonical @ torch.linalg.inv(c2w[0]) @ c2w
    return torch.stack(c2w_to_spherical(posed.float()), dim=-1)


def cover_input_cameras(cfg: DictConfig, cameras: Any) -> None:
    """Widen ``random_camera.elevation_range`` and ``camera_distance_range`` in place to every input ± margin."""
    from threestudio.data.random_camera import RandomCameraConfig as Defaults
    from threestudio.data.utils import as_range

    camera = cfg.get("random_camera") or OmegaConf.create({})
    found = input_spherical(cfg, cameras)
    for key, column, margin, bounds in (("elevation_range", 0, COVER_MARGIN[0], (-89.0, 89.0)),
                                        ("camera_distance_range", 2, COVER_MARGIN[1], (1e-3, math.inf))):
        low, high = as_range(camera.get(key, getattr(Defaults(), key)), f"data.random_camera.{key}")
        need_low = max(bounds[0], float(found[:, column].min()) - margin)
        need_high = min(bounds[1], float(found[:, column].max()) + margin)
        if need_low < low or need_high > high:
            widened = [round(min(low, need_low), 4), round(max(high, need_high), 4)]
            logger.info("data.random_camera.%s %s → %s to cover the %d input views (data.cover_inputs)", key,
                        [low, high], widened, len(found))
            camera[key] = widened
    cfg.random_camera = camera


def log_input_coverage(views: List[InputView], camera: RandomCameraConfig) -> None:
    """One line per input: where it sits in the random SDS cameras' ranges (elevation, distance); a warning for an
    input outside them (the SDS views then never come near it)."""
    from threestudio.data.utils import as_range

    low_e, high_e = as_range(camera.elevation_range, "data.random_camera.elevation_range")
    low_d, high_d = as_range(camera.camera_distance_range, "data.random_camera.camera_distance_range")
    for k, view in enumerate(views):
        e, a, d = (float(view.cameras[key][0]) for key in ("elevation_deg", "azimuth_deg", "camera_distance"))
        inside = low_e <= e <= high_e and low_d <= d <= high_d
        (logger.info if inside else logger.warning)(
            "input %d: elevation %.1f°, azimuth %.1f°, distance %.3f (random SDS cameras: elevation [%g, %g], "
            "distance [%g, %g])%s", k, e, a, d, low_e, high_e, low_d, high_d,
            "" if inside else ": outside the random cameras' ranges, widen them to cover it",
        )
