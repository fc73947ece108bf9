"""Posed views: reading a scene's files, preparing its images, the rays of its cameras — shared by every datamodule.

The datamodules built on it: ``multiview-datamodule`` (:mod:`threestudio.data.multiview`, a posed scene),
``image-target-poses-datamodule`` (:mod:`threestudio.data.image_target_poses`, one image plus target poses) and
``posed-inputs-datamodule`` (:mod:`threestudio.data.posed_inputs`, single-image SDS tested on a scene).

**Scene formats.** :data:`SCENE_FORMATS` maps ``format`` (a scene config key) to a reader
``reader(scene_dir, use_masks) → SceneCameras``: the image (and mask) files and every camera's OpenGL
camera-to-world matrix, intrinsics and image size in the scene's world. ``idr`` is the IDR/NeuS/DTU layout —
``image/*.png`` (sorted order = camera index), optional ``mask/*.png``, ``cameras.npz`` decoded with
``P = world_mat · scale_mat`` (the normalised world: the object inside the unit sphere), see
:mod:`threestudio.data.idr_cameras`. A new format is one reader added to the table with
:func:`register_scene_format`; everything after it (view choice, world flip, scale, canonical frame, images, rays)
is shared.

**From cameras to views** (:func:`load_posed_scene`, config :class:`PosedSceneConfig`): views are chosen by
dataset index — ``input_views`` (the first is the conditioning/canonical view), ``target_views`` (null = every
view that is neither an input nor in ``excluded_views``) and ``excluded_views``, which only shapes the default
targets (views named explicitly are used even when excluded, with a warning). Poses, in order: if
``flip_world_yz``, rotate the world 180° about x (x, −y, −z): DTU's normalised world has its up roughly along −z,
and pixelNeRF's/ZeroNVS's DTU loader applies the same flip so z is roughly up; multiply all camera translations by
``pose_scale``; then, if ``canonicalize``, re-express everything in the pipeline's canonical frame as ZeroNVS's DTU
evaluation does (kylesargent/ZeroNVS ``threestudio/data/image.py``, ``ViewSynthesisCameraDataset``)::

    c2w_i ← canonical_c2w · inv(c2w_input) · c2w_i

where ``canonical_c2w`` is the orbit camera given by the datamodule (its ``default_elevation_deg`` /
``default_azimuth_deg`` / ``default_camera_distance``, looking at the origin, z up). The first input camera then
*is* the canonical camera. ZeroNVS's DTU settings are elevation 20°, azimuth 0, distance 1 and translations
divided by ``view_synthesis.scale: 2.02``, i.e. ``pose_scale = 1 / 2.02``. Without ``canonicalize`` the poses stay
in the (flipped, scaled) scene world. ``scene_center`` / ``scene_radius`` give the object's bounding sphere (the
normalised unit sphere) in the pipeline frame when the format knows it.

**Images** (:func:`prepare_image`): RGB(A) files; with ``use_masks`` the masks come from the mask files (else from
the alpha channel, all ones for RGB). ``background`` ``"black"``/``"white"`` composites the colour over that
background outside the mask; ``"none"`` leaves it. With ``crop_square`` every image is centre-cropped to a square
before resizing to ``height`` × ``width``; the crop shifts the principal point. Rays (:func:`view_rays`) use each
camera's real intrinsics scaled to the output (:func:`threestudio.data.idr_cameras.crop_resize_intrinsics`);
``fov_deg`` is the vertical fov of the output image.

**Batches** (names of docs/DESIGN.md): :class:`ViewRayDataset` — endless random rays across views with ground
truth (``rays_o``, ``rays_d``, ``rgb`` (1, 1, N, 3), ``mask``, ``weight`` (1, 1, N, 1), ``height`` = 1, ``width``
= N); :class:`PosedViewDataset` — one view per item at ``height`` × ``width``: ``rays_o``, ``rays_d`` (1, H, W, 3),
``c2w``, ``canonical_c2w`` (1, 4, 4), ``fov_deg``, ``elevation_deg``, ``azimuth_deg``, ``camera_distance``,
``index`` (the dataset view index), ``cond_index`` (position in the inputs of the nearest input view) (1,),
``light_positions`` (1, 3) (at the camera, as the orbits' lights), ``height``, ``width`` (ints), and ``rgb``
(1, H, W, 3), ``mask`` (1, H, W, 1) when there is ground truth.

:class:`PosedViewsDataModule` is the Lightning side shared by the two posed datamodules (ray training with optional
generated views, validation/test on the targets, ``conditioning()``, ``selection()``); a subclass only reads its
input and target :class:`ViewSet` s in ``load_views()``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset

from threestudio.data.idr_cameras import CAMERAS_FILENAME, crop_resize_intrinsics, list_images, load_idr_cameras
from threestudio.data.utils import numpy_load_error
from threestudio.data.view_selection import SELECTION_RULES, select_nearest
from threestudio.utils.base import Configurable
from threestudio.utils.camera import c2w_to_spherical, focal_to_fov, get_ray_directions, get_rays, orbit_c2w
from threestudio.utils.config import in_section, parse_structured
from threestudio.utils.errors import ConfigError, UserError
from threestudio.utils.image import composite, crop_to_square, load_image, resize_image

logger = logging.getLogger(__name__)

BACKGROUNDS = {"black": 0.0, "white": 1.0, "none": None}
_FLIP_WORLD_YZ = (1.0, -1.0, -1.0, 1.0)


# ---------------------------------------------------------------------------------------------- views and rays
@dataclass
class ViewSet:
    """A set of views in the pipeline frame. ``rgb``/``mask`` are None for views without ground truth."""

    indices: Tensor  # (N,) long: dataset view index (targets of one image: position)
    c2w: Tensor  # (N, 4, 4) OpenGL camera-to-world, pipeline frame
    intrinsics: Tensor  # (N, 4) fx, fy, cx, cy in output pixels (pixel centres at i + 0.5)
    fov_deg: Tensor  # (N,) vertical fov of the output image
    selection_c2w: Tensor  # (N, 4, 4) poses for view selection (scene world, before pose_scale)
    raw_K: Tensor  # (N, 3, 3) intrinsics of the source image (OpenCV pixels)
    raw_size: Tuple[int, int]  # (W, H) of the source images
    rgb: Optional[Tensor] = None  # (N, H, W, 3) in [0, 1]
    mask: Optional[Tensor] = None  # (N, H, W, 1) in {0, 1}

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def subset(self, positions: Sequence[int]) -> "ViewSet":
        """The views at ``positions`` (indices into this set)."""
        pos = torch.as_tensor(list(positions), dtype=torch.long)
        per_view = {
            f.name: getattr(self, f.name)[pos]
            for f in dataclasses.fields(self)
            if f.name != "raw_size" and getattr(self, f.name) is not None
        }
        return dataclasses.replace(self, **per_view)


def view_rays(c2w: Tensor, intrinsics: Tensor, height: int, width: int) -> Tuple[Tensor, Tensor]:
    """World rays (N, H, W, 3) of cameras ``c2w`` (N, 4, 4) with ``intrinsics`` (N, 4) = fx, fy, cx, cy."""
    rays_o, rays_d = [], []
    for cam, (fx, fy, cx, cy) in zip(c2w, intrinsics.tolist()):
        dirs = get_ray_directions(height, width, (fx, fy), (cx, cy))
        o, d = get_rays(dirs, cam[None].float())
        rays_o.append(o)
        rays_d.append(d)
    return torch.cat(rays_o), torch.cat(rays_d)


def prepare_image(
    rgba: Tensor, mask: Optional[Tensor], height: int, width: int, crop_square: bool, background: Optional[float]
) -> Tuple[Tensor, Tensor]:
    """(H0, W0, 4) RGBA and optional (H0, W0) mask → ``rgb`` (H, W, 3), ``mask`` (H, W, 1) in {0, 1}.

    The mask defaults to alpha > 0.5; ``background`` (a grey level, or None) replaces colour outside it (before
    resizing, so edges blend with the background, and again outside the resized, binarised mask).
    """
    if mask is None:
        mask = (rgba[..., 3] > 0.5).float()
    rgb = rgba[..., :3]
    if background is not None:
        rgb = composite(torch.cat([rgb, mask[..., None]], dim=-1), background)
    stacked = torch.cat([rgb, mask[..., None]], dim=-1)
    if crop_square:
        stacked = crop_to_square(stacked, "center_crop")
    stacked = resize_image(stacked, height, width).clamp(0.0, 1.0)
    rgb, mask = stacked[..., :3], (stacked[..., 3:] > 0.5).float()
    if background is not None:  # exactly the background outside the binarised mask
        rgb = rgb * mask + background * (1.0 - mask)
    return rgb.contiguous(), mask


MAX_POSE_TRANSLATION = 1e4  # scene units; the input camera is about 1 from the origin


def load_c2w_file(path: str) -> Tensor:
    """Camera-to-world matrices (N, 4, 4) from a ``.npy`` or ``.json`` file; UserError naming file and index."""
    if not os.path.isfile(path):
        raise UserError(f"target_c2w_path not found: {path}")
    try:
        if path.lower().endswith(".json"):
            with open(path) as f:
                data = json.load(f)
            if isinstance(data, dict):
                if "c2w" not in data:
                    raise ValueError('a JSON object must have a "c2w" key holding the N×4×4 list')
                data = data["c2w"]
            arr = np.asarray(data, dtype=np.float64)
        else:
            arr = np.asarray(np.load(path, allow_pickle=False), dtype=np.float64)
    except Exception as e:
        raise UserError(f"cannot read camera poses {path}: {numpy_load_error(path, e)}") from None
    if arr.shape == (4, 4):
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != (4, 4) or arr.shape[0] == 0:
        raise UserError(f"{path}: expected N×4×4 camera-to-world matrices, got shape {arr.shape}")
    for i, m in enumerate(arr):
        if not np.all(np.isfinite(m)):
            raise UserError(f"{path}: camera {i} has non-finite entries")
        if abs(np.linalg.det(m[:3, :3])) < 1e-6 or not np.allclose(m[3], [0, 0, 0, 1], atol=1e-6):
            raise UserError(f"{path}: camera {i} is not a rigid camera-to-world matrix (singular or bad last row)")
        if np.abs(m[:3, :3]).max() > 1e3 or np.abs(m[:3, 3]).max() > MAX_POSE_TRANSLATION:
            raise UserError(
                f"{path}: camera {i} has entries of {np.abs(m[:3]).max():.3g}; poses are relative to the input "
                f"camera in scene units (translations within ±{MAX_POSE_TRANSLATION:g})"
            )
    return torch.from_numpy(arr)


def scale_translation(c2w: Tensor, scale: float) -> Tensor:
    """``c2w`` (..., 4, 4) with its translations multiplied by ``scale``."""
    out = c2w.clone()
    out[..., :3, 3] *= scale
    return out


def canonical_camera(elevation_deg: float, azimuth_deg: float, distance: float) -> Tensor:
    """(4, 4) float64 orbit camera looking at the origin, z up: the pipeline's input camera."""
    return orbit_c2w(
        torch.tensor([float(elevation_deg)], dtype=torch.float64),
        torch.tensor([float(azimuth_deg)], dtype=torch.float64),
        torch.tensor([float(distance)], dtype=torch.float64),
    )[0]


def _spherical(c2w: Tensor) -> Dict[str, Tensor]:
    elevation, azimuth, distance = c2w_to_spherical(c2w.float())
    return {"elevation_deg": elevation, "azimuth_deg": azimuth, "camera_distance": distance}


# ---------------------------------------------------------------------------------------------- scene formats
@dataclass
class SceneCameras:
    """What a scene-format reader returns: every camera of the scene, in the scene's world (OpenGL)."""

    image_paths: List[str]  # one per camera, in camera-index order
    mask_paths: Optional[List[str]]  # one per camera, or None (masks from the alpha channel)
    c2w: Tensor  # (N, 4, 4) float64 OpenGL camera-to-world
    K: Tensor  # (N, 3, 3) float64 OpenCV intrinsics of the source images
    image_size: Tuple[int, int]  # (W, H) of every source image
    normalized: bool  # the object lies inside the unit sphere at the origin of this world
    source: str  # the cameras' file, for messages

    def __len__(self) -> int:
        return len(self.image_paths)


SceneReader = Callable[[str, bool], SceneCameras]


def read_idr_scene(scene_dir: str, use_masks: bool) -> SceneCameras:
    """The IDR/NeuS/DTU layout (module docstring), checked: as many images (and masks) as cameras."""
    if not os.path.isdir(scene_dir):
        raise UserError(f"data.scene_dir not found: {scene_dir}")
    npz = os.path.join(scene_dir, CAMERAS_FILENAME)
    image_dir = os.path.join(scene_dir, "image")
    image_paths = list_images(image_dir)
    if not image_paths:
        raise UserError(f"no images in {image_dir}: expected the IDR/NeuS layout")
    cameras = load_idr_cameras(scene_dir, normalize=True)
    n = len(cameras)
    if len(image_paths) != n:
        raise UserError(
            f"{image_dir} has {len(image_paths)} images but {npz} has {n} cameras; "
            "they must match one to one (sorted file order = camera index)"
        )
    mask_paths = None
    if use_masks:
        mask_dir = os.path.join(scene_dir, "mask")
        mask_paths = list_images(mask_dir)
        if len(mask_paths) != n:
            raise UserError(
                f"{mask_dir} has {len(mask_paths)} masks but {npz} has {n} cameras; "
                "set data.use_masks=false or provide one mask per camera"
            )
    if not cameras[0].normalized:
        logger.warning("%s has no scale_mat_<i>: poses stay in the raw world's units", npz)
    return SceneCameras(
        image_paths=image_paths,
        mask_paths=mask_paths,
        c2w=torch.from_numpy(np.stack([cam.c2w_opengl for cam in cameras])),
        K=torch.from_numpy(np.stack([cam.K for cam in cameras])),
        image_size=tuple(cameras[0].image_size),
        normalized=bool(cameras[0].normalized),
        source=npz,
    )


def _masks_beside(image_paths: List[str], mask_dir: str, use_masks: bool, source: str) -> Optional[List[str]]:
    """One mask per image from ``mask_dir`` (sorted order), or None without ``use_masks``."""
    if not use_masks:
        return None
    masks = list_images(mask_dir)
    if len(masks) != len(image_paths):
        raise UserError(f"{mask_dir} has {len(masks)} masks but {source} has {len(image_paths)} cameras; set "
                        "use_masks=false or provide one mask per camera (sorted file order = camera order)")
    return masks


def read_llff_scene(scene_dir: str, use_masks: bool) -> SceneCameras:
    """The LLFF / Mip-NeRF 360 release layout: ``poses_bounds.npy`` (per view [R | t | (H, W, f)], rotation
    columns (down, right, back)) and ``images/`` (or the first ``images_N/`` with one image per pose); the
    principal point is the image centre and the focal length is scaled to the images read."""
    from threestudio.data.idr_cameras import read_image_size
    from threestudio.data.mipnerf360 import llff_to_opengl

    path = os.path.join(scene_dir, "poses_bounds.npy")
    try:
        c2w, hwf = llff_to_opengl(np.load(path, allow_pickle=False))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    if not np.all(np.isfinite(c2w)) or not np.all(hwf[:, :2] > 0) or not np.all(hwf[:, 2] > 0):
        raise UserError(f"{path}: poses must be finite and H, W, focal positive")
    folders = ["images"] + sorted((n for n in os.listdir(scene_dir) if n.startswith("images_") and n[7:].isdigit()),
                                  key=lambda n: int(n[7:]))
    image_paths: List[str] = []
    for name in folders:
        image_paths = list_images(os.path.join(scene_dir, name))
        if len(image_paths) == len(c2w):
            break
    if len(image_paths) != len(c2w):
        raise UserError(f"{scene_dir}: no images/ or images_N/ folder with one image per pose of {path} "
                        f"({len(c2w)} poses; sorted file names = pose order)")
    width, height = read_image_size(image_paths[0])
    focal = hwf[:, 2] * height / hwf[:, 0]
    K = np.zeros((len(c2w), 3, 3))
    K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = focal, focal, width / 2.0, height / 2.0, 1.0
    return SceneCameras(
        image_paths=image_paths,
        mask_paths=_masks_beside(image_paths, os.path.join(scene_dir, "masks"), use_masks, path),
        c2w=torch.from_numpy(c2w), K=torch.from_numpy(K), image_size=(width, height), normalized=False, source=path,
    )


def _frame_image(scene_dir: str, file_path: str, where: str) -> str:
    """A frame's image file: ``file_path`` relative to the scene folder, with ``.png`` added when it has no
    extension (instant-ngp's Blender scenes)."""
    path = os.path.normpath(os.path.join(scene_dir, file_path))
    if not os.path.isfile(path) and not os.path.splitext(path)[1] and os.path.isfile(path + ".png"):
        path += ".png"
    if not os.path.isfile(path):
        raise UserError(f"{where}: image {file_path!r} not found (looked for {path})")
    return path


def read_transforms_scene(scene_dir: str, use_masks: bool) -> SceneCameras:
    """nerfstudio / instant-ngp ``transforms.json`` (what ``ns-process-data`` writes for a COLMAP capture): per frame
    ``file_path`` and ``transform_matrix`` (OpenGL camera-to-world); intrinsics ``fl_x``, ``fl_y``, ``cx``, ``cy``,
    ``w``, ``h`` at the top level or per frame, or instant-ngp's ``camera_angle_x`` (horizontal fov, radians) with
    the principal point at the image centre. Distortion coefficients are not applied (a warning names them).
    Camera index = position in ``frames``; masks from a frame's ``mask_path`` with ``use_masks``."""
    from threestudio.data.idr_cameras import read_image_size

    path = os.path.join(scene_dir, "transforms.json")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
        frames = meta["frames"]
        if not isinstance(frames, list) or not frames:
            raise ValueError("'frames' must be a non-empty list")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    distortion = [k for k in ("k1", "k2", "k3", "k4", "p1", "p2") if float(meta.get(k, 0) or 0) != 0]
    if distortion:
        logger.warning("%s: distortion coefficients %s are not applied (the images are taken as pinhole)", path,
                       ", ".join(distortion))
    image_paths, mask_paths, c2w, K = [], [], [], []
    size = None
    for i, frame in enumerate(frames):
        where = f"{path} frame {i}"
        if not isinstance(frame, dict) or "file_path" not in frame or "transform_matrix" not in frame:
            raise UserError(f"{where}: a frame needs file_path and transform_matrix")
        image_paths.append(_frame_image(scene_dir, str(frame["file_path"]), where))
        if use_masks:
            if "mask_path" not in frame:
                raise UserError(f"{where}: use_masks needs a mask_path in every frame")
            mask_paths.append(_frame_image(scene_dir, str(frame["mask_path"]), where))
        m = np.asarray(frame["transform_matrix"], dtype=np.float64)
        if m.shape != (4, 4) or not np.all(np.isfinite(m)) or abs(np.linalg.det(m[:3, :3])) < 1e-6:
            raise UserError(f"{where}: transform_matrix must be a finite, non-singular 4×4 camera-to-world matrix")
        c2w.append(m)

        def get(key: str, frame: dict = frame) -> Optional[float]:
            value = frame.get(key, meta.get(key))
            return None if value is None else float(value)

        w, h = get("w"), get("h")
        if w is None or h is None:
            w, h = read_image_size(image_paths[-1])
        if size is None:
            size = (int(w), int(h))
        elif (int(w), int(h)) != size:
            raise UserError(f"{where}: its images are {int(w)}x{int(h)}, frame 0's {size[0]}x{size[1]}; all frames "
                            "must have one image size")
        fx, fy = get("fl_x"), get("fl_y")
        if fx is None and get("camera_angle_x") is not None:
            fx = 0.5 * w / math.tan(0.5 * get("camera_angle_x"))
        if fx is None:
            raise UserError(f"{where}: no intrinsics: give fl_x (and fl_y, cx, cy) or camera_angle_x")
        fy = fx if fy is None else fy
        cx, cy = get("cx"), get("cy")
        K.append([[fx, 0.0, w / 2.0 if cx is None else cx], [0.0, fy, h / 2.0 if cy is None else cy], [0, 0, 1.0]])
    return SceneCameras(
        image_paths=image_paths, mask_paths=mask_paths if use_masks else None,
        c2w=torch.from_numpy(np.stack(c2w)), K=torch.tensor(K, dtype=torch.float64), image_size=size,
        normalized=False, source=path,
    )


# format name → reader (scene_dir, use_masks) → SceneCameras; "auto" detects it from the folder (FORMAT_MARKERS)
SCENE_FORMATS: Dict[str, SceneReader] = {
    "idr": read_idr_scene, "llff": read_llff_scene, "transforms": read_transforms_scene,
}
FORMAT_MARKERS = {"idr": CAMERAS_FILENAME, "transforms": "transforms.json", "llff": "poses_bounds.npy"}


def register_scene_format(name: str, reader: SceneReader, marker: Optional[str] = None) -> None:
    """Make ``format: name`` read scenes with ``reader``; ``marker``: the file whose presence in a scene folder
    makes ``format: auto`` choose it."""
    SCENE_FORMATS[name] = reader
    if marker is not None:
        FORMAT_MARKERS[name] = marker


def detect_scene_format(scene_dir: str, fmt: str = "auto", key: str = "data.format") -> str:
    """``fmt``, or with ``auto`` the format whose marker file (:data:`FORMAT_MARKERS`) is in ``scene_dir``."""
    if fmt != "auto":
        if fmt not in SCENE_FORMATS:
            raise ConfigError(f"config key {key} is {fmt!r}; valid: auto, {', '.join(SCENE_FORMATS)}")
        return fmt
    if not os.path.isdir(scene_dir):
        raise UserError(f"{key.rsplit('.', 1)[0]}.scene_dir not found: {scene_dir}")
    found = [name for name, marker in FORMAT_MARKERS.items() if os.path.isfile(os.path.join(scene_dir, marker))]
    if not found:
        wanted = ", ".join(f"{marker} ({name})" for name, marker in FORMAT_MARKERS.items())
        raise UserError(f"{scene_dir} is not a posed scene folder: it has none of {wanted}")
    if len(found) > 1:
        logger.warning("%s holds the files of formats %s: reading it as %s (set %s to choose)", scene_dir,
                       ", ".join(found), found[0], key)
    return found[0]


def resolve_view_names(values: Sequence[Any], cameras: SceneCameras, key: str) -> List[int]:
    """Camera indices of views named by index (an int or digits) or by image file name (with or without its
    extension, e.g. ``frame_00012.jpg``). UserError naming an unknown or ambiguous name."""
    names: Dict[str, List[int]] = {}
    for i, path in enumerate(cameras.image_paths):
        base = os.path.basename(path)
        for name in {base, os.path.splitext(base)[0]}:
            names.setdefault(name, []).append(i)
    out = []
    for value in values:
        if isinstance(value, bool):
            raise ConfigError(f"config key {key}: {value!r} is not a view index or file name")
        if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
            out.append(int(value))
            continue
        hits = names.get(str(value), [])
        if len(hits) != 1:
            what = "names several images" if hits else "matches no image"
            raise UserError(f"{key}: {value!r} {what} of {cameras.source} (give a camera index or an image file "
                            f"name, e.g. {os.path.basename(cameras.image_paths[0])!r})")
        out.append(hits[0])
    return out


# ---------------------------------------------------------------------------------------------- a posed scene
@dataclass
class PosedSceneConfig:
    """The scene's files and views (module docstring): ``data.*`` of ``multiview-datamodule``, ``data.scene.*`` of
    ``posed-inputs-datamodule``."""

    scene_dir: Optional[str] = None
    format: str = "auto"  # auto (detected from the folder: FORMAT_MARKERS) or a key of SCENE_FORMATS
    # views by camera index or image file name; the first input is the canonical / conditioning view
    input_views: List[Any] = field(default_factory=lambda: [0])
    target_views: Optional[List[Any]] = None  # null: all views that are neither inputs nor excluded
    excluded_views: List[Any] = field(default_factory=list)
    height: int = 256
    width: int = 256
    crop_square: bool = True
    use_masks: bool = False
    background: str = "none"  # black | white | none
    canonicalize: bool = True
    flip_world_yz: bool = True
    pose_scale: float = 1.0


@dataclass
class PosedScene:
    """A scene read and posed: input and target views, and the object's bounding sphere when known."""

    inputs: ViewSet
    targets: ViewSet
    scene_center: Optional[Tensor] = None  # (3,) pipeline frame
    scene_radius: Optional[float] = None
    input_paths: List[str] = field(default_factory=list)  # the input views' image files, in input order


def check_posed_scene_config(cfg: PosedSceneConfig, prefix: str = "data") -> None:
    """Value checks of a :class:`PosedSceneConfig` (no file is read)."""
    if not cfg.scene_dir:
        raise ConfigError(f"config key {prefix}.scene_dir is empty; set it to the posed scene folder")
    if cfg.format != "auto" and cfg.format not in SCENE_FORMATS:
        raise ConfigError(f"config key {prefix}.format is {cfg.format!r}; valid: auto, {', '.join(SCENE_FORMATS)}")
    if cfg.background not in BACKGROUNDS:
        raise ConfigError(f"config key {prefix}.background is {cfg.background!r}; valid: {', '.join(BACKGROUNDS)}")
    for key in ("height", "width"):
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"config key {prefix}.{key} must be positive, got {getattr(cfg, key)}")
    if cfg.pose_scale <= 0:
        raise ConfigError(f"config key {prefix}.pose_scale must be positive, got {cfg.pose_scale}")
    if not cfg.input_views:
        raise ConfigError(f"config key {prefix}.input_views is empty; give at least one dataset view index")


def _choose_views(cfg: PosedSceneConfig, cameras: SceneCameras, prefix: str) -> Tuple[List[int], List[int]]:
    n, source = len(cameras), cameras.source
    inputs = resolve_view_names(cfg.input_views, cameras, f"{prefix}.input_views")
    excluded = set(resolve_view_names(cfg.excluded_views, cameras, f"{prefix}.excluded_views"))
    targets = (None if cfg.target_views is None
               else resolve_view_names(cfg.target_views, cameras, f"{prefix}.target_views"))
    for key, values in (("input_views", inputs), ("target_views", targets or []), ("excluded_views", excluded)):
        for i in values:
            if not 0 <= i < n:
                raise UserError(f"{prefix}.{key}: camera index {i} is out of range; {source} has cameras 0..{n - 1}")
    if len(set(inputs)) != len(inputs):
        raise ConfigError(f"config key {prefix}.input_views has repeated views: {inputs}")
    # excluded_views only shapes the default targets: views the user names explicitly win, with a warning
    for key, values in (("input_views", inputs), ("target_views", targets or [])):
        named = sorted(set(values) & excluded)
        if named:
            logger.warning("%s.%s names camera(s) %s of %s.excluded_views: used anyway", prefix, key, named, prefix)
    if targets is None:
        targets = [i for i in range(n) if i not in excluded and i not in inputs]
    if not targets:
        logger.warning("posed scene: no target views; validation and test have nothing to render")
    return inputs, targets


def _load_view(i: int, cameras: SceneCameras, cfg: PosedSceneConfig) -> Tuple[Tensor, Tensor]:
    image_path = cameras.image_paths[i]
    mask_path = cameras.mask_paths[i] if cameras.mask_paths else None
    try:
        rgba = load_image(image_path)
        mask = None if mask_path is None else load_image(mask_path)[..., 0]
    except UserError as e:
        raise UserError(f"camera {i}: {e}") from None
    size = (rgba.shape[1], rgba.shape[0])
    expected = tuple(cameras.image_size)
    if expected != size:
        raise UserError(
            f"camera {i}: image {image_path} is {size[0]}x{size[1]} but the scene's images are "
            f"{expected[0]}x{expected[1]}; all images must have the same size"
        )
    if mask is not None and tuple(mask.shape) != (size[1], size[0]):
        raise UserError(
            f"camera {i}: mask {mask_path} is {mask.shape[1]}x{mask.shape[0]}, image is {size[0]}x{size[1]}"
        )
    return prepare_image(rgba, mask, cfg.height, cfg.width, cfg.crop_square, BACKGROUNDS[cfg.background])


def load_posed_scene(cfg: PosedSceneConfig, canonical_c2w: Tensor, prefix: str = "data") -> PosedScene:
    """Read the scene of ``cfg`` (its ``format``'s reader) and pose its input and target views (module docstring).

    ``canonical_c2w`` (4, 4): where the first input camera goes with ``canonicalize``.
    """
    check_posed_scene_config(cfg, prefix)
    fmt = detect_scene_format(str(cfg.scene_dir), cfg.format, f"{prefix}.format")
    cameras = SCENE_FORMATS[fmt](str(cfg.scene_dir), bool(cfg.use_masks))
    inputs, targets = _choose_views(cfg, cameras, prefix)

    # scene world (OpenGL) → world flip → (selection poses) → pose_scale → canonical frame
    c2w = cameras.c2w
    if cfg.flip_world_yz:
        c2w = torch.tensor(_FLIP_WORLD_YZ, dtype=c2w.dtype)[:, None] * c2w  # diag(flip) @ c2w
    selection_c2w = c2w.clone()
    c2w = scale_translation(c2w, cfg.pose_scale)
    world_to_pipeline = torch.eye(4, dtype=c2w.dtype)
    if cfg.canonicalize:
        world_to_pipeline = canonical_c2w.to(c2w.dtype) @ torch.linalg.inv(c2w[inputs[0]])
        c2w = world_to_pipeline @ c2w
    scene = PosedScene(inputs=None, targets=None)  # type: ignore[arg-type]
    if cameras.normalized:  # the object's unit sphere, in the pipeline frame
        scene.scene_center = world_to_pipeline[:3, 3].float()
        scene.scene_radius = float(cfg.pose_scale)

    def view_set(indices: List[int]) -> ViewSet:
        intr, fovs, rgbs, masks = [], [], [], []
        for i in indices:
            K = cameras.K[i].numpy()
            fx, fy, cx, cy = crop_resize_intrinsics(K, cameras.image_size, (cfg.width, cfg.height), cfg.crop_square)
            intr.append([fx, fy, cx, cy])
            fovs.append(focal_to_fov(fy, cfg.height))
            rgb, mask = _load_view(i, cameras, cfg)
            rgbs.append(rgb)
            masks.append(mask)
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ViewSet(
            indices=idx,
            c2w=c2w[idx],
            intrinsics=torch.tensor(intr, dtype=torch.float64).reshape(-1, 4),
            fov_deg=torch.tensor(fovs, dtype=torch.float32),
            selection_c2w=selection_c2w[idx],
            raw_K=cameras.K[idx] if indices else torch.zeros(0, 3, 3),
            raw_size=cameras.image_size,
            rgb=torch.stack(rgbs) if rgbs else torch.zeros(0, cfg.height, cfg.width, 3),
            mask=torch.stack(masks) if masks else torch.zeros(0, cfg.height, cfg.width, 1),
        )

    scene.inputs, scene.targets = view_set(inputs), view_set(targets)
    scene.input_paths = [cameras.image_paths[i] for i in inputs]
    return scene


def load_generated_views(
    folder: str, targets: ViewSet, height: int, width: int, crop_square: bool, background: Optional[float]
) -> Tuple[ViewSet, int, int]:
    """The NVS step's images ``target_{i:03d}.png`` (``i`` = a target's ``index``) at their targets' poses.

    An image with the output's aspect ratio uses the target's own geometry; a square image of a non-square camera
    is taken as the centre square crop (what the NVS step produces), at ``height`` × ``height`` pixels. Returns the
    views with ground truth and their (height, width).
    """
    if not os.path.isdir(folder):
        raise UserError(f"data.generated_views_dir not found: {folder}")
    found = [
        (k, os.path.join(folder, f"target_{int(i):03d}.png"))
        for k, i in enumerate(targets.indices.tolist())
        if os.path.isfile(os.path.join(folder, f"target_{int(i):03d}.png"))
    ]
    if not found:
        raise UserError(f"no generated views target_<index>.png for the target views in {folder}")
    images = [load_image(path) for _, path in found]
    gh, gw = images[0].shape[:2]
    raw_w, raw_h = targets.raw_size
    if abs(gw / gh - width / height) < 1e-3:
        crop, out_w, out_h = crop_square, width, height
    elif gw == gh:
        crop, out_w, out_h = True, height, height
    else:
        raise UserError(
            f"generated view {found[0][1]} is {gw}x{gh}: expected the output aspect {width}x{height} "
            "or a square (centre crop)"
        )
    rgbs, masks, intr = [], [], []
    for (k, path), rgba in zip(found, images):
        if rgba.shape[:2] != (gh, gw):
            raise UserError(f"generated view {path} is {rgba.shape[1]}x{rgba.shape[0]}; all must be {gw}x{gh}")
        rgb, mask = prepare_image(rgba, None, out_h, out_w, False, background)
        rgbs.append(rgb)
        masks.append(mask)
        intr.append(crop_resize_intrinsics(targets.raw_K[k].numpy(), (raw_w, raw_h), (out_w, out_h), crop))
    views = targets.subset([k for k, _ in found])
    views.intrinsics = torch.tensor(intr, dtype=torch.float64)
    views.rgb, views.mask = torch.stack(rgbs), torch.stack(masks)
    logger.info("posed views: %d generated view(s) from %s at %dx%d", len(found), folder, out_w, out_h)
    return views, out_h, out_w


# ---------------------------------------------------------------------------------------------- datasets
class ViewRayDataset(IterableDataset):
    """Endless batches of random rays across views with ground truth (uniform over all their pixels)."""

    def __init__(self, views: List[Tuple[ViewSet, int, int, float]], rays_per_batch: int, seed: int = 0) -> None:
        """``views``: (view set with ground truth, height, width, loss weight) groups."""
        super().__init__()
        parts: Dict[str, List[Tensor]] = {k: [] for k in ("rays_o", "rays_d", "rgb", "mask", "weight")}
        for vs, h, w, weight in views:
            rays_o, rays_d = view_rays(vs.c2w, vs.intrinsics, h, w)
            parts["rays_o"].append(rays_o.reshape(-1, 3))
            parts["rays_d"].append(rays_d.reshape(-1, 3))
            parts["rgb"].append(vs.rgb.reshape(-1, 3))
            parts["mask"].append(vs.mask.reshape(-1, 1))
            parts["weight"].append(torch.full((rays_o.shape[0] * h * w, 1), float(weight)))
        self.rays = {k: torch.cat(v).float().contiguous() for k, v in parts.items()}
        self.rays_per_batch = rays_per_batch
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:  # rays available (the iterator itself is endless)
        return int(self.rays["rays_o"].shape[0])

    def sample(self) -> Dict[str, Any]:
        idx = torch.randint(0, len(self), (self.rays_per_batch,), generator=self.generator)
        batch: Dict[str, Any] = {k: v[idx][None, None] for k, v in self.rays.items()}
        batch.update(height=1, width=self.rays_per_batch)
        return batch

    def __iter__(self):
        while True:
            yield self.sample()

    def collate(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        return batch


class PosedViewDataset(Dataset):
    """One posed view per item, at the output resolution (see the module docstring for the keys)."""

    def __init__(self, targets: ViewSet, cond_index: Tensor, canonical_c2w: Tensor, height: int, width: int) -> None:
        super().__init__()
        self.targets, self.cond_index = targets, cond_index
        self.canonical_c2w, self.height, self.width = canonical_c2w, height, width

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, k: int) -> Dict[str, Any]:
        t = self.targets
        c2w = t.c2w[k : k + 1].float()
        rays_o, rays_d = view_rays(c2w, t.intrinsics[k : k + 1], self.height, self.width)
        batch: Dict[str, Any] = {
            "rays_o": rays_o,
            "rays_d": rays_d,
            "c2w": c2w,
            "canonical_c2w": self.canonical_c2w[None].float(),
            "fov_deg": t.fov_deg[k : k + 1].float(),
            **_spherical(c2w),
            "light_positions": c2w[:, :3, 3].clone(),
            "height": self.height,
            "width": self.width,
            "index": t.indices[k : k + 1],
            "cond_index": self.cond_index[k : k + 1],
        }
        if t.rgb is not None:
            batch["rgb"] = t.rgb[k : k + 1]
            batch["mask"] = t.mask[k : k + 1]
        return batch

    def collate(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        return batch


# ---------------------------------------------------------------------------------------------- datamodule base
@dataclass
class PosedViewsTrainingConfig:
    """Keys shared by the posed datamodules: what training, validation and view selection use."""

    selection: str = "angle"  # angle | distance | mixed (threestudio.data.view_selection)
    selection_distance_weight: float = 10.0  # mixed: degrees per unit of centre distance (before pose_scale)
    train_rays_per_batch: int = 1024
    generated_views_dir: Optional[str] = None
    generated_weight: float = 0.5
    n_val_views: Optional[int] = None  # evenly spaced targets for validation; null: all
    seed: int = 0  # random ray sampling


def check_training_config(cfg: Any) -> None:
    """Value checks of the :class:`PosedViewsTrainingConfig` keys of ``data``."""
    if cfg.selection not in SELECTION_RULES:
        raise ConfigError(f"config key data.selection is {cfg.selection!r}; valid: {', '.join(SELECTION_RULES)}")
    if cfg.train_rays_per_batch <= 0:
        raise ConfigError(f"config key data.train_rays_per_batch must be positive, got {cfg.train_rays_per_batch}")
    if cfg.n_val_views is not None and cfg.n_val_views < 1:
        raise ConfigError(f"config key data.n_val_views must be null or ≥ 1, got {cfg.n_val_views}")


class PosedViewsDataModule(LightningDataModule, Configurable):
    """Input views with ground truth and target views: random-ray training, one-view validation/test batches.

    Subclasses set ``Config`` (with the :class:`PosedViewsTrainingConfig` keys and ``height``, ``width``,
    ``crop_square``, ``background``, ``default_elevation_deg``/``default_azimuth_deg``/``default_camera_distance``)
    and implement :meth:`load_views`. Building checks the config; :meth:`setup` reads the files (once).
    After ``setup``: ``inputs`` / ``targets`` (:class:`ViewSet`), ``canonical_c2w`` (4, 4), ``cond_index`` (M,),
    ``scene_center`` (3,) / ``scene_radius`` (None when unknown).
    """

    def __init__(self, cfg: Optional[Any] = None) -> None:
        super().__init__()
        self._configure_from(cfg)

    @classmethod
    def parse_config(cls, cfg: Optional[Any]) -> Any:
        return parse_structured(cls.Config, in_section(cfg, "data"))

    def configure(self) -> None:
        self.check_config()
        check_training_config(self.cfg)
        self._loaded = False
        self.background = BACKGROUNDS[self.cfg.background]
        # the canonical camera of the pipeline: the input view's pose when canonicalising / for one image
        self.orbit_canonical_c2w = canonical_camera(
            self.cfg.default_elevation_deg, self.cfg.default_azimuth_deg, self.cfg.default_camera_distance
        )

    def check_config(self) -> None:
        """Checks of the subclass's own keys (no file is read)."""

    def load_views(self) -> PosedScene:
        """Read the inputs and targets (called once, by :meth:`setup`)."""
        raise NotImplementedError

    def _load(self) -> None:
        if self._loaded:
            return
        scene = self.load_views()
        self.inputs, self.targets = scene.inputs, scene.targets
        self.scene_center, self.scene_radius = scene.scene_center, scene.scene_radius
        self.canonical_c2w: Tensor = self.inputs.c2w[0].float()
        if len(self.targets):
            cond, angles, distances = select_nearest(
                self.inputs.selection_c2w, self.targets.selection_c2w, self.cfg.selection,
                self.cfg.selection_distance_weight,
            )
        else:
            cond, angles, distances = torch.zeros(0, dtype=torch.long), torch.zeros(0), torch.zeros(0)
        # per target: position in the inputs of its conditioning view, and that pair's angle / centre distance
        self.cond_index, self._angles, self._distances = cond, angles, distances
        logger.info(
            "posed views: %d input view(s) %s, %d target view(s), %dx%d%s",
            len(self.inputs), self.inputs.indices.tolist(), len(self.targets), self.cfg.width, self.cfg.height,
            " (centre square crop)" if self.cfg.crop_square else "",
        )
        self._loaded = True

    # ------------------------------------------------------------------ Lightning API
    def setup(self, stage: Optional[str] = None) -> None:
        """Read the files (first call only) and build the datasets of ``stage`` (None: all)."""
        self._load()
        cfg = self.cfg
        if stage in (None, "fit"):
            groups = [(self.inputs, cfg.height, cfg.width, 1.0)]
            if cfg.generated_views_dir:
                views, h, w = load_generated_views(
                    str(cfg.generated_views_dir), self.targets, cfg.height, cfg.width, cfg.crop_square, self.background
                )
                groups.append((views, h, w, float(cfg.generated_weight)))
            self.train_dataset = ViewRayDataset(groups, cfg.train_rays_per_batch, seed=cfg.seed)
        if stage in (None, "fit", "validate"):
            positions = list(range(len(self.targets)))
            if cfg.n_val_views is not None and cfg.n_val_views < len(positions):
                positions = np.linspace(0, len(positions) - 1, cfg.n_val_views).round().astype(int).tolist()
            self.val_dataset = PosedViewDataset(
                self.targets.subset(positions), self.cond_index[positions], self.canonical_c2w, cfg.height, cfg.width
            )
        if stage in (None, "test", "predict"):
            self.test_dataset = PosedViewDataset(
                self.targets, self.cond_index, self.canonical_c2w, cfg.height, cfg.width
            )

    def _loader(self, dataset: Any) -> DataLoader:
        return DataLoader(dataset, batch_size=None, num_workers=0, collate_fn=dataset.collate)

    def train_dataloader(self) -> DataLoader:
        if not hasattr(self, "train_dataset"):
            self.setup("fit")
        return self._loader(self.train_dataset)

    def val_dataloader(self) -> DataLoader:
        if not hasattr(self, "val_dataset"):
            self.setup("validate")
        return self._loader(self.val_dataset)

    def test_dataloader(self) -> DataLoader:
        if not hasattr(self, "test_dataset"):
            self.setup("test")
        return self._loader(self.test_dataset)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    # ------------------------------------------------------------------ for the systems
    def conditioning(self) -> Dict[str, Tensor]:
        """The input views as the diffusion model sees them: ``images`` (N, H, W, 3) in [0, 1] (square with
        ``crop_square``), ``c2w`` (N, 4, 4), ``fov_deg`` (N,), ``indices`` (N,) dataset view indices."""
        return {
            "images": self.inputs.rgb.clone(),
            "c2w": self.inputs.c2w.float().clone(),
            "fov_deg": self.inputs.fov_deg.clone(),
            "indices": self.inputs.indices.clone(),
        }

    def selection(self) -> List[Dict[str, Any]]:
        """For every target: ``{"target", "source"}`` dataset indices, the pair's rotation ``angle_deg`` and
        ``center_distance`` (scene units, before ``pose_scale``)."""
        return [
            {"target": int(t), "source": int(self.inputs.indices[c]), "angle_deg": float(a),
             "center_distance": float(d)}
            for t, c, a, d in zip(
                self.targets.indices.tolist(), self.cond_index.tolist(), self._angles.tolist(), self._distances.tolist()
            )
        ]
