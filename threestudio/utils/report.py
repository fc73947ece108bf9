"""``TRIAL/save/report.html``: one self-contained page that explains a run.

Written at the end of ``--train`` / ``--test`` (:func:`finish_run`) and by ``python scripts/report.py TRIAL``.
It shows the input image, the settings that matter (fov, elevation, scale, guidance scale, steps, precision,
device), loss curves from ``csv_logs/metrics.csv`` (matplotlib PNGs embedded as data URIs), the validation
renders over training, the test video, the NVS contact sheet and metrics when present, wall time and peak
memory (from ``save/run_stats.json``, which :func:`finish_run` keeps per mode), and the newest exported mesh
in an interactive WebGL view (``report_assets/mesh_viewer.js``, a small viewer written for this page, and the
mesh itself are embedded; the mesh files are linked). Renders and videos are linked by paths relative to the page
(they sit next to it); nothing is fetched from the network. An ``onerror`` attribute marks a missing image
(``<body data-broken>``) and the viewer marks its canvas ``data-drawn`` once it drew the mesh, both checked by
``scripts/check_report.sh``.
"""

from __future__ import annotations

import base64
import csv
import glob
import html
import io
import json
import logging
import math
import os
import re
import resource
import sys
import time
from typing import Any, Dict, List, Optional

from threestudio.utils.errors import UserError
from threestudio.utils.io import write_bytes_atomic, write_json_atomic

logger = logging.getLogger(__name__)

RUN_STATS = "run_stats.json"
REPORT = "report.html"
MAX_VAL_STEPS = 6  # validation renders: at most this many steps, spread over training


def peak_memory_mb() -> Dict[str, Optional[float]]:
    """Peak resident memory of this process and, when CUDA was used, peak allocated GPU memory (MiB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_mb = rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux
    cuda_mb = None
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda_mb = max(torch.cuda.max_memory_allocated(d) for d in range(torch.cuda.device_count())) / 2**20
    return {"peak_rss_mb": round(rss_mb, 1), "peak_cuda_mb": None if cuda_mb is None else round(cuda_mb, 1)}


def finish_run(trial_dir: str, mode: str, wall_s: float, device: str) -> str:
    """Record this run's wall time, peak memory and device in ``save/run_stats.json``; write the report.

    Returns the report's path.
    """
    path = os.path.join(trial_dir, "save", RUN_STATS)
    stats = _read_json(path) or {}
    stats[mode] = {"wall_s": round(wall_s, 1), "device": device, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                   **peak_memory_mb()}
    write_json_atomic(path, stats)
    return write_report(trial_dir)


def _read_json(path: str) -> Any:
    """The JSON object (a dict) in ``path``; None when it is missing, unreadable or not an object (an edited file
    holding a list, ...: a warning names it)."""
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(value, dict):
        logger.warning("%s holds a %s, not a JSON object: ignored", path, type(value).__name__)
        return None
    return value


def _number(value: Any, spec: str) -> str:
    """``value`` formatted with ``spec`` when it is a finite number, else "n/a" (None) or its text (40 characters)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return format(value, spec)
    return "n/a" if value is None else str(value)[:40]


def _data_uri_png(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _image_thumbnail(path: str, max_side: int = 320, crop_mode: Optional[str] = None) -> Optional[str]:
    """The input image as an embedded PNG (downsized; made square by ``crop_mode`` as the run did, when given),
    or None when it cannot be read."""
    from threestudio.utils.errors import UserError
    from threestudio.utils.image import crop_to_square, load_image, resize_image, to_uint8

    image_logger = logging.getLogger("threestudio.utils.image")
    level = image_logger.level
    image_logger.setLevel(logging.ERROR)  # the run has already warned about this image
    try:
        img = load_image(path, min_side=max_side)
    except UserError:
        return None
    finally:
        image_logger.setLevel(level)
    if crop_mode in ("center_crop", "pad"):  # "stretch" squeezes the whole image: shown as it is
        img = crop_to_square(img, crop_mode)
    h, w = img.shape[:2]
    k = min(1.0, max_side / max(h, w))
    img = resize_image(img, max(1, round(h * k)), max(1, round(w * k)))
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(to_uint8(img)).save(buf, format="PNG")
    return _data_uri_png(buf.getvalue())


def read_metrics_csv(path: str) -> Dict[str, List[tuple]]:
    """``{column: [(step, value), ...]}`` of the numeric columns of a Lightning CSVLogger file."""
    series: Dict[str, List[tuple]] = {}
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return series
    for row in rows:
        try:
            step = int(float(row.get("step") or ""))
        except ValueError:
            continue
        for key, value in row.items():
            if key in ("step", "epoch") or value in (None, ""):
                continue
            try:
                series.setdefault(key, []).append((step, float(value)))
            except ValueError:
                pass
    return series


def loss_plot(series: Dict[str, List[tuple]]) -> Optional[str]:
    """One PNG (data URI) with a panel per ``train/loss*`` curve (log scale where positive), or None."""
    keys = sorted(k for k in series if re.search(r"(^|/)loss", k))
    if not keys:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    cols = min(3, len(keys))
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        steps, values = zip(*series[key])
        ax.plot(steps, values, lw=1.2)
        if all(v > 0 for v in values) and max(values) > 20 * min(values):
            ax.set_yscale("log")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return _data_uri_png(buf.getvalue())


def _get(cfg: Any, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


SETTINGS = (
    ("input image", "data.image_path"),
    ("scene", "data.scene_dir"),
    ("vertical fov (deg)", "data.default_fovy_deg"),
    ("elevation (deg)", "data.default_elevation_deg"),
    ("scale", "system.guidance.precomputed_scale"),
    ("guidance scale", "system.guidance.guidance_scale"),
    ("diffusion model", "system.guidance.pretrained_model_name_or_path"),
    ("scale", "system.diffusion_model.precomputed_scale"),  # nvs-system's model section
    ("guidance scale", "system.diffusion_model.guidance_scale"),
    ("diffusion model", "system.diffusion_model.pretrained_model_name_or_path"),
    ("training steps", "trainer.max_steps"),
    ("DDIM steps", "system.sampling.steps"),
    ("precision", "trainer.precision"),
    ("seed", "seed"),
)


def _step_of(folder: str) -> int:
    match = re.search(r"it(\d+)-", os.path.basename(folder))
    return int(match.group(1)) if match else -1


def _spread(items: List[str], n: int) -> List[str]:
    if len(items) <= n:
        return items
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)]


def _img(src: str, alt: str, width: Optional[int] = None, cls: str = "") -> str:
    size = (f' width="{width}"' if width else "") + (f' class="{cls}"' if cls else "")
    return (f'<img src="{html.escape(src)}" alt="{html.escape(alt)}"{size} '
            "onerror=\"this.outerHTML='<b class=missing>missing: '+this.alt+'</b>';"
            "document.body.setAttribute('data-broken','1')\">")


def _table(rows: List[tuple]) -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _sections(trial_dir: str, cfg: dict) -> List[str]:
    save = os.path.join(trial_dir, "save")
    out: List[str] = []
    image_path = _get(cfg, "data.image_path")
    # with a posed scene the input cameras come from its files: the single-image camera keys are unused
    skip = {"data.default_fovy_deg", "data.default_elevation_deg"} if _get(cfg, "data.scene_dir") else set()
    settings = [(label, _get(cfg, k)) for label, k in SETTINGS if _get(cfg, k) is not None and k not in skip]
    stats = _read_json(os.path.join(save, RUN_STATS)) or {}
    for mode, s in stats.items():
        if not isinstance(s, dict):
            continue
        cuda = f", peak GPU memory {_number(s['peak_cuda_mb'], '.0f')} MiB" if s.get("peak_cuda_mb") else ""
        settings.append((f"--{mode}", f"{_number(s.get('wall_s'), '.1f')} s on {s.get('device')}, peak RSS "
                         f"{_number(s.get('peak_rss_mb'), '.0f')} MiB{cuda} (finished {s.get('finished')})"))
    crop_mode = _get(cfg, "data.crop_mode") or "center_crop"
    thumb = _image_thumbnail(str(image_path), crop_mode=crop_mode) if image_path else None
    head = _img(thumb, f"input image ({crop_mode} square, as the run used it)") if thumb else ""
    out.append(f"<h2>Input and settings</h2><div class=row>{head}{_table(settings)}</div>")

    plot = loss_plot(read_metrics_csv(os.path.join(trial_dir, "csv_logs", "metrics.csv")))
    if plot:
        out.append(f"<h2>Losses</h2>{_img(plot, 'loss curves')}")

    val_dirs = sorted(glob.glob(os.path.join(save, "it*-val")), key=_step_of)
    if val_dirs:
        rows = []
        for folder in _spread(val_dirs, MAX_VAL_STEPS):
            first = sorted(glob.glob(os.path.join(folder, "*.png")))[:2]
            imgs = "".join(
                _img(os.path.relpath(p, save), f"validation step {_step_of(folder)}", cls="render") for p in first
            )
            rows.append(f"<div class=cap>step {_step_of(folder)}</div>{imgs}")
        out.append("<h2>Validation renders over training (rgb | normal | depth | opacity)</h2>" + "".join(rows))

    videos = sorted(glob.glob(os.path.join(save, "it*-test.mp4")), key=_step_of)
    if videos:
        rel = html.escape(os.path.relpath(videos[-1], save))
        out.append(f"<h2>Test orbit (step {_step_of(videos[-1])}: rgb | depth | opacity)</h2>"
                   f'<video src="{rel}" controls loop muted autoplay playsinline></video>'
                   f'<div class=cap><a href="{rel}">{rel}</a></div>')

    mesh = _mesh_section(save)
    if mesh:
        out.append(mesh)

    sheet = os.path.join(save, "contact_sheet.png")
    metrics = _read_json(os.path.join(save, "metrics.json"))
    if os.path.isfile(sheet) or metrics:
        part = "<h2>Novel views (source | generated | ground truth)</h2>"
        if metrics:
            keys = [k for k in ("psnr", "ssim", "lpips") if k in metrics]
            views = metrics.get("per_view")
            part += _table([(k.upper(), _number(metrics[k], ".4f")) for k in keys]
                           + [("views", len(views) if isinstance(views, list) else "n/a")])
        if os.path.isfile(sheet):
            part += _img("contact_sheet.png", "NVS contact sheet", width=480)
        out.append(part)
    return out


MESH_MAX_FACES = 300_000  # the page embeds at most this many triangles of the mesh (every k-th face beyond), and
# only the vertices they use
VIEWER_JS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "report_assets", "mesh_viewer.js")


def _mesh_payload(path: str) -> Optional[tuple]:
    """(JSON for mesh_viewer.js, faces shown, faces in the file) of an exported mesh file, or None."""
    import numpy as np
    import trimesh

    try:
        mesh = trimesh.load(path, force="mesh", process=False)
    except Exception:  # an unreadable or empty file: the page links it and shows no viewer
        return None
    faces = np.asarray(mesh.faces, dtype=np.uint32)
    if len(faces) == 0:
        return None
    vertices = np.asarray(mesh.vertices, dtype="<f4")
    if faces.max() >= len(vertices):
        return None  # faces naming vertices the file does not hold
    shown = faces[:: -(-len(faces) // MESH_MAX_FACES)]
    used, shown = np.unique(shown, return_inverse=True)  # only the vertices the kept faces use, renumbered
    shown = shown.reshape(-1, 3)
    data = {
        "positions": base64.b64encode(vertices[used].tobytes()).decode(),
        "indices": base64.b64encode(shown.astype("<u4").tobytes()).decode(),
    }
    colors = getattr(mesh.visual, "vertex_colors", None)
    if colors is not None and len(colors) == len(vertices):
        data["colors"] = base64.b64encode(np.asarray(colors)[used, :3].astype(np.uint8).tobytes()).decode()
    return json.dumps(data), len(shown), len(faces)


def _mesh_section(save: str) -> Optional[str]:
    """The newest exported mesh: an interactive WebGL view (mesh and viewer embedded) and links to its files."""
    folders = sorted(glob.glob(os.path.join(save, "it*-export")), key=_step_of)
    files = sorted(glob.glob(os.path.join(folders[-1], "*.ply")) + glob.glob(os.path.join(folders[-1], "*.obj"))) \
        if folders else []
    if not files:
        return None
    links = " · ".join(f'<a href="{html.escape(os.path.relpath(f, save))}">{html.escape(os.path.relpath(f, save))}</a>'
                       for f in files)
    head = f"<h2>Exported mesh (step {_step_of(folders[-1])})</h2>"
    payload = _mesh_payload(files[0])  # PLY first: binary, with vertex colours
    if payload is None:
        return f"{head}<div class=cap>the mesh could not be read for a view; files: {links}</div>"
    data, shown, total = payload
    with open(VIEWER_JS) as f:
        viewer = f.read()
    every = -(-total // MESH_MAX_FACES)
    part = f" (every {every}-th of {total} triangles)" if shown < total else f" ({total} triangles)"
    return (f"{head}<canvas id=mesh-canvas width=640 height=480></canvas>"
            f"<div class=cap>drag to turn, wheel to zoom, double-click to reset{part}; files: {links}</div>"
            f'<script type="application/json" id="mesh-data">{data}</script><script>{viewer}</script>')


STYLE = """body{font-family:system-ui,sans-serif;margin:24px;color:#222;background:#fff;max-width:1300px}
h1{font-size:20px}h2{font-size:16px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px}th,td{padding:3px 10px;text-align:left;border-bottom:1px solid #eee}
.row{display:flex;gap:24px;align-items:flex-start}img{image-rendering:pixelated;max-width:100%;margin:4px}
.row img{min-width:200px}img.render{height:128px}.cap{font-size:12px;color:#555;margin-top:8px}.missing{color:#b00}
video{max-width:100%;min-width:384px;image-rendering:pixelated;background:#000}
#mesh-canvas{border:1px solid #ddd;max-width:100%;cursor:grab}"""


def read_trial_config(parsed: str) -> dict:
    """The trial's ``configs/parsed.yaml`` as a plain dict ({} when absent); UserError for a file that is not a
    config (unreadable, not YAML, or not a mapping)."""
    from omegaconf import DictConfig, OmegaConf

    if not os.path.isfile(parsed):
        return {}
    try:
        conf = OmegaConf.load(parsed)
    except Exception as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"cannot read {parsed}: {detail}; it is not a trial config") from None
    if not isinstance(conf, DictConfig):
        raise UserError(f"{parsed} is not a trial config: its top level is a {type(conf).__name__}, not a mapping")
    return OmegaConf.to_container(conf, resolve=False)


def write_report(trial_dir: str) -> str:
    """Write ``TRIAL/save/report.html`` from what the trial folder holds; returns its path."""
    cfg = read_trial_config(os.path.join(trial_dir, "configs", "parsed.yaml"))
    title = f"{cfg.get('name', 'run')} / {os.path.basename(os.path.normpath(trial_dir))}"
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<div class=cap>{html.escape(os.path.abspath(trial_dir))}</div>"
            + "".join(_sections(trial_dir, cfg)) + "</body></html>\n")
    return write_bytes_atomic(os.path.join(trial_dir, "save", REPORT), page.encode())
