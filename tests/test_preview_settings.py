"""scripts/preview_settings.py: diffusion-only previews of candidate scales/elevations (tiny random model)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def preview():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import preview_settings
    finally:
        sys.path.pop(0)
    return preview_settings


def test_contact_sheet_and_json_for_every_candidate(tmp_path, preview):
    image = tmp_path / "photo.jpg"
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0xA405] = 35
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 40, 3), dtype=np.uint8)).save(image, exif=exif)
    out = tmp_path / "preview"
    code = preview.main([str(image), "--scales", "0.5", "1.0", "--elevations", "10", "40", "--azimuths", "-45", "90",
                         "--ckpt", "random", "--model-config", str(ROOT / "configs" / "diffusion_tiny.yaml"),
                         "--steps", "2", "--device", "cpu", "--out", str(out)])
    assert code == 0
    meta = json.loads((out / "preview.json").read_text())
    assert [(r["scale"], r["elevation_deg"]) for r in meta["rows"]] == [(0.5, 10), (0.5, 40), (1.0, 10), (1.0, 40)]
    from threestudio.utils.exif import fovy_from_focal

    assert meta["fovy_deg"] == pytest.approx(fovy_from_focal(35 * np.hypot(40, 24) / np.hypot(36, 24), 24), abs=1e-2)
    assert meta["fov_source"].startswith("EXIF: FocalLengthIn35mmFilm")  # where the fov came from, not "see the log"
    sheet = np.asarray(Image.open(out / "preview.png"))
    assert sheet.shape[0] > sheet.shape[1] > 200  # 4 rows of 3 panels, labelled


def test_rows_differ_by_their_settings_only(preview):
    import zeronvs_diffusion
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from preview import candidates, sample_candidates  # scripts/preview.py
    finally:
        sys.path.pop(0)

    model = zeronvs_diffusion.load_model("random", config=str(ROOT / "configs" / "diffusion_tiny.yaml"))
    image = torch.rand(1, 32, 32, 3)
    cands = candidates([0.7, 0.7, 1.4], [20])
    views = sample_candidates(model, image, 40.0, cands, [-30.0, 60.0], steps=2, eta=0.0, views_per_batch=4)
    assert views.shape == (3, 2, 32, 32, 3)
    assert torch.allclose(views[0], views[1], atol=1e-5)  # same settings and noise (eta 0): same views
    assert not torch.allclose(views[0], views[2], atol=1e-3)  # another scale changes them


def test_bad_arguments_are_one_line_errors(tmp_path, preview, capsys):
    code = preview.main(["missing.png", "--scales", "0.7", "--ckpt", "random", "--model-config",
                         str(ROOT / "configs" / "diffusion_tiny.yaml"), "--out", str(tmp_path)])
    assert code == 2 and "image not found" in capsys.readouterr().err
    assert preview.main(["x.png", "--scales", "-1", "--ckpt", "random", "--out", str(tmp_path)]) == 2
