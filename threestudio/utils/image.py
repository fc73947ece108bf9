"""Image and video I/O: reading user images safely, square crops, resizing, atomic writes.

Images inside the pipeline are float tensors in [0, 1], channels last: (H, W, C) or (B, H, W, C).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Iterable, Literal, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from threestudio.utils.errors import UserError
from threestudio.utils.io import atomic_path

logger = logging.getLogger(__name__)

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


def _describe_unreadable(path: str) -> str:
    """Why ``path`` is not an image, in words: empty, text, or an unknown binary format."""
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        return "the file is empty (0 bytes)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"not an image format Pillow knows (it starts with bytes {head[:8]!r}); pass a PNG or JPEG file"
    if text.isprintable() or all(c.isprintable() or c.isspace() for c in text):
        snippet = " ".join(text.split())[:40]
        return f"the file holds text, not an image (it starts with {snippet!r}); pass a PNG or JPEG file"
    return f"not an image format Pillow knows (it starts with bytes {head[:8]!r}); pass a PNG or JPEG file"


_PLAIN_MODES = {"L": 255.0, "LA": 255.0, "RGB": 255.0, "RGBA": 255.0, "I": 65535.0, "F": 1.0}


def _upright(im: Any, path: str) -> Any:
    """Apply the EXIF orientation (a phone's portrait photo is stored sideways), with a one-line warning."""
    from PIL import ImageOps

    orientation = im.getexif().get(0x0112, 1)
    if orientation in (None, 1):
        return im
    if orientation not in range(2, 9):
        logger.warning("image %s: its EXIF orientation %r is not a valid value (1-8); the pixels are used as stored",
                       path, orientation)
        return im
    logger.warning("image %s: applied its EXIF orientation %s (the stored pixels are turned)", path, orientation)
    return ImageOps.exif_transpose(im)


def _plain_mode(im: Any) -> Any:
    """Convert palette, 1-bit, CMYK, 16-bit, ... images to one of ``_PLAIN_MODES``."""
    if im.mode in _PLAIN_MODES:
        return im
    if im.mode.startswith("I;16") or im.mode == "I;32":
        return im.convert("I")
    if im.mode in ("P", "PA"):
        return im.convert("RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB")
    if im.mode == "1":
        return im.convert("L")
    return im.convert("RGBA" if "A" in im.getbands() else "RGB")


def shown_path(path: str) -> str:
    """``path`` for a one-line message: quoted with escapes (``'a\\nb.png'``) when it holds a newline or another
    control character, as it is otherwise."""
    return repr(path) if any(ord(c) < 32 or ord(c) == 127 for c in path) else path


def _file_kind(path: str) -> str:
    import stat

    mode = os.stat(path).st_mode
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a plain file"


def check_image_file(path: str) -> None:
    """UserError unless ``path`` is a regular file: "image not found", or what it is instead (a FIFO, a device
    such as /dev/zero, a folder; never opened: reading a FIFO would block)."""
    if not os.path.isfile(path):
        if os.path.exists(path):
            raise UserError(f"image {shown_path(path)} is {_file_kind(path)}, not a regular file; pass a PNG or JPEG "
                            "file")
        raise UserError(f"image not found: {shown_path(path)}")


def load_image(path: str, min_side: Optional[int] = None) -> Tensor:
    """Read an RGB(A)/grey image file as float RGBA (H, W, 4) in [0, 1] (alpha 1 where the file has none).

    ``path`` may be ``skimage:NAME`` for an image bundled with scikit-image (:func:`resolve_image_path`).
    The EXIF orientation is applied. ``min_side``: a large image is reduced while reading (JPEG: decoded
    at a smaller DCT scale; others: box-filtered in 8/16 bit) by the largest integer factor that keeps the
    shorter side at least ``min_side`` px, so an 8000² file never becomes a multi-GB float tensor.
    Raises :class:`UserError` naming the file when it is missing or unreadable; warns (one line) when the
    alpha channel is 0 everywhere.
    """
    from PIL import Image, UnidentifiedImageError

    path = resolve_image_path(path)
    check_image_file(path)
    try:
        with Image.open(path) as im:
            full_size = im.size
            if min_side is not None and im.format == "JPEG" and min(im.size) >= 2 * min_side:
                k = min_side / min(im.size)
                im.draft("RGB" if im.mode != "L" else "L", (math.ceil(im.width * k), math.ceil(im.height * k)))
            im = _plain_mode(_upright(im, path))
            factor = min(im.size) // min_side if min_side else 1
            if factor >= 2 and im.mode != "F":
                im = im.reduce(factor)
            arr = np.asarray(im)
            mode = im.mode
    except UnidentifiedImageError:
        raise UserError(f"cannot read image {shown_path(path)}: {_describe_unreadable(path)}") from None
    except Exception as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"cannot read image {shown_path(path)}: {detail}") from None
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise UserError(f"cannot read image {shown_path(path)}: unexpected array shape {arr.shape}")
    if mode == "F" and arr.size and not (np.isfinite(arr).all() and arr.min() >= 0.0 and arr.max() <= 1.0):
        # a float image is taken as [0, 1]; one in 0-255 (or with NaN) would be clamped to white silently
        raise UserError(f"image {shown_path(path)} holds floats in [{np.nanmin(arr):g}, {np.nanmax(arr):g}] (or NaN); "
                        "float images must lie in [0, 1]: save it as an 8-bit PNG, or divide by 255")
    if (arr.shape[1], arr.shape[0]) != full_size and min_side:
        logger.info("image %s: %dx%d read as %dx%d (the run needs %d px)", path, *full_size, arr.shape[1],
                    arr.shape[0], min_side)
    img = torch.from_numpy(arr.astype(np.float32) / _PLAIN_MODES[mode])
    c = img.shape[-1]
    if c == 1:
        img = img.repeat(1, 1, 3)
    elif c == 2:  # grey + alpha
        img = torch.cat([img[..., :1].repeat(1, 1, 3), img[..., 1:]], dim=-1)
    if img.shape[-1] == 3:
        img = torch.cat([img, torch.ones_like(img[..., :1])], dim=-1)
    elif not bool((img[..., 3] > 0).any()):
        logger.warning("image %s: its alpha channel is 0 everywhere (fully transparent); the object mask is empty "
                       "and no colour is used: save it without alpha or fix the alpha", path)
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
    """[0, 1] float image (tensor or array) → uint8 array; a uint8 array is returned as it is."""
    if isinstance(img, np.ndarray) and img.dtype == np.uint8:
        return img
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


CAPTION_HEIGHT = 24  # px of the label strip above a labelled video's frames


def caption_strip(width: int, labels: Sequence[str], height: int = CAPTION_HEIGHT) -> np.ndarray:
    """uint8 (height, width, 3): ``labels`` in black on white, each centred over its share of ``width`` (the
    side-by-side panels of a frame, left to right)."""
    from PIL import Image, ImageDraw, ImageFont

    strip = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(strip)
    font = ImageFont.load_default(size=max(8, height * 2 // 3))
    panel = width / max(1, len(labels))
    for i, label in enumerate(labels):
        draw.text(((i + 0.5) * panel, height / 2), label, fill="black", anchor="mm", font=font)
    return np.asarray(strip)


def save_video(
    path: str, frames: Iterable[Tensor | np.ndarray], fps: int = 30, min_height: int = 0, labels: Sequence[str] = ()
) -> str:
    """Write [0, 1] frames (H, W, 3) to an H.264 mp4 atomically. Sizes are padded to even numbers.

    Frames lower than ``min_height`` are enlarged by an integer factor, nearest neighbour (small renders stay
    sharp blocks instead of a player's blur). ``labels``: names of the frame's side-by-side panels, written in a
    :data:`CAPTION_HEIGHT` px strip above each frame (e.g. rgb | depth | opacity)."""
    import imageio.v2 as imageio

    strip = None
    with atomic_path(path) as tmp:
        writer = imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", macro_block_size=1)
        with writer:
            for frame in frames:
                arr = upscale_nearest(frame, min_height)
                if labels:
                    if strip is None or strip.shape[1] != arr.shape[1]:
                        strip = caption_strip(arr.shape[1], labels)
                    arr = np.concatenate([strip[..., : arr.shape[2]], arr], axis=0)
                h, w = arr.shape[:2]
                arr = np.pad(arr, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
                writer.append_data(arr)
    return path


def upscale_nearest(img: Tensor | np.ndarray, min_height: int) -> np.ndarray:
    """uint8 (H, W, C) image enlarged by the integer factor that makes it at least ``min_height`` high (nearest
    neighbour: each rendered pixel stays one sharp block); unchanged when it already is."""
    arr = to_uint8(img)
    k = max(1, -(-min_height // arr.shape[0]))
    return arr.repeat(k, axis=0).repeat(k, axis=1) if k > 1 else arr


def labelled_rows(rows: Sequence[tuple], min_height: int = 96) -> np.ndarray:
    """One uint8 picture of image rows, each ``(label, image (H, W, 3) in [0, 1])`` of the same size, enlarged
    (nearest neighbour) to at least ``min_height`` px a row, with its label written in a white margin on the left."""
    from PIL import Image, ImageDraw

    images = [upscale_nearest(img, min_height) for _, img in rows]
    draw_probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    margin = 12 + max(int(draw_probe.textlength(label)) for label, _ in rows)
    height, width = images[0].shape[:2]
    canvas = Image.new("RGB", (margin + width, height * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, ((label, _), arr) in enumerate(zip(rows, images)):
        canvas.paste(Image.fromarray(arr[..., :3]), (margin, i * height))
        draw.text((6, i * height + height // 2), label, fill="black", anchor="lm")
    return np.asarray(canvas)
