"""Field of view from a photo's EXIF focal length.

Two sources, in this order:

- ``FocalLengthIn35mmFilm`` (tag 0xA405): the focal length a 36 × 24 mm frame would need for the same view.
  Taken with the diagonal convention of the EXIF/CIPA standard: f_px = f35 · (image diagonal in px) / 43.27 mm
  (43.27 mm is the 36 × 24 mm frame's diagonal), which holds for any aspect ratio.
- ``FocalLength`` (0x920A, mm) with ``FocalPlaneXResolution`` (0xA20E, pixels per ``FocalPlaneResolutionUnit``,
  0xA210) of the sensor: f_px = f_mm · pixels per mm, rescaled when the file was resized after capture
  (``PixelXDimension``, 0xA002, against the stored width).

The vertical fov of the square the pipeline uses (:func:`threestudio.utils.image.crop_to_square`) follows from
the square's side S in pixels of the upright image: fovy = 2 · atan(S / (2 · f_px)); S is the shorter side for
``center_crop``, the longer for ``pad``, and the height for ``stretch`` (stretching keeps the vertical extent).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

EXIF_IFD = 0x8769
TAG_ORIENTATION = 0x0112
TAG_FOCAL_LENGTH = 0x920A
TAG_FOCAL_LENGTH_35MM = 0xA405
TAG_FOCAL_PLANE_X_RESOLUTION = 0xA20E
TAG_FOCAL_PLANE_RESOLUTION_UNIT = 0xA210
TAG_PIXEL_X_DIMENSION = 0xA002
FULL_FRAME_DIAGONAL_MM = math.hypot(36.0, 24.0)  # 43.27 mm
# FocalPlaneResolutionUnit: 2 inch, 3 cm (EXIF); 4 mm, 5 µm (TIFF/EP, written by some cameras)
MM_PER_UNIT = {2: 25.4, 3: 10.0, 4: 1.0, 5: 1e-3}
# orientations 5–8 turn the stored image by 90°: the upright width is the stored height
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


@dataclass(frozen=True)
class ExifFocal:
    """A focal length in pixels of the stored (not yet rotated) image, and where it came from."""

    focal_px: float
    source: str  # e.g. "FocalLengthIn35mmFilm 26 mm"


def _number(value: Any) -> Optional[float]:
    try:
        number = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def exif_tags(exif: Any) -> dict:
    """The main IFD and the Exif sub-IFD of a Pillow ``Image.Exif`` as one dict (sub-IFD wins)."""
    tags = dict(exif)
    try:
        tags.update(exif.get_ifd(EXIF_IFD))
    except Exception:  # a malformed sub-IFD: keep what the main IFD has
        pass
    return tags


def focal_from_exif(tags: dict, width: int, height: int) -> Optional[ExifFocal]:
    """Focal length in pixels of a ``width`` × ``height`` stored image from its EXIF ``tags``, or None."""
    f35 = _number(tags.get(TAG_FOCAL_LENGTH_35MM))
    if f35 is not None:
        return ExifFocal(f35 * math.hypot(width, height) / FULL_FRAME_DIAGONAL_MM, f"FocalLengthIn35mmFilm {f35:g} mm")
    f_mm = _number(tags.get(TAG_FOCAL_LENGTH))
    x_res = _number(tags.get(TAG_FOCAL_PLANE_X_RESOLUTION))
    unit_mm = MM_PER_UNIT.get(_number(tags.get(TAG_FOCAL_PLANE_RESOLUTION_UNIT, 2)) or 0)  # "abc": no unit
    if f_mm is None or x_res is None or unit_mm is None:
        return None
    focal_px = f_mm * x_res / unit_mm
    capture_width = _number(tags.get(TAG_PIXEL_X_DIMENSION))
    if capture_width is not None:
        focal_px *= width / capture_width
    return ExifFocal(focal_px, f"FocalLength {f_mm:g} mm at {x_res:g} px per {unit_mm:g} mm of the focal plane")


def square_side(width: int, height: int, crop_mode: str) -> int:
    """The vertical extent in pixels of the square made from an upright ``width`` × ``height`` image."""
    if crop_mode == "center_crop":
        return min(width, height)
    if crop_mode == "pad":
        return max(width, height)
    return height  # stretch


def fovy_from_focal(focal_px: float, side_px: float) -> float:
    """Vertical field of view (degrees) of ``side_px`` pixels at focal length ``focal_px`` pixels."""
    return math.degrees(2.0 * math.atan(side_px / (2.0 * focal_px)))


@dataclass(frozen=True)
class ExifFov:
    """The vertical fov of the used square, and a one-line account of how it was derived."""

    fovy_deg: float
    description: str


def exif_fovy(path: str, crop_mode: str = "center_crop") -> Optional[ExifFov]:
    """Vertical fov (degrees) of the square crop of image ``path`` from its EXIF focal length, or None.

    Reads only the header (no pixels are decoded). Returns None when the file has no usable focal length
    or cannot be opened (reading the image reports that properly).
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            width, height = im.size
            tags = exif_tags(im.getexif())
    except Exception:
        return None
    focal = focal_from_exif(tags, width, height)
    if focal is None:
        return None
    if tags.get(TAG_ORIENTATION) in TRANSPOSING_ORIENTATIONS:
        width, height = height, width
    side = square_side(width, height, crop_mode)
    fovy = fovy_from_focal(focal.focal_px, side)
    description = (
        f"{focal.source} → f = {focal.focal_px:.1f} px → vertical fov {fovy:.2f}° of the {side}×{side} px "
        f"square ({crop_mode}) of the {width}×{height} image"
    )
    return ExifFov(fovy, description)
