"""Preview candidate scene settings (scale, elevation) with diffusion-only novel views before a long SDS run.

For each candidate (scale, elevation) the input image, taken as seen from ``elevation`` at the given vertical
fov, is sampled with ZeroNVS's DDIM sampler (:func:`zeronvs_diffusion.sample_views`, the batched sampler of
the ``nvs-system``) at a few azimuth offsets on the orbit through the input camera. The initial noise of view
``j`` is drawn from ``seed + j`` for every candidate; with ``eta = 0`` (deterministic DDIM) the rows then differ
by their settings only (with ``eta > 0`` DDIM also draws fresh noise at every step).
Used by ``scripts/preview_settings.py``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
from torch import Tensor

from threestudio.utils.camera import orbit_c2w


@dataclass(frozen=True)
class Candidate:
    scale: float
    elevation_deg: float

    @property
    def label(self) -> str:
        return f"scale {self.scale:g}\nelevation {self.elevation_deg:g}°"


def candidates(scales: Sequence[float], elevations: Sequence[float]) -> List[Candidate]:
    """Every (scale, elevation) pair, scale-major."""
    return [Candidate(float(s), float(e)) for s, e in itertools.product(scales, elevations)]


def orbit_pair(elevation_deg: float, azimuths_deg: Sequence[float], distance: float = 1.0) -> Tuple[Tensor, Tensor]:
    """The input camera (1, 4, 4) at azimuth 0 and targets (V, 4, 4) at the azimuth offsets, same elevation."""
    n = len(azimuths_deg)
    cond = orbit_c2w(torch.tensor([elevation_deg]), torch.zeros(1), torch.tensor([distance]))
    targets = orbit_c2w(torch.full((n,), float(elevation_deg)), torch.tensor(list(azimuths_deg), dtype=torch.float32),
                        torch.full((n,), float(distance)))
    return cond, targets


@torch.no_grad()
def sample_candidates(
    model,
    image01: Tensor,
    fovy_deg: float,
    cands: Sequence[Candidate],
    azimuths_deg: Sequence[float],
    steps: int = 50,
    guidance_scale: float = 3.0,
    eta: float = 1.0,
    seed: int = 0,
    views_per_batch: int = 16,
) -> Tensor:
    """Novel views (K, V, R, R, 3) in [0, 1] of ``image01`` (1, H, W, 3) for K candidates × V azimuths."""
    import zeronvs_diffusion

    noise = [torch.randn((model.latent_channels, *model.latent_size), generator=torch.Generator().manual_seed(seed + j))
             for j in range(len(azimuths_deg))]
    jobs = []  # (candidate index, view index, cond c2w, target c2w)
    for k, cand in enumerate(cands):
        cond, targets = orbit_pair(cand.elevation_deg, azimuths_deg)
        jobs += [(k, j, cond[0], targets[j]) for j in range(len(azimuths_deg))]
    out: List[Tensor] = []
    device = model.device
    from threestudio.utils.progress import progress

    n_batches = -(-len(jobs) // views_per_batch)
    bar = progress(total=n_batches * steps, desc=f"DDIM, {len(jobs)} views in {n_batches} batch(es)", unit="step")
    for start in range(0, len(jobs), views_per_batch):
        chunk = jobs[start : start + views_per_batch]
        scale = torch.tensor([cands[k].scale for k, *_ in chunk], device=device)
        views = zeronvs_diffusion.sample_views(
            model,
            image01.to(device),
            torch.stack([c for _, _, c, _ in chunk]).to(device),
            torch.stack([t for *_, t in chunk]).to(device),
            torch.full((len(chunk),), float(fovy_deg), device=device),
            scale,
            steps=steps,
            eta=eta,
            guidance_scale=guidance_scale,
            generator=torch.Generator().manual_seed(seed + start),
            x_T=torch.stack([noise[j] for _, j, _, _ in chunk]),
            on_step=lambda _: bar.update(),
        )
        out.append(views.float().permute(0, 2, 3, 1).cpu())
    bar.close()
    return torch.cat(out).reshape(len(cands), len(azimuths_deg), *out[0].shape[1:])


def save_contact_sheet(
    path: str, image01: Tensor, views: Tensor, cands: Sequence[Candidate], azimuths_deg: Sequence[float], title: str
) -> str:
    """A labelled grid PNG: one row per candidate (input | views at each azimuth offset). Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import textwrap

    import matplotlib.pyplot as plt

    from threestudio.utils.io import atomic_path

    k, v = views.shape[:2]
    width = 1.7 * (v + 1) + 0.6
    # constrained layout keeps the title above the column labels whatever the number of rows
    fig, axes = plt.subplots(k, v + 1, figsize=(width, 1.75 * k + 0.8), squeeze=False, layout="constrained")
    for row in range(k):
        panels = [image01[0]] + [views[row, j] for j in range(v)]
        for col, panel in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(panel.clamp(0, 1).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title("input" if col == 0 else f"azimuth {azimuths_deg[col - 1]:+g}°", fontsize=8)
        axes[row, 0].set_ylabel(cands[row].label, fontsize=8)
    fig.suptitle(textwrap.fill(title, width=int(width * 13)), fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
