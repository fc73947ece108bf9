"""``mesh-exporter``: marching cubes on the density field → ``model.obj`` / ``model.ply`` with vertex colours.

As threestudio/ZeroNVS's ``isosurface()`` (``isosurface_coarse_to_fine``, ``isosurface_remove_outliers``): the
density is sampled on a ``resolution``³ grid (128) over the geometry's box (``radius`` overrides its half-size), in
chunks of ``chunk_size`` points, and triangulated with scikit-image's marching cubes on the CPU (no
nvdiffrast/EGL/tetrahedra needed); connected components with fewer faces than ``outlier_n_faces_threshold`` (a
float: that fraction of the largest component's faces, 0.01; an int: a face count) are removed. With
``coarse_to_fine`` a second pass samples the same grid over the first mesh's bounding box enlarged by 10 % of its
size on every side (within the export box), so the surface gets the grid's whole resolution. Vertex colours are the
material's albedo at the vertices.

``threshold`` is the density of the isosurface: a number (threestudio's NeRF default is 25) or ``"auto"``, which
uses threestudio's rule — the mean of the grid densities above 1e-5 (i.e. of the non-empty space), per pass. A
threshold outside the range of the sampled densities gives an empty mesh and a :class:`UserError` that prints the
range.

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


def remove_small_components(
    vertices: np.ndarray, faces: np.ndarray, n_faces_threshold: float
) -> Tuple[np.ndarray, np.ndarray]:
    """Drop the connected components (faces joined by shared edges, as trimesh's ``split``) with fewer faces than
    ``n_faces_threshold``: a float is that fraction of the largest component's face count, an int a count.
    vertices (V, 3), faces (F, 3) → the kept vertices (V', 3) and faces (F', 3), re-indexed."""
    import trimesh  # lazily: only exports need it

    if len(faces) == 0:
        return vertices, faces
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, process=False)
    labels = trimesh.graph.connected_component_labels(mesh.face_adjacency, node_count=len(faces))
    sizes = np.bincount(labels)
    if isinstance(n_faces_threshold, float):
        n_faces_threshold = int(sizes.max() * n_faces_threshold)
    keep_faces = faces[sizes[labels] >= n_faces_threshold]
    used = np.unique(keep_faces)
    remap = np.full(len(vertices), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    kept = int((sizes >= n_faces_threshold).sum())
    logger.info("mesh export: %d components, %d kept (>= %d faces)", len(sizes), kept, n_faces_threshold)
    return vertices[used], remap[keep_faces]


# bytes per grid vertex while a grid is exported: the points (12), the meshgrid (12), the densities on the device,
# as float32 and on the host (12), marching cubes' work arrays (~8); rounded up
GRID_BYTES_PER_VERTEX = 48


def available_memory() -> Optional[int]:
    """Bytes of host memory available now (Linux ``MemAvailable``; else all physical memory; None: unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_grid_memory(resolution: int) -> None:
    """ConfigError when a ``resolution``³ export grid needs more host memory than is available (before anything
    is allocated: ``resolution=100000`` would ask for petabytes)."""
    need = GRID_BYTES_PER_VERTEX * resolution**3
    have = available_memory()
    if have is not None and need > have:
        largest = int((have / GRID_BYTES_PER_VERTEX) ** (1 / 3))
        raise ConfigError(
            f"exporter.resolution={resolution} needs about {need / 2**30:.3g} GiB for its {resolution}³ grid, more "
            f"than the {have / 2**30:.3g} GiB of memory available; use at most about {largest}"
        )


@threestudio.register("mesh-exporter")
class MeshExporter(BaseObject):
    @dataclass
    class Config(BaseObject.Config):
        resolution: int = 128
        # a density value, or "auto" (mean of the densities above 1e-5)
        threshold: Any = 25.0
        # a second pass over the first mesh's bounding box enlarged by 10 % (threestudio's isosurface_coarse_to_fine)
        coarse_to_fine: bool = True
        # drop connected components with fewer faces than outlier_n_faces_threshold: a float is a fraction of the
        # largest component's faces, an int a face count (threestudio's isosurface_remove_outliers)
        remove_outliers: bool = True
        outlier_n_faces_threshold: Any = 0.01
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
        check_grid_memory(cfg.resolution)
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
        outlier = cfg.outlier_n_faces_threshold
        if isinstance(outlier, bool) or not isinstance(outlier, (int, float)) or outlier < 0:
            raise ConfigError(
                "exporter.outlier_n_faces_threshold must be a fraction of the largest component's faces (a float, "
                f"e.g. 0.01) or a face count (an int) >= 0, got {outlier!r}"
            )
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
    def density_grid(self, bbox: Optional[Tensor] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Densities (R, R, R) (x, y, z indexing) at the grid vertices over ``bbox`` (2, 3) (default: the export
        box), and that box."""
        bbox = self.bbox() if bbox is None else bbox
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

    def _isosurface(self, bbox: Tensor) -> Tuple[np.ndarray, np.ndarray]:
        """One pass: vertices (V, 3) and outward faces (F, 3) of the isosurface on the grid over ``bbox``, without
        outlier components when ``remove_outliers``."""
        from skimage import measure  # lazily: only exports need it

        density, box = self.density_grid(bbox)
        threshold = self.resolve_threshold(density)
        lo, hi = float(density.min()), float(density.max())
        if not lo < threshold < hi:
            raise UserError(
                f"mesh export threshold {threshold:g} gives an empty mesh: densities in the export box range from "
                f"{lo:.4g} to {hi:.4g}; set exporter.threshold to a value in that range (e.g. {0.5 * (lo + hi):.4g}) "
                "or to 'auto'"
            )
        spacing = tuple((box[1] - box[0]) / (self.cfg.resolution - 1))
        vertices, faces, _, _ = measure.marching_cubes(density, level=threshold, spacing=spacing)
        vertices = (vertices + box[0]).astype(np.float32)
        # density is larger inside: skimage's triangles then wind inwards; flip them to face outwards
        faces = faces[:, ::-1].astype(np.int64)
        if self.cfg.remove_outliers:
            vertices, faces = remove_small_components(vertices, faces, self.cfg.outlier_n_faces_threshold)
        return vertices, faces

    @torch.no_grad()
    def extract_mesh(self) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
        """Vertices (V, 3), faces (F, 3) (outward-facing) and vertex colours (V, 3) in [0, 1] or None."""
        box = self.bbox()
        vertices, faces = self._isosurface(box)
        if self.cfg.coarse_to_fine:
            coarse = torch.from_numpy(np.stack([vertices.min(axis=0), vertices.max(axis=0)])).to(box)
            margin = (coarse[1] - coarse[0]) * 0.1
            fine_box = torch.stack(
                [torch.maximum(coarse[0] - margin, box[0]), torch.minimum(coarse[1] + margin, box[1])]
            )
            logger.info("mesh export: second pass over %s", fine_box.cpu().numpy().round(4).tolist())
            vertices, faces = self._isosurface(fine_box)
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
