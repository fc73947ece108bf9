"""IDR/NeuS camera decoding (threestudio/data/idr_cameras.py) and the read_camera.py command line."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import read_camera
from threestudio.data.idr_cameras import (
    compose_P,
    crop_resize_intrinsics,
    decompose_P,
    load_idr_cameras,
    opencv_to_opengl_np,
)
from threestudio.utils.camera import opencv_to_opengl, opengl_to_opencv
from threestudio.utils.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q @ np.diag(np.sign(np.diag(r)))
    return q if np.linalg.det(q) > 0 else -q


def test_dtu_scan24_view25_matches_known_values(dtu_scan24):
    cam = load_idr_cameras(str(dtu_scan24), indices=[25])[0]
    assert cam.normalized and cam.image_size == (400, 300)
    np.testing.assert_allclose(
        [cam.K[0, 0], cam.K[1, 1], cam.K[0, 2], cam.K[1, 2]], [723.08, 720.79, 205.80, 154.77], atol=0.01
    )
    np.testing.assert_allclose(cam.center, [2.1545, 0.8778, -1.7730], atol=1e-4)
    assert cam.fov_y_deg == pytest.approx(23.51, abs=0.01)
    assert cam.fov_y_deg == pytest.approx(math.degrees(2 * math.atan(150 / cam.K[1, 1])))
    assert cam.distance == pytest.approx(np.linalg.norm([2.1545, 0.8778, -1.7730]), abs=1e-3)
    assert cam.K[2, 2] == 1.0 and cam.K[1, 0] == 0.0


def test_decomposition_reproduces_every_dtu_projection(dtu_scan24):
    data = np.load(dtu_scan24 / "cameras.npz")
    for cam in load_idr_cameras(str(dtu_scan24)):
        P = (data[f"world_mat_{cam.index}"] @ data[f"scale_mat_{cam.index}"])[:3]
        Q = compose_P(cam.K, cam.c2w_opencv)
        scale = P[2, 2] / Q[2, 2]
        np.testing.assert_allclose(P, scale * Q, rtol=1e-6, atol=1e-6 * np.abs(P).max())
        R = cam.c2w_opencv[:3, :3]
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-9)
        assert np.linalg.det(R) == pytest.approx(1.0)
        assert (np.diag(cam.K) > 0).all()


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_decompose_synthetic_projection_any_scale_and_sign(sign):
    rng = np.random.default_rng(3)
    K = np.array([[500.0, 0.7, 160.0], [0.0, 480.0, 121.0], [0.0, 0.0, 1.0]])
    R, t = random_rotation(rng), rng.normal(size=3)
    P = sign * 3.7 * K @ np.hstack([R, t[:, None]])
    K2, c2w = decompose_P(P)
    np.testing.assert_allclose(K2, K, atol=1e-9)
    np.testing.assert_allclose(c2w[:3, :3], R.T, atol=1e-9)
    np.testing.assert_allclose(c2w[:3, 3], -R.T @ t, atol=1e-9)


def test_decompose_rejects_singular_and_non_finite():
    with pytest.raises(ValueError, match="singular"):
        decompose_P(np.zeros((3, 4)))
    P = np.eye(4)[:3]
    P[0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        decompose_P(P)


def test_opencv_opengl_round_trip():
    rng = np.random.default_rng(0)
    c2w = np.eye(4)
    c2w[:3, :3], c2w[:3, 3] = random_rotation(rng), rng.normal(size=3)
    gl = opencv_to_opengl_np(c2w)
    np.testing.assert_allclose(gl[:, 0], c2w[:, 0])  # x right in both
    np.testing.assert_allclose(gl[:3, 1], -c2w[:3, 1])  # y up vs y down
    np.testing.assert_allclose(gl[:3, 2], -c2w[:3, 2])  # OpenGL looks down −z, OpenCV down +z
    np.testing.assert_allclose(gl[:3, 3], c2w[:3, 3])  # same centre
    back = opengl_to_opencv(opencv_to_opengl(torch.from_numpy(c2w)))
    np.testing.assert_allclose(back.numpy(), c2w)


def test_crop_resize_intrinsics_maps_pixel_centres():
    K = np.array([[700.0, 0, 205.8], [0, 690.0, 154.7], [0, 0, 1]])
    # full frame, halved: OpenCV pixel u ↔ continuous u + 0.5, scaled by 0.5
    fx, fy, cx, cy = crop_resize_intrinsics(K, (400, 300), (200, 150), crop_square=False)
    assert (fx, fy, cx, cy) == pytest.approx((350.0, 345.0, 103.15, 77.6))
    # centre square crop of 400×300 drops 50 columns on the left, then 300 → 100
    fx, fy, cx, cy = crop_resize_intrinsics(K, (400, 300), (100, 100), crop_square=True)
    assert (fx, fy, cx, cy) == pytest.approx((700 / 3, 230.0, (206.3 - 50) / 3, 155.2 / 3))


def _write_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def test_missing_world_mat_names_file_and_camera(tmp_path):
    npz = _write_npz(tmp_path / "cameras.npz", world_mat_0=np.eye(4), world_mat_2=np.eye(4))
    with pytest.raises(UserError, match=r"cameras\.npz.*camera 1.*world_mat_1"):
        load_idr_cameras(str(npz))


def test_singular_and_non_finite_matrices_name_file_and_camera(tmp_path):
    bad = np.eye(4)
    bad[:3, :3] = 0.0
    npz = _write_npz(tmp_path / "cameras.npz", world_mat_0=np.eye(4), world_mat_1=bad)
    with pytest.raises(UserError, match=r"cameras\.npz: camera 1: .*singular"):
        load_idr_cameras(str(npz))
    nan = np.eye(4)
    nan[0, 3] = np.inf
    npz = _write_npz(tmp_path / "cams2.npz", world_mat_0=nan)
    with pytest.raises(UserError, match=r"cams2\.npz: camera 0: .*non-finite"):
        load_idr_cameras(str(npz))
    npz = _write_npz(tmp_path / "cams3.npz", world_mat_0=np.eye(4), scale_mat_0=np.full((4, 4), np.nan))
    with pytest.raises(UserError, match=r"cams3\.npz: camera 0: scale_mat_0 has non-finite"):
        load_idr_cameras(str(npz))


def test_cli_json_view25(dtu_scan24, capsys):
    assert read_camera.main([str(dtu_scan24), "--json", "--index", "25", "31"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["index"] for r in records] == [25, 31]
    r = records[0]
    keys = {"index", "K", "c2w_opencv", "c2w_opengl", "center", "distance", "fov_x_deg", "fov_y_deg", "normalized"}
    assert keys <= set(r)
    assert r["normalized"] is True
    assert r["fov_y_deg"] == pytest.approx(23.51, abs=0.01)
    np.testing.assert_allclose(r["center"], [2.1545, 0.8778, -1.7730], atol=1e-4)
    np.testing.assert_allclose(np.array(r["c2w_opengl"])[:3, 3], r["center"])


def test_cli_table_image_size_raw_world_and_plot(dtu_scan24, tmp_path, capsys):
    png = tmp_path / "plots" / "cams.png"
    argv = [str(dtu_scan24 / "cameras.npz"), "--index", "0", "25", "--image-size", "800", "600", "--plot", str(png)]
    assert read_camera.main(argv) == 0
    out = capsys.readouterr().out
    assert "normalised world" in out and "800x600" in out
    assert f"{math.degrees(2 * math.atan(300 / 720.7939)):.2f}" in out  # fov_y from the given size
    assert png.stat().st_size > 10_000
    assert read_camera.main([str(dtu_scan24), "--json", "--index", "25", "--no-normalize"]) == 0
    raw = json.loads(capsys.readouterr().out)[0]
    assert raw["normalized"] is False and raw["distance"] > 100  # DTU's raw world is in millimetres


def test_plot_helpers_find_the_look_at_point_and_label_sparsely(dtu_scan24):
    cameras = load_idr_cameras(str(dtu_scan24 / "cameras.npz"))
    target = read_camera.look_at_point(cameras)
    assert np.linalg.norm(target) < 0.5  # DTU's cameras look at the object, inside the unit sphere
    for cam in cameras:  # the point lies in front of every camera
        assert (target - cam.center) @ cam.c2w_opencv[:3, 2] > 0
    assert read_camera.label_every(49) == 5 and read_camera.label_every(2) == 1


def test_cli_bad_input_exits_2_with_one_line(dtu_scan24, tmp_path, capsys):
    assert read_camera.main([str(dtu_scan24), "--index", "49"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "camera index 49" in err and "cameras.npz" in err and "0..48" in err
    assert read_camera.main([str(tmp_path / "nowhere")]) == 2
    assert "not found" in capsys.readouterr().err
    assert read_camera.main([str(tmp_path)]) == 2  # a folder without cameras.npz
    assert "no cameras.npz" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_help_explains_the_format():
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    out = subprocess.run(
        [sys.executable, "read_camera.py", "--help"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True
    ).stdout
    phrases = ("world_mat", "K [R | t]", "scale_mat", "unit sphere", "RQ", "positive diagonal", "K[2,2] = 1", "-R^T t")
    for phrase in phrases:
        assert phrase in out, phrase
