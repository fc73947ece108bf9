"""Image and video I/O: reading user images safely, square crops, resizing, atomic writes.

Images inside the pipeline are float tensors in [0, 1], channels last: (H, W, C) or (B, H, W, C).
"""

from __future__ import annotations

import os
from typing import Iterable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from threestudio.utils.errors import UserError
from threestudio.utils.io import atomic_path

CropMode = Literal["center_crop", "pad", "stretch"]


EXAMPLE_PREFIX = "skimage:"


def resolve_image_path(path: str) -> str:
    """Map ``skimage:NAME`` to the sample image NAME.png that scikit-image ships (no download), else ``path``.

    The default example, ``skimage:motorcycle_left``, is the left view of the Middlebury 2014 "Motorcycle"
    stereo pair as bundled with scikit-image (see its ``skimage.data.stereo_motorcycle`` docs for credits).
    """
    if not path.startswith(EXAMPLE_PREFIX):
        return path
    import skimage.data

    name = path[len(EXAMPLE_PREFIX) :]
    folder = os.path.dirname(skimage.data.__file__)
    candidate = os.path.join(folder, name + ".png")
    if not os.path.isfile(candidate):
        bundled = sorted(f[:-4] for f in os.listdir(folder) if f.endswith(".png"))
        raise UserError(f"no bundled scikit-image sample {name!r}; available: {', '.join(bundled)}")
    return candidate


def load_image(path: str) -> Tensor:
    """Read an RGB(A)/grey image file as float RGBA (H, W, 4) in [0, 1] (alpha 1 where the file has none).

    ``path`` may be ``skimage:NAME`` for an image bundled with scikit-image (:func:`resolve_image_path`).
    Raises :class:`UserError` naming the file when it is missing or unreadable.
    """
    import imageio.v3 as iio

    path = resolve_image_path(path)
    if not os.path.isfile(path):
        raise UserError(f"image not found: {path}")
    try:
        arr = np.asarray(iio.imread(path))
    except Exception as e:
        raise UserError(f"cannot read image {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise UserError(f"cannot read image {path}: unexpected array shape {arr.shape}")
    scale = float(np.iinfo(arr.dtype).max) if np.issubdtype(arr.dtype, np.integer) else 1.0
    img = torch.from_numpy(arr.astype(np.float32) / scale)
    c = img.shape[-1]
    if c == 1:
        img = img.repeat(1, 1, 3)
    elif c == 2:  # grey + alpha
        img = torch.cat([img[..., :1].repeat(1, 1, 3), img[..., 1:]], dim=-1)
    if img.shape[-1] == 3:
        img = torch.cat([img, torch.ones_like(img[..., :1])], dim=-1)
    return img[..., :4].clamp(0.0, 1.0)


def composite(rgba: Tensor, background: float | Sequence[float] = 1.0) -> Tensor:
    """(…, 4) straight-alpha RGBA → (…, 3) RGB over a solid ``background`` colour."""
    bg = torch.as_tensor(background, dtype=rgba.dtype, device=rgba.device)
    alpha = rgba[..., 3:4]
    return rgba[..., :3] * alpha + bg * (1 - alpha)


def crop_to_square(img: Tensor, mode: CropMode = "center_crop", pad_value: float = 0.0) -> Tensor:
    """(H, W, C) → square (S, S, C): centre crop (S = min side), pad (S = max side) or no-op for 'stretch'.

    'stretch' leaves the image as it is; :func:`resize_image` to a square size then stretches it.
    Padding fills with ``pad_value`` (alpha 0 for RGBA, so padded pixels are outside the mask).
    """
    h, w = img.shape[:2]
    if mode == "stretch" or h == w:
        return img
    if mode == "center_crop":
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        return img[top : top + s, left : left + s]
    if mode == "pad":
        s = max(h, w)
        out = torch.full((s, s, img.shape[2]), pad_value, dtype=img.dtype)
        top, left = (s - h) // 2, (s - w) // 2
        out[top : top + h, left : left + w] = img
        return out
    raise UserError(f"unknown crop mode {mode!r}; valid: center_crop, pad, stretch")


def resize_image(img: Tensor, height: int, width: int, mode: str = "bilinear") -> Tensor:
    """Resize (H, W, C) or (B, H, W, C) images with antialiasing (area-correct downsampling)."""
    squeeze = img.dim() == 3
    x = (img[None] if squeeze else img).permute(0, 3, 1, 2)
    if x.shape[-2:] != (height, width):
        kwargs = {"antialias": True, "align_corners": False} if mode in ("bilinear", "bicubic") else {}
        x = F.interpolate(x, size=(height, width), mode=mode, **kwargs)
    x = x.permute(0, 2, 3, 1)
    return x[0] if squeeze else x


def to_uint8(img: Tensor | np.ndarray) -> np.ndarray:
    """[0, 1] float image (tensor or array) → uint8 array."""
    if isinstance(img, Tensor):
        img = img.detach().float().cpu().numpy()
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_image(path: str, img: Tensor | np.ndarray) -> str:
    """Write an (H, W, 3|4|1) [0, 1] image atomically (temporary name, then rename). Returns ``path``."""
    import imageio.v3 as iio

    arr = to_uint8(img)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, arr, extension=os.path.splitext(path)[1] or ".png")
    return path


def save_video(path: str, frames: Iterable[Tensor | np.ndarray], fps: int = 30) -> str:
    """Write [0, 1] frames (H, W, 3) to an H.264 mp4 atomically. Sizes are padded to even numbers."""
    import imageio.v2 as imageio

    with atomic_path(path) as tmp:
        writer = imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", macro_block_size=1)
        with writer:
            for frame in frames:
                arr = to_uint8(frame)
                h, w = arr.shape[:2]
                arr = np.pad(arr, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
                writer.append_data(arr)
    return path
