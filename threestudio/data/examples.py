"""The bundled example images and their known cameras: one source of truth for every entry point.

``data.default_fovy_deg: auto`` (launch.py with any config, ``launch_inference.sh``, ``scripts/preview_settings.py``)
takes the fov of a bundled example from here before looking for EXIF (the example PNGs have none), and the preview
takes its elevation and scale; ``configs/zeronvs.yaml`` and ``configs/smoke.yaml`` use the same elevation and scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class ExampleCamera:
    """The input camera of a bundled example: vertical fov of its centre square, suggested elevation and scale."""

    fovy_deg: float
    elevation_deg: float
    scale: float
    source: str  # where the fov comes from, in words (logged, written into preview.json)


# scikit-image's Middlebury 2014 "Motorcycle" left view: 741x500 px, focal length 994.978 px (skimage.data's
# stereo_motorcycle docs: the benchmark's calibration, downsampled by 4); the centre square is 500 px high.
_MOTORCYCLE_FOVY = round(2 * math.degrees(math.atan(250 / 994.978)), 2)  # 28.21

EXAMPLE_CAMERAS = {
    "skimage:motorcycle_left": ExampleCamera(
        fovy_deg=_MOTORCYCLE_FOVY,
        elevation_deg=31.0,
        scale=0.7,
        source="the bundled example's calibration (Middlebury 2014 Motorcycle, focal length 994.978 px at 741x500)",
    ),
}


def example_camera(image_path: str) -> Optional[ExampleCamera]:
    """The known camera of a bundled example (``skimage:NAME``), else None."""
    return EXAMPLE_CAMERAS.get(str(image_path))
