"""Reading the user's image: EXIF fov (threestudio/utils/exif.py), orientation, large/small/transparent inputs,
and one-line messages for files that are not images. Every image is written here with Pillow (no fixtures)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from PIL import Image

from threestudio.data.single_image import SingleImageDataModule
from threestudio.utils.exif import EXIF_IFD, fovy_from_focal
from threestudio.utils.image import load_image


def write_photo(path, width, height, orientation=None, f35=None, focal_mm=None, plane_res=None, unit=None,
                capture_width=None, fmt=None):
    """A gradient photo with the given EXIF tags (only those not None)."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    arr = np.concatenate([np.broadcast_to(x, (height, width, 1)), np.broadcast_to(y, (height, width, 1)),
                          np.full((height, width, 1), 80.0)], axis=-1).astype(np.uint8)
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    sub = exif.get_ifd(EXIF_IFD)
    for tag, value in ((0xA405, f35), (0x920A, focal_mm), (0xA20E, plane_res), (0xA20F, plane_res), (0xA210, unit),
                       (0xA002, capture_width)):
        if value is not None:
            sub[tag] = value
    Image.fromarray(arr).save(path, format=fmt, exif=exif)
    return str(path)


def _data(image_path, **overrides):
    cfg = {"image_path": image_path, "height": 16, "width": 16, "default_fovy_deg": "auto",
           "fovy_fallback_deg": 47.0, "conditioning_max_size": 16,
           "random_camera": {"height": 8, "width": 8, "fovy_range": ["auto", "auto"], "eval_fovy_deg": "auto",
                             "eval_height": 8, "eval_width": 8, "n_test_views": 2}}
    cfg.update(overrides)
    return cfg


def test_fov_from_35mm_equivalent_uses_the_diagonal_and_the_square_crop(tmp_path):
    path = write_photo(tmp_path / "phone.jpg", 64, 48, f35=26)
    cfg = SingleImageDataModule.resolve_config(_data(path))
    f_px = 26 * math.hypot(64, 48) / math.hypot(36, 24)
    expected = math.degrees(2 * math.atan(48 / 2 / f_px))  # centre crop: the 48 px square
    assert cfg.default_fovy_deg == pytest.approx(expected, abs=1e-3)
    assert list(cfg.random_camera.fovy_range) == [cfg.default_fovy_deg] * 2
    assert cfg.random_camera.eval_fovy_deg == cfg.default_fovy_deg
    padded = SingleImageDataModule.resolve_config(_data(path, crop_mode="pad"))
    assert padded.default_fovy_deg == pytest.approx(fovy_from_focal(f_px, 64), abs=1e-3)
    dm = SingleImageDataModule(_data(path))
    assert dm.reference.fovy_deg == pytest.approx(expected, abs=1e-3)
    assert dm.sampler.fovy_range == (dm.reference.fovy_deg, dm.reference.fovy_deg)


def test_fov_from_focal_plane_resolution_follows_resizing_and_orientation(tmp_path):
    # 4.0 mm lens, 1000 px per cm of sensor (unit 3) at a capture width of 128 px; the file is half that size
    path = write_photo(tmp_path / "cam.png", 64, 40, focal_mm=4.0, plane_res=1000.0, unit=3, capture_width=128,
                       orientation=6)
    f_px = 4.0 * 1000.0 / 10.0 * 64 / 128
    cfg = SingleImageDataModule.resolve_config(_data(path, crop_mode="stretch"))
    # orientation 6 turns the photo upright: 40 wide, 64 high; stretch keeps the full height
    assert cfg.default_fovy_deg == pytest.approx(fovy_from_focal(f_px, 64), abs=1e-3)


def test_without_exif_the_fallback_is_used_and_said_once(tmp_path, caplog):
    path = write_photo(tmp_path / "plain.png", 20, 20)
    with caplog.at_level(logging.INFO, logger="threestudio.data.single_image"):
        dm = SingleImageDataModule(_data(path))
    assert dm.reference.fovy_deg == 47.0
    lines = [r.getMessage() for r in caplog.records if "default_fovy_deg" in r.getMessage()]
    assert len(lines) == 1 and "no EXIF focal length" in lines[0]


def test_an_explicit_fov_wins_over_exif(tmp_path):
    path = write_photo(tmp_path / "phone.jpg", 64, 48, f35=26)
    assert SingleImageDataModule(_data(path, default_fovy_deg=33.0)).reference.fovy_deg == 33.0
    with pytest.raises(Exception, match="default_fovy_deg"):
        SingleImageDataModule(_data(path, default_fovy_deg="wide"))


def test_exif_orientation_is_applied_with_a_warning(tmp_path, caplog):
    path = write_photo(tmp_path / "portrait.jpg", 48, 32, orientation=6, fmt="JPEG")
    with caplog.at_level(logging.WARNING):
        img = load_image(path)
    assert img.shape[:2] == (48, 32)  # upright: taller than wide
    assert any("EXIF orientation 6" in r.getMessage() for r in caplog.records)
    # orientation 6 = rotate 90° clockwise to display: the stored left column becomes the top row
    stored = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
    assert np.abs(img[0, :, :3].numpy() - stored[::-1, 0]).max() < 0.1


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_large_images_are_reduced_while_reading(tmp_path, fmt):
    path = write_photo(tmp_path / f"big.{fmt.lower()}", 1200, 900, fmt=fmt)
    img = load_image(path, min_side=100)
    assert 100 <= min(img.shape[:2]) < 200 and img.shape[1] > img.shape[0]
    assert img[..., 0].mean() == pytest.approx(0.5, abs=0.05)  # the same picture (horizontal gradient)
    assert load_image(path).shape[:2] == (900, 1200)


def test_small_and_transparent_inputs_warn_and_go_on(tmp_path, caplog):
    small = write_photo(tmp_path / "tiny.png", 4, 4)
    clear = tmp_path / "clear.png"
    Image.fromarray(np.zeros((20, 20, 4), np.uint8)).save(clear)
    with caplog.at_level(logging.WARNING):
        SingleImageDataModule(_data(small)).setup()  # the image is read in setup
        SingleImageDataModule(_data(str(clear))).setup()
    messages = " | ".join(r.getMessage() for r in caplog.records)
    assert "smaller than the training resolution 16 px" in messages
    assert "alpha channel is 0 everywhere" in messages


@pytest.mark.parametrize(
    "content, expected",
    [(b"", "the file is empty"), (b"hello, this is not a picture\n", "holds text, not an image"),
     (bytes(range(200, 256)), "not an image format")],
)
def test_non_images_are_one_line_user_errors(tmp_path, content, expected):
    from threestudio.utils.errors import UserError

    path = tmp_path / "photo.png"
    path.write_bytes(content)
    with pytest.raises(UserError, match=expected) as info:
        load_image(str(path))
    assert "\n" not in str(info.value) and "backend" not in str(info.value)


def test_the_shipped_configs_resolve_auto_fov_into_the_parsed_config(tmp_path):
    from omegaconf import OmegaConf

    from threestudio.runner import resolve_data_config
    from threestudio.utils.config import dump_config, load_config

    path = write_photo(tmp_path / "phone.jpg", 64, 48, f35=26)
    for name in ("smoke", "zeronvs"):
        cfg = load_config(f"configs/{name}.yaml", cli_args=[f"data.image_path={path}"])
        assert cfg.data.default_fovy_deg == "auto"
        resolve_data_config(cfg)
        dump_config(str(tmp_path / f"{name}.yaml"), cfg)
        saved = OmegaConf.load(tmp_path / f"{name}.yaml").data
        fovy = fovy_from_focal(26 * math.hypot(64, 48) / math.hypot(36, 24), 48)
        assert saved.default_fovy_deg == pytest.approx(fovy, abs=1e-3)
        assert list(saved.random_camera.fovy_range) == [saved.default_fovy_deg] * 2
        assert saved.random_camera.eval_fovy_deg == saved.default_fovy_deg
        explicit = load_config(f"configs/{name}.yaml", cli_args=[f"data.image_path={path}", "data.default_fovy_deg=30"])
        resolve_data_config(explicit)
        assert explicit.data.default_fovy_deg == 30 and list(explicit.data.random_camera.fovy_range) == [30, 30]


def test_the_bundled_example_has_one_camera_in_every_entry_point(tmp_path):
    """launch.py (both shipped configs), launch_inference.sh (which passes no --fov for it) and the preview all take
    the example's calibrated fov from threestudio/data/examples.py; the configs use its elevation and scale."""
    import sys

    from threestudio.data.examples import example_camera
    from threestudio.runner import resolve_data_config
    from threestudio.utils.config import load_config

    camera = example_camera("skimage:motorcycle_left")
    assert camera.fovy_deg == pytest.approx(28.21, abs=0.01)  # 2 atan(250 / 994.978 px)
    for name in ("smoke", "zeronvs"):
        cfg = load_config(f"configs/{name}.yaml")
        assert cfg.data.image_path == "skimage:motorcycle_left"
        resolve_data_config(cfg)
        assert cfg.data.default_fovy_deg == camera.fovy_deg
        assert cfg.data.default_elevation_deg == camera.elevation_deg
        assert cfg.system.guidance.precomputed_scale == camera.scale
    script = open("launch_inference.sh").read()
    assert "28.2" not in script.split("set -euo pipefail")[1]  # no second copy of the number in the script's code
    sys.path.insert(0, "scripts")
    import preview_settings

    _, fovy, source = preview_settings.input_view("skimage:motorcycle_left", None)
    assert fovy == camera.fovy_deg and "calibration" in source
    assert preview_settings.input_view("skimage:motorcycle_left", 40.0)[1:] == (40.0, "--fov")
