#!/usr/bin/env python
"""Decode and inspect the cameras of an IDR/NeuS/DTU scene (cameras.npz).

Usage: python read_camera.py SCENE_DIR_or_cameras.npz [--json] [--plot cameras.png] [--image-size W H] [--index I ...]
The maths lives in threestudio/data/idr_cameras.py; this file only parses arguments and prints.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import List, Optional, Sequence

import numpy as np

from threestudio.data.idr_cameras import IDRCamera, load_idr_cameras
from threestudio.utils.errors import UserError

logger = logging.getLogger("read_camera")

FORMAT_HELP = """\
cameras.npz format (IDR / NeuS / DTU):
  world_mat_i   4x4 (top 3 rows = P = K [R | t]): projects world points to pixels of image i,
                OpenCV convention (x right, y down, z forward), pixel centres at integer coordinates.
  scale_mat_i   4x4, optional: maps the unit sphere to the object (world = scale_mat . normalised point).
                When present, P = world_mat . scale_mat projects normalised points, in which the object
                fits the unit sphere ("normalized": true).

Decomposition of P (3x4, known up to a scale and sign):
  1. flip the sign of P if det(P[:, :3]) < 0 (P and -P are the same projection);
  2. RQ-decompose P[:, :3] = K R (K upper triangular, R orthonormal);
  3. fix signs so K has a positive diagonal (then det R = +1), t = K^-1 P[:, 3];
  4. normalise K so that K[2,2] = 1;
  5. camera-to-world (OpenCV) c2w = [R^T | -R^T t]; camera centre = -R^T t;
     OpenGL camera-to-world (x right, y up, z backward) = c2w . diag(1, -1, -1, 1).
  Fields of view use the real image size (W, H): fov_x = 2 atan(W / 2 / fx), fov_y = 2 atan(H / 2 / fy);
  the size is read from the scene's image/ folder unless --image-size is given.

Exit status: 0 on success, 2 for bad input (message on one line).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="read_camera.py",
        description="Decode the cameras of an IDR/NeuS/DTU scene: intrinsics, camera-to-world (OpenCV and OpenGL), "
        "camera centres, distances and fields of view.",
        epilog=FORMAT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("path", help="scene folder (with cameras.npz and image/) or a cameras.npz file")
    parser.add_argument("--json", action="store_true", help="print a JSON list of camera records instead of a table")
    parser.add_argument("--plot", metavar="PNG", help="draw the camera frusta (and the unit sphere) to this PNG")
    parser.add_argument(
        "--image-size", nargs=2, type=int, metavar=("W", "H"), help="image size for the fields of view"
    )
    parser.add_argument("--index", nargs="+", type=int, metavar="I", help="only these camera indices")
    parser.add_argument("--no-normalize", action="store_true", help="ignore scale_mat (decode world_mat alone)")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks")
    return parser


def _fmt(value: Optional[float], digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(cameras: Sequence[IDRCamera]) -> str:
    """A human-readable table: one line per camera plus its OpenGL camera-to-world."""
    header = (
        f"{'idx':>4} {'fx':>9} {'fy':>9} {'cx':>8} {'cy':>8} {'center (x, y, z)':>30} {'dist':>7} "
        f"{'fov_x':>7} {'fov_y':>7}"
    )
    lines = [header, "-" * len(header)]
    for cam in cameras:
        c = cam.center
        center = f"({c[0]:8.4f}, {c[1]:8.4f}, {c[2]:8.4f})"
        lines.append(
            f"{cam.index:>4} {cam.K[0, 0]:9.3f} {cam.K[1, 1]:9.3f} {cam.K[0, 2]:8.3f} {cam.K[1, 2]:8.3f} "
            f"{center:>30} {cam.distance:7.4f} {_fmt(cam.fov_x_deg, 2):>7} {_fmt(cam.fov_y_deg, 2):>7}"
        )
    if cameras:
        first = cameras[0]
        frame = "normalised world (scale_mat applied)" if first.normalized else "world (no scale_mat)"
        size = "unknown (pass --image-size)"
        if first.image_size is not None:
            size = f"{first.image_size[0]}x{first.image_size[1]}"
        lines.append(f"coordinates: {frame}; image size: {size}; fov in degrees")
    return "\n".join(lines)


def look_at_point(cameras: Sequence[IDRCamera]) -> np.ndarray:
    """The point (3,) closest, in least squares, to every camera's optical axis (what the cameras look at)."""
    a, b = np.zeros((3, 3)), np.zeros(3)
    for cam in cameras:
        d = cam.c2w_opencv[:3, 2] / np.linalg.norm(cam.c2w_opencv[:3, 2])  # OpenCV: +z looks forward
        m = np.eye(3) - np.outer(d, d)
        a += m
        b += m @ cam.center
    return np.linalg.lstsq(a, b, rcond=None)[0]


def label_every(n: int, max_labels: int = 12) -> int:
    """Label every k-th camera so that at most ``max_labels`` labels are drawn."""
    return max(1, -(-n // max_labels))


def plot_cameras(cameras: Sequence[IDRCamera], path: str) -> None:
    """Draw camera frusta (OpenCV pinhole pyramids, sized to the scene and coloured by index, a sparse set of
    labels), the point they look at, the world axes and, for normalised cameras, the unit sphere."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(8, 8))
    ax = fig.add_subplot(projection="3d")
    centers = np.stack([cam.center for cam in cameras])
    target = look_at_point(cameras) if len(cameras) > 1 else centers[0] + cameras[0].c2w_opencv[:3, 2]
    distance = float(np.median(np.linalg.norm(centers - target, axis=1)))
    depth = 0.18 * distance  # frusta a fifth of the way to what they look at
    colours = plt.get_cmap("viridis")(np.linspace(0, 1, len(cameras)))
    every = label_every(len(cameras))
    for i, (cam, colour) in enumerate(zip(cameras, colours)):
        w, h = cam.image_size or (2 * cam.K[0, 2], 2 * cam.K[1, 2])
        pixels = np.array([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]], dtype=np.float64)
        corners_cam = (np.linalg.inv(cam.K) @ pixels.T).T * depth
        corners = corners_cam @ cam.c2w_opencv[:3, :3].T + cam.center
        labelled = i % every == 0 or i == len(cameras) - 1
        width = 1.5 if labelled else 0.7  # the labelled frusta drawn bolder
        for corner in corners:
            ax.plot(*zip(cam.center, corner), color=colour, linewidth=width)
        ring = np.vstack([corners, corners[:1]])
        ax.plot(ring[:, 0], ring[:, 1], ring[:, 2], color=colour, linewidth=width + 0.2)
        ax.plot(*zip(corners[0], corners[1]), color="tab:red", linewidth=1.6)  # top edge of the image
        if labelled:
            # the index in a box of the frustum's own colour, just behind its apex (away from what it looks at),
            # joined to the apex by a short line
            behind = cam.center - 0.4 * depth * cam.c2w_opencv[:3, 2] / np.linalg.norm(cam.c2w_opencv[:3, 2])
            ax.plot(*zip(behind, cam.center), color=colour, linewidth=1.0)
            dark = float(np.dot(colour[:3], (0.299, 0.587, 0.114))) < 0.5
            ax.text(*behind, str(cam.index), fontsize=8, ha="center", va="center", color="white" if dark else "black",
                    bbox=dict(boxstyle="round,pad=0.2", facecolor=colour, edgecolor="none"), zorder=6)
    # the look-at point and the sphere are named in the legend (a label beside the star would cross the axes)
    ax.scatter(*target, marker="*", s=160, color="tab:orange", depthshade=False, zorder=5,
               label="look-at point (closest to every optical axis)")
    ax.plot([], [], color="tab:red", linewidth=1.6, label="red edge: the image's top")
    points = [centers, target[None]]
    if cameras[0].normalized:
        u, v = np.meshgrid(np.linspace(0, 2 * np.pi, 24), np.linspace(0, np.pi, 12))
        ax.plot_wireframe(np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v), color="grey", linewidth=0.3,
                          label="unit sphere: the object's bound (scale_mat maps it onto the object)")
        points.append(np.array([[-1, -1, -1], [1, 1, 1]]))
    axis_length = 0.5 * distance
    for k, (name, colour) in enumerate(zip("xyz", ("tab:red", "tab:green", "tab:blue"))):
        tip = np.zeros(3)
        tip[k] = axis_length
        ax.quiver(0, 0, 0, *tip, color=colour, linewidth=2, arrow_length_ratio=0.15)
        ax.text(*(tip * 1.1), name, color=colour, fontsize=10, fontweight="bold")
    points.append(np.array([[0, 0, 0], [axis_length] * 3]))
    everything = np.concatenate(points)
    middle = (everything.min(0) + everything.max(0)) / 2
    half = (everything.max(0) - everything.min(0)).max() / 2 * 1.05 + depth
    ax.set_xlim(middle[0] - half, middle[0] + half)
    ax.set_ylim(middle[1] - half, middle[1] + half)
    ax.set_zlim(middle[2] - half, middle[2] + half)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_zlabel("z")
    ax.set_box_aspect((1, 1, 1))
    labelled = "every camera labelled" if every == 1 else f"every {every}th camera labelled"
    ax.set_title(f"{len(cameras)} cameras, coloured by index (dark → light), {labelled} (the box behind a\n"
                 "frustum's apex, in its colour); arrows = world x, y, z", fontsize=10)
    ax.legend(loc="upper left", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(path, dpi=120)
    except OSError as e:
        where = f" ({e.filename})" if e.filename and os.path.abspath(str(e.filename)) != os.path.abspath(path) else ""
        raise UserError(f"cannot write --plot {path}: {e.strerror or e}{where}") from None
    finally:
        plt.close(fig)


def plot_path(path: str) -> str:
    """The file ``--plot`` writes: ``path``, with ``.png`` added when it has no extension (as matplotlib does)."""
    if os.path.isdir(path):
        raise UserError(f"--plot {path} is a folder; give a file name, e.g. --plot {os.path.join(path, 'cameras.png')}")
    return path if os.path.splitext(path)[1] else path + ".png"


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.image_size and min(args.image_size) <= 0:
            raise UserError(f"--image-size must be two positive integers, got {args.image_size}")
        plot = plot_path(args.plot) if args.plot else None
        cameras = load_idr_cameras(
            args.path,
            image_size=tuple(args.image_size) if args.image_size else None,
            normalize=not args.no_normalize,
            indices=args.index,
        )
        if args.json:
            print(json.dumps([cam.to_dict() for cam in cameras], indent=1))
        else:
            print(format_table(cameras))
        if plot:
            plot_cameras(cameras, plot)
            logger.info("wrote %s", plot)
    except UserError as e:
        if args.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
