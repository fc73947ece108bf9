"""Decoding IDR/NeuS/DTU cameras (``cameras.npz``): pure functions, numpy in, numpy out.

Format (one entry per camera ``i``; the DTU scans in ``../shared/data/dtu`` use it):

- ``world_mat_i`` (4×4, or 3×4): its top three rows are ``P = K [R | t]``, the OpenCV projection of world
  points to pixels (x right, y down, z forward; pixel centres at integer coordinates).
- ``scale_mat_i`` (4×4, optional): maps the unit sphere to the object, ``world = scale_mat · normalised``.
  With it, ``P = world_mat · scale_mat`` projects *normalised* points, in which the object fits the unit sphere.

Decomposition (:func:`decompose_P`): P is defined up to a scale, sign included. The sign is fixed so that
det(P[:, :3]) > 0; an RQ decomposition splits ``P[:, :3] = K R`` with K upper triangular and R orthonormal;
signs are moved between K's columns and R's rows so that K has a positive diagonal (then det R = +1);
``t = K⁻¹ P[:, 3]``; K is divided by K[2, 2]; the camera-to-world (OpenCV) matrix is ``[Rᵀ | −Rᵀ t]``, so the
camera centre is ``−Rᵀ t``. The pipeline's OpenGL camera-to-world is ``c2w_cv · diag(1, −1, −1, 1)``
(:func:`threestudio.utils.camera.opencv_to_opengl`).

Fields of view use the real image size (W, H): ``fov_x = 2·atan(W / 2 / fx)``, ``fov_y = 2·atan(H / 2 / fy)``.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from threestudio.utils.errors import UserError

logger = logging.getLogger(__name__)

CAMERAS_FILENAME = "cameras.npz"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_WORLD_MAT = re.compile(r"^world_mat_(\d+)$")
_SCALE_MAT = re.compile(r"^scale_mat_(\d+)$")


@dataclass
class IDRCamera:
    """One decoded camera. Arrays are float64; ``image_size`` is (W, H) in pixels or None when unknown."""

    index: int
    K: np.ndarray  # (3, 3), K[2, 2] = 1
    c2w_opencv: np.ndarray  # (4, 4)
    c2w_opengl: np.ndarray  # (4, 4)
    normalized: bool  # True when scale_mat was applied
    image_size: Optional[Tuple[int, int]] = None

    @property
    def center(self) -> np.ndarray:
        """Camera centre (3,) in world (or normalised world) coordinates."""
        return self.c2w_opencv[:3, 3]

    @property
    def distance(self) -> float:
        """Distance of the camera centre to the origin."""
        return float(np.linalg.norm(self.center))

    @property
    def fov_x_deg(self) -> Optional[float]:
        return None if self.image_size is None else fov_from_focal(self.K[0, 0], self.image_size[0])

    @property
    def fov_y_deg(self) -> Optional[float]:
        return None if self.image_size is None else fov_from_focal(self.K[1, 1], self.image_size[1])

    def to_dict(self) -> Dict:
        """JSON-ready record with keys index, K, c2w_opencv, c2w_opengl, center, distance, fov_x_deg,
        fov_y_deg, normalized (and image_size)."""
        return {
            "index": self.index,
            "K": self.K.tolist(),
            "c2w_opencv": self.c2w_opencv.tolist(),
            "c2w_opengl": self.c2w_opengl.tolist(),
            "center": self.center.tolist(),
            "distance": self.distance,
            "fov_x_deg": self.fov_x_deg,
            "fov_y_deg": self.fov_y_deg,
            "normalized": self.normalized,
            "image_size": None if self.image_size is None else list(self.image_size),
        }


def fov_from_focal(focal: float, size: float) -> float:
    """Field of view in degrees spanned by ``size`` pixels at focal length ``focal`` (pixels)."""
    return float(np.degrees(2.0 * np.arctan(0.5 * size / focal)))


def opencv_to_opengl_np(c2w: np.ndarray) -> np.ndarray:
    """(..., 4, 4) OpenCV camera-to-world → OpenGL, via :func:`threestudio.utils.camera.opencv_to_opengl`."""
    import torch

    from threestudio.utils.camera import opencv_to_opengl

    return opencv_to_opengl(torch.from_numpy(np.asarray(c2w, dtype=np.float64))).numpy()


def rq_decomposition(M: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """RQ decomposition of a (3, 3) matrix: ``M = U Q`` with U upper triangular, Q orthonormal.

    No sign normalisation (see :func:`decompose_P`).
    """
    flip = np.eye(3)[::-1]  # reverses row order
    q, r = np.linalg.qr((flip @ M).T)
    upper = flip @ r.T @ flip
    ortho = flip @ q.T
    return upper, ortho


def decompose_P(P: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Split a projection ``P`` (3, 4) = s·K [R | t] into intrinsics and an OpenCV camera-to-world.

    Returns ``K`` (3, 3) with a positive diagonal and K[2, 2] = 1, and ``c2w_opencv`` (4, 4) = [Rᵀ | −Rᵀ t]
    with det R = +1. Raises ValueError for a non-finite or singular P.
    """
    P = np.asarray(P, dtype=np.float64)
    if P.shape == (4, 4):
        P = P[:3]
    if P.shape != (3, 4):
        raise ValueError(f"projection matrix must be 3×4 or 4×4, got shape {P.shape}")
    if not np.all(np.isfinite(P)):
        raise ValueError("projection matrix has non-finite entries")
    M = P[:, :3]
    det = np.linalg.det(M)
    scale = np.abs(M).max()
    if scale == 0 or abs(det) <= 1e-12 * scale**3:
        raise ValueError("projection matrix is singular (its left 3×3 block has no inverse)")
    if det < 0:  # P and −P are the same projection; pick the sign that makes R a rotation
        P = -P
        M = -M
    K, R = rq_decomposition(M)
    signs = np.diag(np.sign(np.diag(K)))
    K, R = K @ signs, signs @ R  # signs² = I, so K R is unchanged
    t = np.linalg.solve(K, P[:, 3])
    K = K / K[2, 2]
    c2w = np.eye(4)
    c2w[:3, :3] = R.T
    c2w[:3, 3] = -R.T @ t
    return K, c2w


def compose_P(K: np.ndarray, c2w_opencv: np.ndarray) -> np.ndarray:
    """The projection (3, 4) ``K [R | t]`` of an OpenCV camera-to-world (inverse of :func:`decompose_P`)."""
    w2c = np.linalg.inv(c2w_opencv)
    return K @ w2c[:3, :4]


def resolve_scene_path(path: str) -> Tuple[str, Optional[str]]:
    """``(cameras.npz path, scene folder or None)`` for a scene folder or a path to the .npz itself."""
    if os.path.isdir(path):
        npz = os.path.join(path, CAMERAS_FILENAME)
        if not os.path.isfile(npz):
            raise UserError(f"no {CAMERAS_FILENAME} in scene folder {path}: expected the IDR/NeuS layout")
        return npz, path
    if os.path.isfile(path):
        parent = os.path.dirname(os.path.abspath(path))
        has_images = os.path.isdir(os.path.join(parent, "image"))
        return path, parent if has_images else None
    raise UserError(f"scene folder or cameras file not found: {path}")


def list_images(folder: str) -> List[str]:
    """Image files of ``folder`` in sorted (= camera index) order; [] when the folder is absent."""
    if not os.path.isdir(folder):
        return []
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith("."))
    return [os.path.join(folder, n) for n in names]


def read_image_size(path: str) -> Tuple[int, int]:
    """(W, H) of an image file, reading only what is needed. UserError naming the file if unreadable."""
    import imageio.v3 as iio

    try:
        shape = iio.improps(path).shape
    except Exception as e:
        raise UserError(f"cannot read image {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return int(shape[1]), int(shape[0])


def _load_npz(npz_path: str) -> Dict[str, np.ndarray]:
    import zipfile

    if not zipfile.is_zipfile(npz_path):
        raise UserError(f"cameras file {npz_path} is not an .npz archive (numpy.savez of world_mat_<i> arrays)")
    try:
        with np.load(npz_path, allow_pickle=False) as data:
            return {k: np.asarray(data[k]) for k in data.files}
    except Exception as e:
        raise UserError(f"cannot read cameras file {npz_path}: {str(e).splitlines()[0] or type(e).__name__}") from None


def _float_matrix(arrays: Dict[str, np.ndarray], key: str) -> np.ndarray:
    """``arrays[key]`` as float64; ValueError naming the key for a non-numeric (string, object) array."""
    value = arrays[key]
    if not (np.issubdtype(value.dtype, np.number) or value.dtype == bool):
        raise ValueError(f"{key} holds {value.dtype} values, expected numbers")
    return value.astype(np.float64)


def camera_count(arrays: Dict[str, np.ndarray], npz_path: str) -> int:
    """Number of cameras in a loaded cameras.npz; UserError naming the first missing ``world_mat_i``.

    The count comes from the keys present (cameras must be 0..N-1), never from the largest index: a file
    holding only ``world_mat_999999999`` is refused without allocating anything by its index.
    """
    world = sorted({int(m.group(1)) for k in arrays if (m := _WORLD_MAT.match(k))})
    scale = [int(m.group(1)) for k in arrays if (m := _SCALE_MAT.match(k))]
    if not world:
        raise UserError(f"{npz_path} has no world_mat_<i> entries: not an IDR/NeuS cameras file")
    n = len(world)
    missing = next((i for i, index in enumerate(world) if index != i), None)
    if missing is None and scale and max(scale) >= n:
        missing = n  # a scale_mat_<n> without its world_mat_<n>
    if missing is not None:
        last = max(world[-1], max(scale, default=0))
        raise UserError(f"{npz_path}: camera {missing} has no world_mat_{missing} (cameras must be 0..N-1 without "
                        f"gaps; the file has {n} world_mat entries, the largest index {last})")
    return n


def load_idr_cameras(
    path: str,
    image_size: Optional[Tuple[int, int]] = None,
    normalize: bool = True,
    indices: Optional[Sequence[int]] = None,
) -> List[IDRCamera]:
    """Decode the cameras of a scene folder (IDR/NeuS layout) or of a cameras.npz file.

    ``image_size``: (W, H) for the fields of view; by default read from the scene's first image
    (None when there is none). ``normalize``: apply ``scale_mat_i`` when present. ``indices``: only these
    cameras (all by default). Raises :class:`UserError` naming the file and camera index for a missing
    world_mat, a singular or non-finite matrix or an index out of range.
    """
    npz_path, scene_dir = resolve_scene_path(path)
    arrays = _load_npz(npz_path)
    n = camera_count(arrays, npz_path)
    if image_size is None and scene_dir is not None:
        images = list_images(os.path.join(scene_dir, "image"))
        if images:
            image_size = read_image_size(images[0])
    wanted = list(range(n)) if indices is None else [int(i) for i in indices]
    for i in wanted:
        if not 0 <= i < n:
            raise UserError(f"camera index {i} is out of range: {npz_path} has cameras 0..{n - 1}")
    cameras = []
    for i in wanted:
        try:
            world_mat = _float_matrix(arrays, f"world_mat_{i}")
            has_scale = normalize and f"scale_mat_{i}" in arrays
            scale_mat = _float_matrix(arrays, f"scale_mat_{i}") if has_scale else None
            if world_mat.shape not in ((3, 4), (4, 4)):
                raise ValueError(f"world_mat_{i} has shape {world_mat.shape}, expected 4×4 or 3×4")
            P = world_mat[:3, :4]
            if scale_mat is not None:
                if scale_mat.shape != (4, 4):
                    raise ValueError(f"scale_mat_{i} has shape {scale_mat.shape}, expected 4×4")
                if not np.all(np.isfinite(scale_mat)):
                    raise ValueError(f"scale_mat_{i} has non-finite entries")
                P = P @ scale_mat
            K, c2w_cv = decompose_P(P)
        except ValueError as e:
            raise UserError(f"{npz_path}: camera {i}: {e}") from None
        cameras.append(
            IDRCamera(
                index=i,
                K=K,
                c2w_opencv=c2w_cv,
                c2w_opengl=opencv_to_opengl_np(c2w_cv),
                normalized=scale_mat is not None,
                image_size=image_size,
            )
        )
    return cameras


def crop_resize_intrinsics(
    K: np.ndarray, image_size: Tuple[int, int], out_size: Tuple[int, int], crop_square: bool
) -> Tuple[float, float, float, float]:
    """Intrinsics after an optional centre square crop and a resize, for ray generation.

    ``K`` (3, 3) in OpenCV pixels of an image of ``image_size`` (W, H); ``out_size`` (W, H) the output.
    Returns ``(fx, fy, cx, cy)`` in the output's pixels with pixel centres at ``i + 0.5`` (the convention of
    :func:`threestudio.utils.camera.get_ray_directions`). The crop offsets match
    :func:`threestudio.utils.image.crop_to_square` (integer, floor of half the excess).
    """
    w, h = image_size
    cx, cy = K[0, 2] + 0.5, K[1, 2] + 0.5  # OpenCV integer pixel centres → continuous coordinates
    if crop_square:
        side = min(w, h)
        cx, cy = cx - (w - side) // 2, cy - (h - side) // 2
        w = h = side
    sx, sy = out_size[0] / w, out_size[1] / h
    return float(K[0, 0] * sx), float(K[1, 1] * sy), float(cx * sx), float(cy * sy)
