"""A tiny Mip-NeRF 360 scene in the public release layout, rendered from a procedural oracle world (known poses).

``write_scene(folder)`` renders configs/oracle_scenes/tabletop.yaml from ``N_VIEWS`` cameras on a horizontal circle of
radius ``RING_RADIUS`` at ``HEIGHT`` above the focus point ``FOCUS``, each aiming exactly at it and rolled about its
optical axis by ``ROLLS_DEG`` (so the angle of each view to the look-at rotation is its roll, and the focus point is
exact), writes ``images_2/IMG_XXX.png`` (``SOURCE_HW``, landscape) and ``poses_bounds.npy`` with the poses in a
*different* world (``SOURCE_FROM_WORLD``: rotated, scaled, moved) so that the PCA alignment has something to undo.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from threestudio.data.mipnerf360 import opengl_to_llff
from threestudio.utils.camera import look_at

ROOT = Path(__file__).resolve().parents[1]
WORLD = ROOT / "configs" / "oracle_scenes" / "tabletop.yaml"
N_VIEWS = 8
FOCUS = np.array([0.05, -0.03, -0.12])
RING_RADIUS, HEIGHT = 1.3, 0.5
ROLLS_DEG = [7.0, 0.0, 19.0, 3.0, 11.0, 27.0, 15.0, 23.0]  # angle order: 1, 3, 0, 4, 6, 2, 7, 5
SOURCE_HW = (48, 64)  # images_2 (the full images would be twice that)
FOVY_DEG = 50.0  # vertical fov of the source images = fov of their centred square crop


def _rotation(axis, angle):
    axis = np.asarray(axis, np.float64) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


SOURCE_SCALE = 3.7
SOURCE_FROM_WORLD = np.eye(4)
SOURCE_FROM_WORLD[:3, :3] = SOURCE_SCALE * _rotation([0.3, -0.5, 0.8], 1.1)
SOURCE_FROM_WORLD[:3, 3] = [5.0, -2.0, 1.0]


def world_c2w() -> np.ndarray:
    """(N, 4, 4) OpenGL camera-to-world of the views in the oracle world."""
    out = []
    for k, roll in enumerate(ROLLS_DEG):
        azimuth = 2 * math.pi * k / N_VIEWS + 0.2
        eye = FOCUS + np.array([RING_RADIUS * math.cos(azimuth), RING_RADIUS * math.sin(azimuth), HEIGHT])
        up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
        c2w = look_at(torch.from_numpy(eye)[None], torch.from_numpy(FOCUS)[None], up)
        c2w = c2w[0].numpy().astype(np.float64)
        c2w[:3, :3] = c2w[:3, :3] @ _rotation([0, 0, 1], math.radians(roll))  # roll about the optical axis
        out.append(c2w)
    return np.stack(out)


def source_c2w() -> np.ndarray:
    """The same cameras in the source world of poses_bounds.npy (rotations kept orthonormal)."""
    c2w = SOURCE_FROM_WORLD @ world_c2w()
    c2w[:, :3, :3] /= SOURCE_SCALE
    return c2w


def write_scene(folder: Path) -> Path:
    from threestudio.utils.image import save_image
    from zeronvs_diffusion.oracle.scene import load_scene, render

    h, w = SOURCE_HW
    rgb, _ = render(load_scene(str(WORLD)), torch.from_numpy(world_c2w()), torch.full((N_VIEWS,), FOVY_DEG), h, w)
    (folder / "images_2").mkdir(parents=True, exist_ok=True)
    for k in range(N_VIEWS):
        save_image(str(folder / "images_2" / f"IMG_{k:03d}.png"), rgb[k])
    focal_full = 2 * (0.5 * h / math.tan(math.radians(FOVY_DEG) / 2))
    hwf = np.tile([2 * h, 2 * w, focal_full], (N_VIEWS, 1))
    bounds = np.tile([0.1, 10.0], (N_VIEWS, 1))
    np.save(folder / "poses_bounds.npy", opengl_to_llff(source_c2w(), hwf, bounds))
    return folder
