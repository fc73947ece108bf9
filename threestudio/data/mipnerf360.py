"""Mip-NeRF 360 scenes as ZeroNVS evaluates them: reading, 256² frames, and the scene normalisation.

What ZeroNVS does (kylesargent/ZeroNVS ``launch_eval_mipnerf360.sh`` and ``threestudio/data/image.py``
``get_scene``; the focus point and radius of kylesargent/zeronvs_diffusion ``get_world_data``), re-derived here:

1. Poses: OpenGL camera-to-world (x right, y up, z back). The public release's ``poses_bounds.npy`` (LLFF: per
   view a 3×5 matrix [R | t | (H, W, f)] whose rotation columns are (down, right, back)) becomes (right, up, back)
   by ``[c1, -c0, c2]``.
2. :func:`transform_poses_pca` (multinerf's): centre the camera positions on their mean, rotate the principal axes
   of the positions onto x, y, z (largest variance first; a reflection is turned into a rotation), turn the world
   upside down if the cameras' mean up vector points to −z, and scale the positions into [-1, 1]³.
3. :func:`focus_point`: the point nearest (least squares) to every camera's optical axis; positions are recentred
   on it and divided by the focus-point scene radius, the mean camera distance to the focus point.
4. The input view: views sorted by the angle between each camera's rotation and the rotation of a camera at the
   same place looking at the focus point with +z up (:func:`look_at_rotation`; roll and off-centre aim count); the
   protocol's ``view_idx`` is a rank in that order (:data:`PROTOCOL`).
5. The input camera's elevation ``e = atan2(z, |xy|)`` (degrees, relative to the focus point) and the random
   views' elevation range [clip(e − 30, min(5, e), 80), clip(e + 50, 5, 80)], rounded to 0.01°.
6. Frames: ZeroNVS's data are 256² frames with ``cx = cy = 128`` and square pixels (its code asserts ``cx == 128``
   and takes the fov as ``2·atan(cx / fx)``). From the release we take each image of ``images_N`` (the smallest
   whose shorter side is ≥ 256 px; else the largest available), crop the centred square of the shorter side (offset
   ``(long − short) // 2``, as ZeroNVS's ``central_crop_v2``), resize it to 256² (antialiased bilinear), and set
   ``f_256 = f_N · 256 / short`` with ``f_N`` the LLFF focal scaled to ``images_N``; the vertical fov is
   ``2·atan(128 / f_256)``. LLFF has no principal point (it is the image centre), so cx = cy = 128 holds exactly up
   to the half-pixel of an odd crop offset (≤ 0.5 px of the source).

Scores (the protocol's test set): every view except the input, at 256².

ZeroNVS also distributes its own preprocessed scenes as one pickle. Unpickling can run code, so it is read only by
:func:`convert_pickle` (``python -m threestudio.data.mipnerf360 --trust-pickle PICKLE --out DIR``), which writes a
numbers-only ``DIR/SCENE.npz`` per scene (``images`` uint8 (N, 256, 256, 3), ``c2w`` (N, 4, 4), ``fovy_deg``);
:func:`load_scene` reads such a file with ``allow_pickle=False``. Nothing else unpickles anything.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from threestudio.utils.errors import UserError

logger = logging.getLogger(__name__)

RESOLUTION = 256  # ZeroNVS's frames


@dataclass(frozen=True)
class SceneProtocol:
    """One scene of ``launch_eval_mipnerf360.sh``."""

    view_idx: int  # rank of the input view in the angle order
    precomputed_scale: float  # system.guidance.precomputed_scale
    manual_gt_to_pred_scale: float  # test-pose translations are divided by it


SCENES = ("bicycle", "bonsai", "counter", "garden", "kitchen", "room", "stump")
PROTOCOL: Dict[str, SceneProtocol] = {
    scene: SceneProtocol(view_idx, precomputed, gt_to_pred)
    for scene, view_idx, precomputed, gt_to_pred in zip(
        SCENES, (2, 0, 20, 0, 0, 0, 11), (0.9, 0.9, 0.9, 0.9, 0.9, 2.0, 0.9), (1.0, 1.0, 0.9, 1.0, 0.9, 0.9, 1.1)
    )
}
# the per-scene results the ZeroNVS README expects: scene -> (PSNR, SSIM, LPIPS)
PAPER_RESULTS: Dict[str, Tuple[float, float, float]] = {
    "bicycle": (13.184, 0.1707, 0.6536), "bonsai": (13.1137, 0.3164, 0.6122), "counter": (12.2189, 0.2473, 0.6823),
    "garden": (15.2817, 0.207, 0.5366), "kitchen": (13.2983, 0.254, 0.6245), "room": (11.8591, 0.3431, 0.5928),
    "stump": (13.124, 0.1396, 0.6717),
}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


# ---------------------------------------------------------------------------------------------- scene math
def llff_to_opengl(poses_bounds: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``poses_bounds`` (N, 17) → OpenGL camera-to-world (N, 4, 4) and (H, W, focal) (N, 3) of the full images."""
    arr = np.asarray(poses_bounds, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 17:
        raise ValueError(f"expected LLFF poses_bounds of shape (N, 17), got {arr.shape}")
    m = arr[:, :15].reshape(-1, 3, 5)
    c2w = np.tile(np.eye(4), (len(arr), 1, 1))
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2] = m[:, :, 1], -m[:, :, 0], m[:, :, 2]
    c2w[:, :3, 3] = m[:, :, 3]
    return c2w, m[:, :, 4]


def opengl_to_llff(c2w: np.ndarray, hwf: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Inverse of :func:`llff_to_opengl`: (N, 4, 4), (N, 3), (N, 2) → ``poses_bounds`` (N, 17)."""
    c2w = np.asarray(c2w, dtype=np.float64)
    m = np.stack([-c2w[:, :3, 1], c2w[:, :3, 0], c2w[:, :3, 2], c2w[:, :3, 3], np.asarray(hwf, np.float64)], -1)
    return np.concatenate([m.reshape(-1, 15), np.asarray(bounds, np.float64)], axis=1)


def transform_poses_pca(c2w: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Principal axes of the camera positions onto x, y, z; (N, 4, 4) → (poses (N, 4, 4), transform (4, 4)).

    ``poses = transform @ c2w`` with the translations also multiplied by the returned scale (``transform`` is the
    similarity world → aligned, scale included: ``poses[:, :3, 3] = (transform @ c2w)[:, :3, 3]``; rotations are
    ``transform[:3, :3] / scale @ R``). The eigenvectors' signs are arbitrary up to a rotation about z, which no
    quantity of the protocol depends on.
    """
    t = c2w[:, :3, 3]
    mean = t.mean(axis=0)
    centred = t - mean
    eigval, eigvec = np.linalg.eigh(centred.T @ centred)
    rot = eigvec[:, np.argsort(eigval)[::-1]].T
    if np.linalg.det(rot) < 0:
        rot = np.diag([1.0, 1.0, -1.0]) @ rot
    transform = np.eye(4)
    transform[:3, :3], transform[:3, 3] = rot, -rot @ mean
    poses = transform @ c2w
    if poses[:, 2, 1].mean() < 0:  # the cameras' up vectors point down on average: turn the world over
        flip = np.diag([1.0, -1.0, -1.0, 1.0])
        poses, transform = flip @ poses, flip @ transform
    scale = 1.0 / np.max(np.abs(poses[:, :3, 3]))
    poses[:, :3, 3] *= scale
    transform = np.diag([scale, scale, scale, 1.0]) @ transform
    return poses, transform


def focus_point(c2w: np.ndarray) -> np.ndarray:
    """The point (3,) nearest in least squares to the optical axes of cameras ``c2w`` (N, 4, 4)."""
    axes, origins = c2w[:, :3, 2:3], c2w[:, :3, 3:4]
    proj = np.eye(3) - axes * np.transpose(axes, (0, 2, 1))  # projection onto the plane normal to each axis
    proj_sq = np.transpose(proj, (0, 2, 1)) @ proj
    return np.linalg.solve(proj_sq.mean(0), (proj_sq @ origins).mean(0))[:, 0]


def look_at_rotation(eye: np.ndarray, at: Sequence[float] = (0.0, 0.0, 0.0), up: Sequence[float] = (0.0, 0.0, 1.0),
                     eps: float = 1e-5) -> np.ndarray:
    """Rotation (3, 3) of an OpenGL camera at ``eye`` looking at ``at`` with ``up`` up (columns right, up, back)."""
    back = np.asarray(eye, np.float64) - np.asarray(at, np.float64)
    back = back / max(np.linalg.norm(back), eps)
    right = np.cross(np.asarray(up, np.float64), back)
    right = right / max(np.linalg.norm(right), eps)
    cam_up = np.cross(back, right)
    cam_up = cam_up / max(np.linalg.norm(cam_up), eps)
    return np.stack([right, cam_up, back], axis=1)


def rotation_angle(r1: np.ndarray, r2: np.ndarray) -> float:
    """Angle (radians) of the rotation taking ``r1`` to ``r2`` (3, 3)."""
    return float(np.arccos(np.clip((np.trace(r1.T @ r2) - 1.0) / 2.0, -1.0, 1.0)))


def elevation_deg(position: np.ndarray) -> float:
    """Elevation (degrees) of ``position`` (3,) seen from the origin, z up."""
    x, y, z = (float(v) for v in position)
    return math.degrees(math.atan2(z, math.hypot(x, y)))


def elevation_range(elevation: float) -> Tuple[float, float]:
    """ZeroNVS's random-view elevation range around the input elevation ``elevation`` (degrees)."""
    low = float(np.clip(elevation - 30.0, min(5.0, elevation), 80.0))
    high = float(np.clip(elevation + 50.0, 5.0, 80.0))
    return round(low, 2), round(high, 2)


@dataclass
class NormalizedPoses:
    """The protocol's world: poses (N, 4, 4), the input view, and what it took to get there."""

    c2w: np.ndarray  # OpenGL camera-to-world, z up, focus point at the origin, unit focus-point radius
    angles: np.ndarray  # (N,) radians between each rotation and the look-at-the-focus-point rotation
    order: np.ndarray  # (N,) view indices by increasing angle
    input_index: int  # order[view_idx]
    elevation_deg: float  # of the input camera
    focus_point: np.ndarray  # (3,) in the PCA frame (before recentring)
    radius: float  # focus-point scene radius in the PCA frame
    world_to_normalized: np.ndarray  # (4, 4) similarity: c2w = world_to_normalized @ raw c2w (scale on translations)


def normalize_poses(raw_c2w: np.ndarray, view_idx: int) -> NormalizedPoses:
    """PCA alignment, focus-point recentring and radius scaling of ``raw_c2w`` (N, 4, 4); picks the input view."""
    n = len(raw_c2w)
    if not 0 <= view_idx < n:
        raise UserError(f"input view rank {view_idx} is out of range: the scene has {n} views")
    raw_c2w = np.asarray(raw_c2w, np.float64)
    if not np.isfinite(raw_c2w).all():
        bad = int(np.flatnonzero(~np.isfinite(raw_c2w).reshape(n, -1).all(axis=1))[0])
        raise UserError(f"camera {bad} of the scene has a non-finite pose (NaN or inf)")
    t = raw_c2w[:, :3, 3]
    spread = float(np.abs(t - t.mean(axis=0)).max()) if n else 0.0
    if n < 2 or spread <= 1e-9 * max(1.0, float(np.abs(t).max())):
        raise UserError(f"the scene's {n} camera(s) all sit at one position: the protocol's normalisation (PCA of "
                        "the camera positions, focus point, radius) needs cameras around the scene")
    poses, transform = transform_poses_pca(raw_c2w)
    focus = focus_point(poses)
    poses[:, :3, 3] -= focus
    angles = np.array([rotation_angle(p[:3, :3], look_at_rotation(p[:3, 3])) for p in poses])
    order = np.argsort(angles, kind="stable")
    input_index = int(order[view_idx])
    elevation = elevation_deg(poses[input_index, :3, 3])
    radius = float(np.linalg.norm(poses[:, :3, 3], axis=1).mean())
    poses[:, :3, 3] /= radius
    recentre = np.eye(4)
    recentre[:3, 3] = -focus
    world_to_normalized = np.diag([1 / radius] * 3 + [1.0]) @ recentre @ transform
    return NormalizedPoses(poses, angles, order, input_index, elevation, focus, radius, world_to_normalized)


# ---------------------------------------------------------------------------------------------- frames
def center_crop_resize(image: Tensor, size: int = RESOLUTION) -> Tensor:
    """The centred square of the shorter side of ``image`` (H, W, C), resized to ``size``² (antialiased)."""
    from threestudio.utils.image import resize_image

    h, w = image.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return resize_image(image[top : top + s, left : left + s].float(), size, size).clamp(0.0, 1.0)


def square_fovy_deg(focal: float, short_side: float) -> float:
    """Vertical fov (degrees) of the centred square crop of side ``short_side`` for a pinhole of ``focal`` px."""
    return math.degrees(2.0 * math.atan2(short_side / 2.0, focal))


@dataclass
class SceneFrames:
    """A scene as read from disk, before normalisation."""

    images: Tensor  # (N, S, S, 3) float32 in [0, 1]
    c2w: np.ndarray  # (N, 4, 4) OpenGL camera-to-world of the source world
    fovy_deg: float  # vertical fov of the square frames
    names: List[str]
    image_paths: List[str]  # source image files ([] for a converted .npz)


def _list_images(folder: str) -> List[str]:
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))


def image_folder(scene_dir: str, size: int = RESOLUTION) -> str:
    """``images_N`` with the smallest images whose shorter side is ≥ ``size`` (else the largest images there are)."""
    from PIL import Image

    found = []
    for name in os.listdir(scene_dir):
        folder = os.path.join(scene_dir, name)
        if (name == "images" or (name.startswith("images_") and name[7:].isdigit())) and os.path.isdir(folder):
            files = _list_images(folder)
            if files:
                try:
                    with Image.open(files[0]) as im:
                        found.append((min(im.size), folder))
                except (OSError, ValueError) as e:  # empty, text, unreadable (PIL's UnidentifiedImageError)
                    raise UserError(f"cannot read image {files[0]}: {str(e).splitlines()[0]}") from None
    if not found:
        raise UserError(f"{scene_dir} has no images/ or images_N/ folder with images: expected the Mip-NeRF 360 "
                        "release layout (poses_bounds.npy, images_N/)")
    large = [f for f in found if f[0] >= size]
    return min(large)[1] if large else max(found)[1]


def read_release_scene(scene_dir: str, size: int = RESOLUTION, folder: Optional[str] = None) -> SceneFrames:
    """A scene in the public release layout: ``poses_bounds.npy`` and ``images_N/`` (see the module docstring)."""
    from threestudio.utils.image import load_image

    path = os.path.join(scene_dir, "poses_bounds.npy")
    if not os.path.isfile(path):
        raise UserError(f"{path} not found: expected the Mip-NeRF 360 release layout (poses_bounds.npy, images_N/)")
    try:
        c2w, hwf = llff_to_opengl(np.load(path, allow_pickle=False))
    except (ValueError, OSError, EOFError) as e:
        from threestudio.data.utils import numpy_load_error

        raise UserError(f"cannot read {path}: {numpy_load_error(path, e)}") from None
    full_h, focal = (float(hwf[0, 0]), float(hwf[0, 2])) if len(hwf) else (0.0, 0.0)
    if not (0 < full_h < math.inf and 0 < focal < math.inf):
        raise UserError(f"{path}: the first camera's image height {full_h:g} and focal length {focal:g} (its hwf "
                        "column) must be positive and finite")
    folder = folder or image_folder(scene_dir, size)
    files = _list_images(folder)
    if len(files) != len(c2w):
        raise UserError(f"{folder} has {len(files)} images but {path} has {len(c2w)} poses; they must match one to "
                        "one (sorted file names = pose order)")
    frames, fovy, first_hw = [], None, None
    for file in files:
        rgba = load_image(file)
        h, w = rgba.shape[:2]
        if min(h, w) < 2:
            raise UserError(f"image {file} is {w}x{h} px: too small to be a frame of the scene")
        first_hw = first_hw or (h, w)
        if (h, w) != first_hw:
            raise UserError(f"image {file} is {w}x{h} px but {files[0]} is {first_hw[1]}x{first_hw[0]}: the views "
                            "of a scene share one camera, so all its images must have the same size")
        frames.append(center_crop_resize(rgba[..., :3], size))
        if fovy is None:  # LLFF shares one camera across the views
            fovy = square_fovy_deg(focal * h / full_h, min(h, w))
    logger.info("Mip-NeRF 360 scene %s: %d views from %s, %d² frames, fovy %.3f°", scene_dir, len(files), folder,
                size, fovy)
    names = [os.path.splitext(os.path.basename(f))[0] for f in files]
    return SceneFrames(torch.stack(frames), c2w, float(fovy), names, files)


def read_npz_scene(path: str, size: int = RESOLUTION) -> SceneFrames:
    """A scene converted by :func:`convert_pickle` (numbers only, read with ``allow_pickle=False``)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            images, c2w, fovy = data["images"], data["c2w"].astype(np.float64), np.asarray(data["fovy_deg"])
            names = [str(n) for n in data["names"]] if "names" in data else [f"{i:03d}" for i in range(len(images))]
    except (OSError, KeyError, ValueError, TypeError, EOFError) as e:
        from threestudio.data.utils import numpy_load_error

        raise UserError(f"cannot read converted scene {path} ({numpy_load_error(path, e)}); write it with python -m "
                        "threestudio.data.mipnerf360 --trust-pickle PICKLE --out DIR") from None
    if images.ndim != 4 or images.shape[-1] != 3 or c2w.shape != (len(images), 4, 4) or 0 in images.shape:
        raise UserError(f"{path}: expected images (N, H, W, 3) and c2w (N, 4, 4), got {images.shape}, {c2w.shape}")
    if fovy.shape != () or not np.issubdtype(fovy.dtype, np.number) or not 0 < float(fovy) < 180:
        raise UserError(f"{path}: fovy_deg must be one number in (0, 180) degrees, got {fovy.tolist()!r:.60}")
    fovy = float(fovy)
    if images.dtype != np.uint8:
        if not np.issubdtype(images.dtype, np.floating) or not np.isfinite(images).all() or images.min() < 0 or \
                images.max() > 1:
            raise UserError(f"{path}: images must be uint8 (0-255) or floats in [0, 1], got {images.dtype} in "
                            f"[{images.min():g}, {images.max():g}]")
    frames = torch.from_numpy(images).float() / (255.0 if images.dtype == np.uint8 else 1.0)
    if frames.shape[1:3] != (size, size):
        # the frames are square already (256² in ZeroNVS's data): resizing keeps the fov
        frames = torch.stack([center_crop_resize(f, size) for f in frames])
    return SceneFrames(frames, c2w, fovy, names, [])


@dataclass
class MipNeRF360Scene:
    """A scene ready for the protocol (tensors; poses in the normalised world of :func:`normalize_poses`)."""

    images: Tensor  # (N, S, S, 3) in [0, 1]
    c2w: Tensor  # (N, 4, 4) float64 OpenGL camera-to-world, z up, focus point at the origin, unit radius
    intrinsics: Tensor  # (N, 4) fx, fy, cx, cy of the S² frames (cx = cy = S / 2)
    fovy_deg: float
    input_index: int
    elevation_deg: float
    elevation_range: Tuple[float, float]
    angles_deg: Tensor  # (N,)
    names: List[str]
    image_paths: List[str]
    poses: NormalizedPoses

    @property
    def target_indices(self) -> List[int]:
        """The scored views: every view but the input."""
        return [i for i in range(len(self.images)) if i != self.input_index]


def load_scene(path: str, view_idx: int, size: int = RESOLUTION) -> MipNeRF360Scene:
    """Read a scene folder (release layout) or a converted ``.npz`` and normalise it for the protocol."""
    if os.path.isdir(path):
        frames = read_release_scene(path, size)
    elif os.path.isfile(path) and path.endswith(".npz"):
        frames = read_npz_scene(path, size)
    else:
        raise UserError(f"Mip-NeRF 360 scene not found: {path} (a release folder with poses_bounds.npy, or a .npz "
                        "written by python -m threestudio.data.mipnerf360 --trust-pickle)")
    poses = normalize_poses(frames.c2w, view_idx)
    n = len(frames.images)
    focal = 0.5 * size / math.tan(math.radians(frames.fovy_deg) / 2)
    intrinsics = torch.tensor([[focal, focal, size / 2.0, size / 2.0]] * n, dtype=torch.float64)
    logger.info("Mip-NeRF 360 input view: rank %d in the angle order = view %d (%s), elevation %.2f°", view_idx,
                poses.input_index, frames.names[poses.input_index], poses.elevation_deg)
    return MipNeRF360Scene(
        images=frames.images, c2w=torch.from_numpy(poses.c2w), intrinsics=intrinsics, fovy_deg=frames.fovy_deg,
        input_index=poses.input_index, elevation_deg=poses.elevation_deg,
        elevation_range=elevation_range(poses.elevation_deg), angles_deg=torch.from_numpy(np.degrees(poses.angles)),
        names=frames.names, image_paths=frames.image_paths, poses=poses,
    )


# ---------------------------------------------------------------------------------------------- the pickle
def _scene_arrays(scene: Any, name: str) -> Dict[str, np.ndarray]:
    """Numbers of one scene of ZeroNVS's pickle: images (N, 256, 256, 3) in [0, 1], extrinsics (N, 3|4, 4)
    camera-to-world, intrinsics (N, 3|4, 3|4) pixel-to-camera (inverse K) with cx = 128.

    Raises:
        UserError: a scene that is not such a mapping (a missing key, a string, a singular intrinsics matrix,
            arrays of other shapes), naming the scene.
    """
    if not isinstance(scene, dict):
        raise UserError(f"scene {name}: expected a dict with images, extrinsics and intrinsics, got "
                        f"{type(scene).__name__}")
    missing = [k for k in ("images", "extrinsics", "intrinsics") if k not in scene]
    if missing:
        raise UserError(f"scene {name}: missing {', '.join(missing)} (it has {', '.join(map(str, scene))})")
    try:
        images = np.asarray(scene["images"], dtype=np.float64)
        extrinsics = np.asarray(scene["extrinsics"], dtype=np.float64)
        pixtocam = np.asarray(scene["intrinsics"], dtype=np.float64)
        pixtocam = pixtocam[0] if pixtocam.ndim == 3 else pixtocam
        camtopix = np.linalg.inv(pixtocam[:3, :3])
    except (TypeError, ValueError, IndexError, np.linalg.LinAlgError) as e:
        raise UserError(f"scene {name}: unreadable images/extrinsics/intrinsics ({str(e).splitlines()[0]})") from None
    if extrinsics.ndim != 3 or extrinsics.shape[1:] not in ((3, 4), (4, 4)) or not np.isfinite(camtopix).all():
        raise UserError(f"scene {name}: unexpected extrinsics {extrinsics.shape} or intrinsics {pixtocam.shape}")
    fovy = math.degrees(2 * math.atan2(camtopix[0, 2], camtopix[0, 0]))  # as get_scene: 2·atan(cx / fx)
    c2w = np.tile(np.eye(4), (len(extrinsics), 1, 1))
    c2w[:, :3, :4] = extrinsics[:, :3, :4]
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(c2w):
        raise UserError(f"scene {name}: unexpected arrays images {images.shape}, extrinsics {extrinsics.shape}")
    return {
        "images": np.clip(np.round(images * 255.0), 0, 255).astype(np.uint8),
        "c2w": c2w,
        "fovy_deg": np.float64(fovy),
        "names": np.array([f"{i:03d}" for i in range(len(images))]),
    }


def check_scene_name(name: Any, source: str) -> str:
    """``name`` when it can be one file name inside ``--out`` (a scene name from a file is data): a non-empty
    string without ``/``, ``\\``, NUL or control characters, not ``.``/``..``, at most 200 bytes. Else UserError."""
    if not isinstance(name, str) or not name or name in (".", "..") or any(c in name for c in "/\\") or any(
        ord(c) < 32 or ord(c) == 127 for c in name
    ) or len(name.encode()) > 200:
        raise UserError(f"{source}: scene name {name!r} is not a plain file name (no '/', '\\', '..', control "
                        "characters; at most 200 bytes); nothing is written outside --out")
    return name


def _check_out_folder(out_dir: str) -> None:
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"--out {out_dir} exists and is not a folder")


def convert_pickle(
    pickle_path: str, out_dir: str, trust_pickle: bool, scenes: Optional[Sequence[str]] = None
) -> List[str]:
    """Unpickle ZeroNVS's Mip-NeRF 360 file (only with ``trust_pickle``) and write ``out_dir/SCENE.npz`` per scene.

    Unpickling runs any code the file holds: this is the one place it happens, and only when the user says they
    trust the file. Every file is written inside ``out_dir`` (a scene name must be a plain file name; no write
    follows a link out of ``out_dir``). Returns the written paths.
    """
    if not trust_pickle:
        raise UserError(f"reading {pickle_path} needs full unpickling, which can run any code the file holds; pass "
                        "--trust-pickle if you trust the file and its source (it is converted once to .npz files)")
    if not os.path.isfile(pickle_path):
        raise UserError(f"pickle not found: {pickle_path}")
    _check_out_folder(out_dir)
    for name in scenes or ():
        check_scene_name(name, "--scenes")
    import pickle

    logger.warning("unpickling %s as asked (--trust-pickle): it can run code; converting it once to .npz files",
                   pickle_path)
    try:
        with open(pickle_path, "rb") as f:
            data = pickle.load(f)  # noqa: S301 (explicit opt-in above)
    except Exception as e:  # truncated or not a pickle (EOFError, UnpicklingError, ...): whatever it raised
        detail = str(e).splitlines()[0] if str(e) else ""
        raise UserError(f"cannot unpickle {pickle_path} ({type(e).__name__}: {detail}); is it ZeroNVS's Mip-NeRF 360 "
                        "file, complete?") from None
    if not isinstance(data, dict):
        raise UserError(f"{pickle_path}: expected a dict of scenes, got {type(data).__name__}")
    names = list(scenes or sorted(data, key=str))
    for name in names:
        if name not in data:
            raise UserError(f"{pickle_path} has no scene {name!r}; it has {', '.join(sorted(map(str, data)))}")
        check_scene_name(name, pickle_path)
    import io

    from threestudio.utils.io import confined_writes, write_bytes_atomic

    _check_out_folder(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    with confined_writes(out_dir):
        for name in names:
            arrays = _scene_arrays(data[name], name)
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            path = os.path.join(out_dir, f"{name}.npz")
            write_bytes_atomic(path, buf.getvalue())
            logger.info("wrote %s (%d views, fovy %.3f°)", path, len(arrays["images"]), float(arrays["fovy_deg"]))
            written.append(path)
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Convert ZeroNVS's Mip-NeRF 360 pickle once into numbers-only SCENE.npz files "
        "(scripts/eval_mipnerf360.py --root DIR reads them)."
    )
    parser.add_argument("pickle", help="ZeroNVS's preprocessed Mip-NeRF 360 file (a Python pickle)")
    parser.add_argument("--out", required=True, help="folder for SCENE.npz")
    parser.add_argument("--scenes", nargs="+", help="scenes to convert (default: all in the file)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow full unpickling of this file (it can run code): only for a file you trust")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(name)s: %(message)s")
    try:
        convert_pickle(args.pickle, args.out, args.trust_pickle, args.scenes)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
