"""``mesh-exporter``: marching cubes on the density field → ``model.obj`` / ``model.ply`` with vertex colours.

The density is sampled on a ``resolution``³ grid over the geometry's box (``radius`` overrides its half-size),
in chunks of ``chunk_size`` points, and triangulated with scikit-image's marching cubes on the CPU (no
nvdiffrast/EGL/tetrahedra needed). Vertex colours are the material's albedo at the vertices.

``threshold`` is the density of the isosurface: a number (threestudio's NeRF default is 25) or ``"auto"``, which
uses threestudio's rule — the mean of the grid densities above 1e-5 (i.e. of the non-empty space). A threshold
outside the range of the sampled densities gives an empty mesh and a :class:`UserError` that prints the range.

The OBJ stores colours in its vertex lines (``v x y z r g b``, r, g, b in [0, 1]; read by trimesh, MeshLab,
Blender); the PLY stores them as 8-bit vertex properties. Files are written atomically.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

import threestudio
from threestudio.utils.base import BaseObject
from threestudio.utils.errors import ConfigError, UserError
from threestudio.utils.io import ensure_folder, write_bytes_atomic

logger = logging.getLogger(__name__)

FORMATS = ("obj", "ply")
AUTO_THRESHOLD_EPS = 1e-5


def obj_bytes(vertices: np.ndarray, faces: np.ndarray, colors: Optional[np.ndarray]) -> bytes:
    """Wavefront OBJ text: vertices (V, 3), faces (F, 3) 0-based, colours (V, 3) in [0, 1] or None."""
    buf = io.StringIO()
    buf.write("# exported by threestudio (ZeroNVS edition) mesh-exporter\n")
    rows = vertices if colors is None else np.concatenate([vertices, colors], axis=1)
    fmt = "v" + " %.6f" * rows.shape[1] + "\n"
    buf.write("".join(fmt % tuple(r) for r in rows))
    buf.write("".join("f %d %d %d\n" % tuple(f) for f in faces + 1))
    return buf.getvalue().encode()


@threestudio.register("mesh-exporter")
class MeshExporter(BaseObject):
    @dataclass
    class Config(BaseObject.Config):
        resolution: int = 256
        # a density value, or "auto" (mean of the densities above 1e-5)
        threshold: Any = 25.0
        # half-size of the export box; None = the geometry's box
        radius: Optional[float] = None
        chunk_size: int = 2**18
        formats: List[str] = field(default_factory=lambda: ["obj", "ply"])
        save_name: str = "model"
        # vertex colours from the material's albedo
        save_texture: bool = True

    cfg: Config

    def configure(self, geometry: Any, material: Any = None) -> None:
        cfg = self.cfg
        if cfg.resolution < 2:
            raise ConfigError(f"exporter.resolution must be >= 2, got {cfg.resolution}")
        if cfg.chunk_size < 1:
            raise ConfigError(f"exporter.chunk_size must be >= 1, got {cfg.chunk_size}")
        bad = [f for f in cfg.formats if f not in FORMATS]
        if bad or not cfg.formats:
            raise ConfigError(
                f"exporter.formats must be a non-empty subset of {list(FORMATS)}, got {list(cfg.formats)}"
            )
        is_number = isinstance(cfg.threshold, (int, float)) and not isinstance(cfg.threshold, bool)
        if not (cfg.threshold == "auto" or is_number):
            raise ConfigError(f"exporter.threshold must be a number or 'auto', got {cfg.threshold!r}")
        if cfg.radius is not None and cfg.radius <= 0:
            raise ConfigError(f"exporter.radius must be positive, got {cfg.radius}")
        self.geometry = geometry
        self.material = material

    def bbox(self) -> Tensor:
        """Export box (2, 3) on the geometry's device."""
        if self.cfg.radius is not None:
            r = float(self.cfg.radius)
            return torch.tensor([[-r] * 3, [r] * 3], device=self.geometry.bbox.device)
        return self.geometry.isosurface_bbox().float()

    def _chunked(self, fn, points: Tensor) -> Tensor:
        step = self.cfg.chunk_size
        return torch.cat([fn(points[i : i + step]) for i in range(0, points.shape[0], step)])

    @torch.no_grad()
    def density_grid(self) -> Tuple[np.ndarray, np.ndarray]:
        """Densities (R, R, R) (x, y, z indexing) at the grid vertices, and the box (2, 3)."""
        bbox = self.bbox()
        res = self.cfg.resolution
        axes = [torch.linspace(float(bbox[0, d]), float(bbox[1, d]), res, device=bbox.device) for d in range(3)]
        points = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
        density = self._chunked(self.geometry.forward_density, points)
        return density.reshape(res, res, res).float().cpu().numpy(), bbox.cpu().numpy()

    def resolve_threshold(self, density: np.ndarray) -> float:
        if self.cfg.threshold != "auto":
            return float(self.cfg.threshold)
        occupied = density[density > AUTO_THRESHOLD_EPS]
        if occupied.size == 0:
            raise UserError("cannot export a mesh: the density field is empty everywhere in the export box")
        threshold = float(occupied.mean())
        logger.info("mesh export: automatic density threshold %.4g", threshold)
        return threshold

    @torch.no_grad()
    def extract_mesh(self) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
        """Vertices (V, 3), faces (F, 3) (outward-facing) and vertex colours (V, 3) in [0, 1] or None."""
        from skimage import measure  # lazily: only exports need it

        density, bbox = self.density_grid()
        threshold = self.resolve_threshold(density)
        lo, hi = float(density.min()), float(density.max())
        if not lo < threshold < hi:
            raise UserError(
                f"mesh export threshold {threshold:g} gives an empty mesh: densities in the export box range from "
                f"{lo:.4g} to {hi:.4g}; set exporter.threshold to a value in that range (e.g. {0.5 * (lo + hi):.4g}) "
                "or to 'auto'"
            )
        spacing = tuple((bbox[1] - bbox[0]) / (self.cfg.resolution - 1))
        vertices, faces, _, _ = measure.marching_cubes(density, level=threshold, spacing=spacing)
        vertices = (vertices + bbox[0]).astype(np.float32)
        # density is larger inside: skimage's triangles then wind inwards; flip them to face outwards
        faces = faces[:, ::-1].astype(np.int64)
        colors = None
        if self.cfg.save_texture and self.material is not None:
            device = self.geometry.bbox.device
            v = torch.from_numpy(vertices).to(device)
            albedo = self._chunked(lambda p: self.material.albedo(self.geometry(p)["features"]), v)
            colors = albedo.clamp(0.0, 1.0).float().cpu().numpy()
        return vertices, faces, colors

    def export(self, save_dir: str) -> List[str]:
        """Write ``{save_name}.obj`` / ``.ply`` into ``save_dir``; returns the written paths. ``save_dir`` is
        created only once the mesh exists, and removed again (when empty) if writing fails."""
        vertices, faces, colors = self.extract_mesh()
        created = not os.path.isdir(save_dir)
        ensure_folder(save_dir)
        try:
            paths = self._write(save_dir, vertices, faces, colors)
        except BaseException:
            if created and not os.listdir(save_dir):  # no empty export folder that looks like a result
                os.rmdir(save_dir)
            raise
        logger.info("exported a mesh with %d vertices and %d faces to %s", len(vertices), len(faces), paths)
        return paths

    def _write(self, save_dir: str, vertices: np.ndarray, faces: np.ndarray, colors: Any) -> List[str]:
        import trimesh  # lazily: only exports need it

        paths = []
        for fmt in self.cfg.formats:
            path = os.path.join(save_dir, f"{self.cfg.save_name}.{fmt}")
            if fmt == "obj":
                data = obj_bytes(vertices, faces, colors)
            else:
                vertex_colors = None if colors is None else np.round(colors * 255).astype(np.uint8)
                mesh = trimesh.Trimesh(vertices=vertices, faces=faces, vertex_colors=vertex_colors, process=False)
                data = mesh.export(file_type="ply")
            write_bytes_atomic(path, data)
            paths.append(path)
        return paths
