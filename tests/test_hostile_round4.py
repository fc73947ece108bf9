"""Hostile inputs, round 4 (issue 28): nothing written outside the folder the user named, no run left orphaned
by a signal, no input that grows without bound, every bad value refused before the trial exists.

Unit tests first (fast); tests that launch scripts in subprocesses are marked slow.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from threestudio.utils.errors import UserError

sys.path.insert(0, str(ROOT / "scripts"))
import eval_dtu  # noqa: E402
import launcher  # noqa: E402
import report as report_script  # noqa: E402

sys.path.pop(0)


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    return err[0]


def scene_dict(n: int = 3) -> dict:
    intr = np.linalg.inv(np.array([[100.0, 0, 128], [0, 100, 128], [0, 0, 1]]))
    return {"images": np.zeros((n, 4, 4, 3)), "extrinsics": np.tile(np.eye(4)[:3], (n, 1, 1)), "intrinsics": intr}


def write_pickle(path: Path, data) -> Path:
    path.write_bytes(pickle.dumps(data))
    return path


# ------------------------------------------------------------------ 1: nothing written outside the named folder
@pytest.mark.parametrize("key", ["../../escaped", "a/b", "..", "", "x\ny", 7])
def test_pickle_converter_refuses_a_scene_key_that_is_not_a_plain_name(tmp_path, capsys, key):
    from threestudio.data.mipnerf360 import main

    pkl = write_pickle(tmp_path / "P.pkl", {key: scene_dict(), "ok": scene_dict()})
    out = tmp_path / "o" / "a" / "b"
    before = set(tmp_path.rglob("*"))
    assert main([str(pkl), "--out", str(out), "--trust-pickle"]) == 2
    assert "not a plain file name" in one_line(capsys)
    assert set(tmp_path.rglob("*")) - before <= {tmp_path / "o", tmp_path / "o" / "a", out}
    assert not list(tmp_path.rglob("*.npz")), "a scene was written"


def test_pickle_converter_writes_plain_names_inside_out_never_through_a_link(tmp_path):
    from threestudio.data.mipnerf360 import convert_pickle

    victim = tmp_path / "outside" / "victim.npz"
    victim.parent.mkdir()
    victim.write_text("the user's data")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(victim, out / "bonsai.npz")  # an old output that is a link out: replaced, never written through
    pkl = write_pickle(tmp_path / "P.pkl", {"bonsai": scene_dict()})
    assert convert_pickle(str(pkl), str(out), True) == [str(out / "bonsai.npz")]
    assert victim.read_text() == "the user's data" and not os.path.islink(out / "bonsai.npz")


@pytest.mark.parametrize("case,expected", [
    ("missing_key", "missing intrinsics"),
    ("singular", "unreadable"),
    ("string_scene", "expected a dict"),
    ("truncated", "cannot unpickle"),
    ("out_is_file", "is not a folder"),
])
def test_pickle_converter_bad_files_are_one_line(tmp_path, capsys, case, expected):
    from threestudio.data.mipnerf360 import main

    scene = scene_dict()
    out = tmp_path / "out"
    data = {"s": scene}
    if case == "missing_key":
        del scene["intrinsics"]
    elif case == "singular":
        scene["intrinsics"] = np.zeros((3, 3))
    elif case == "string_scene":
        data = {"s": "not a scene"}
    elif case == "out_is_file":
        out.write_text("keep")
    pkl = write_pickle(tmp_path / "P.pkl", data)
    if case == "truncated":
        pkl.write_bytes(pkl.read_bytes()[:40])
    assert main([str(pkl), "--out", str(out), "--trust-pickle"]) == 2
    assert expected in one_line(capsys)
    if case == "out_is_file":
        assert out.read_text() == "keep"


def make_trial(folder: Path) -> Path:
    (folder / "configs").mkdir(parents=True)
    (folder / "configs" / "parsed.yaml").write_text("name: t\n")
    return folder


def test_report_script_refuses_a_trial_whose_save_links_out(tmp_path, capsys):
    trial = make_trial(tmp_path / "trial")
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, trial / "save")
    assert report_script.main([str(trial)]) == 2
    assert "a link to a file or folder outside the trial" in one_line(capsys)
    assert not list(outside.iterdir()), "report.html was written outside the trial"


# ---------------------------------------------------------------------------------------------- 2: signals
def test_sighup_is_handled_like_sigterm_in_a_run():
    from threestudio.utils.stop_signals import STOP_SIGNALS, stop_on_signals

    assert signal.SIGHUP in STOP_SIGNALS
    with stop_on_signals() as stop:
        assert signal.getsignal(signal.SIGHUP) == stop.handle
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGHUP)
        assert stop.signum == signal.SIGHUP
    assert signal.getsignal(signal.SIGHUP) != stop.handle


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_the_config_loads_is_the_stop_not_an_odd_error(tmp_path, monkeypatch, signum):
    """A library interrupted half-way may raise its own error (omegaconf: 'NoneType' object has no attribute
    '_invalidate_flags_cache'); after a signal the run is stopped (128 + signal), not refused as bad input."""
    from threestudio import runner
    from threestudio.utils.stop_signals import RunInterrupted

    def loading(*args, **kwargs):
        try:
            os.kill(os.getpid(), signum)
        except KeyboardInterrupt:
            pass  # swallowed inside the library, which is left half-built
        raise UserError("cannot read config x.yaml: 'NoneType' object has no attribute '_invalidate_flags_cache'")

    monkeypatch.setattr(runner, "load_config", loading)
    with pytest.raises(RunInterrupted) as info:
        runner.run(str(tmp_path / "x.yaml"), "train")
    assert info.value.exit_code == 128 + signum and "nothing was written" in str(info.value)


def test_run_child_registers_its_program_and_forwards_the_first_signal(tmp_path, monkeypatch):
    monkeypatch.setenv(launcher.CHILDREN_ENV, str(tmp_path / "children"))
    monkeypatch.setattr(launcher, "_child_signal", [])
    seen = tmp_path / "seen"
    code = ("import os, signal, sys, time\n"
            f"signal.signal(signal.SIGTERM, lambda *a: (open({str(seen)!r}, 'w').write('TERM'), sys.exit(143)))\n"
            f"os.kill(os.getppid(), signal.SIGTERM)\n"
            "time.sleep(60)\n")
    assert launcher.run_child([sys.executable, "-c", code]) == 143
    assert seen.read_text() == "TERM" and launcher.stopped_by_signal() == signal.SIGTERM
    assert not os.listdir(tmp_path / "children"), "the pid file of an ended program was left"
    assert signal.getsignal(signal.SIGTERM) is not None and signal.getsignal(signal.SIGTERM) != signal.SIG_IGN


def test_eval_run_scan_starts_no_later_stage_after_a_signal(tmp_path, monkeypatch):
    monkeypatch.setattr(launcher, "_child_signal", [signal.SIGHUP])
    later = eval_dtu.LaunchRun([sys.executable, "-c", "pass"], str(tmp_path / "runs" / "n"), str(tmp_path / "n.log"))
    assert "stopped by SIGHUP" in eval_dtu.run_scan(24, [later]) and not (tmp_path / "n.log").exists()


def _descendants(pid: int) -> dict:
    """pid → start time of every process below ``pid`` (by /proc parent links) and of every program registered
    with run_child (its own session)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry)] = (int(fields[1]), fields[19])
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, start) in parents.items():
            if ppid == parent and child not in found:
                found[child] = start
                frontier.append(child)
    return found


# the tiny random model: the eval scripts check the model files before any run (tests/test_eval_dtu.py)
TINY_MODEL = ["--ckpt", "random", "--model-config", str(ROOT / "configs" / "diffusion_tiny.yaml")]


def fake_m360_scene(root: Path, scene: str = "bonsai") -> Path:
    (root / scene).mkdir(parents=True)
    (root / scene / "poses_bounds.npy").write_bytes(b"")  # passes the up-front check; the run fails late
    return root


def fake_dtu_scan(root: Path, scan: int = 8) -> Path:
    (root / f"dtu_scan{scan}").mkdir(parents=True)
    (root / f"dtu_scan{scan}" / "cameras.npz").write_bytes(b"")  # passes the up-front check; the run fails late
    return root


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads the process tree from /proc")
@pytest.mark.parametrize("script,signum", [("eval_dtu", signal.SIGTERM), ("eval_dtu", signal.SIGHUP),
                                           ("eval_dtu", signal.SIGINT), ("eval_mipnerf360", signal.SIGTERM)])
def test_a_signal_to_an_eval_script_stops_its_runs_and_leaves_no_process(tmp_path, script, signum):
    out = tmp_path / "out"
    if script == "eval_dtu":
        root = fake_dtu_scan(tmp_path / "dtu")
        args = ["--root", str(root), "--scans", "8", "--mode", "nvs", "--out", str(out), *TINY_MODEL]
    else:
        root = fake_m360_scene(tmp_path / "m360")
        args = ["--root", str(root), "--scenes", "bonsai", "--out", str(out), *TINY_MODEL]
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / f"{script}.py"), *args], cwd=ROOT,
                            start_new_session=True, env=dict(os.environ, HF_HUB_OFFLINE="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    children = out / "submitit" / "children"
    while not (children.is_dir() and os.listdir(children)):  # its launch.py has started
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    tree = _descendants(proc.pid)
    tree.update({p: launcher._start_time(p) for p in (int(n.split(".")[0]) for n in os.listdir(children))})
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=300)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert proc.returncode == 128 + signum and len(errors) == 1 and "Traceback" not in err, err[-3000:]
    assert f"interrupted ({signal.Signals(signum).name})" in errors[0]
    left = [pid for pid, start in tree.items() if start is not None and launcher._start_time(pid) == start]
    assert not left, f"processes left running: {left}"
    markers = list(out.rglob(eval_dtu.STAGE_DONE))
    assert not markers, "an interrupted run counts as finished"  # so the next run redoes it
    assert not list(out.glob("*.csv")), "a table was written after the signal"


# ---------------------------------------------------------------------------------- 4: one eval run per --out
def test_a_second_eval_run_into_the_same_out_stops_in_one_line(tmp_path, capsys, monkeypatch):
    root, out = fake_dtu_scan(tmp_path / "dtu"), tmp_path / "out"
    ran = []
    monkeypatch.setattr(eval_dtu, "run_scans", lambda *a, **k: ran.append(1) or [])
    argv = ["--root", str(root), "--scans", "8", "--mode", "nvs", "--out", str(out), *TINY_MODEL]
    out.mkdir()
    with eval_dtu.out_lock(str(out)):
        assert eval_dtu.main(argv) == 2
        assert "is in use by another run" in one_line(capsys) and not ran
    assert eval_dtu.main(argv) == 0 and ran  # free again


def test_a_second_mipnerf360_eval_into_the_same_out_stops_in_one_line(tmp_path, capsys, monkeypatch):
    sys.path.insert(0, str(ROOT / "scripts"))
    import eval_mipnerf360

    sys.path.pop(0)
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(eval_dtu, "run_scans", lambda *a, **k: pytest.fail("ran into a locked --out"))
    with eval_dtu.out_lock(str(out)):
        root = fake_m360_scene(tmp_path / "m360")
        assert eval_mipnerf360.main(["--root", str(root), "--scenes", "bonsai", "--out", str(out), *TINY_MODEL]) == 2
    assert "is in use by another run" in one_line(capsys)


# ------------------------------------------------------------------------------------- 3: unbounded inputs
def alias_bomb(levels: int = 9, width: int = 9) -> str:
    lines = [f"a0: &a0 [{', '.join(['lol'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_is_refused_without_expanding_it(tmp_path):
    from threestudio.utils.config import ConfigError, load_config

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb())  # 9 levels × 9 aliases: 387 million values once expanded
    with pytest.raises(ConfigError, match="expands to more than"):
        load_config(str(bomb))
    flow = "{" + alias_bomb(6, 10).strip().replace("\n", ", ") + "}"
    with pytest.raises(ConfigError, match="command-line override x expands"):
        load_config(str(ROOT / "configs" / "diffusion_tiny.yaml"), cli_args=[f"x={flow}"])


def test_a_deeply_nested_config_is_refused(tmp_path):
    from threestudio.utils.config import ConfigError, load_config

    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 200 + "]" * 200 + "\n")
    with pytest.raises(ConfigError, match="nests deeper"):
        load_config(str(deep))


def test_shipped_configs_are_within_the_bounds():
    from threestudio.utils.config import _parse_yaml, check_expansion

    for path in sorted((ROOT / "configs").glob("*.yaml")):
        check_expansion(_parse_yaml(path.read_text()), str(path))


def peak_bytes(fn) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
    except (UserError, SystemExit):
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_cameras_npz_count_comes_from_the_keys_not_the_largest_index(tmp_path):
    from threestudio.data.idr_cameras import camera_count

    # by the largest index, world_mat_1000000 alone would allocate a million-element set (~60 MB)
    assert peak_bytes(lambda: camera_count({"world_mat_1000000": np.eye(4)}, "cameras.npz")) < 2**20
    huge = {"world_mat_0": np.eye(4), "world_mat_999999999": np.eye(4)}
    with pytest.raises(UserError, match="camera 1 has no world_mat_1.*largest index 999999999"):
        camera_count(huge, "cameras.npz")
    with pytest.raises(UserError, match="camera 0 has no world_mat_0"):
        camera_count({"world_mat_999999999": np.eye(4)}, "cameras.npz")
    with pytest.raises(UserError, match="camera 2 has no world_mat_2"):
        camera_count({"world_mat_0": 1, "world_mat_1": 1, "scale_mat_999999999": 1}, "cameras.npz")
    assert camera_count({"world_mat_1": 1, "world_mat_0": 1, "scale_mat_1": 1}, "cameras.npz") == 2


def test_read_camera_on_a_huge_index_is_one_line(tmp_path, capsys):
    sys.path.insert(0, str(ROOT))
    import read_camera

    sys.path.pop(0)
    np.savez(tmp_path / "cameras.npz", world_mat_1000000=np.eye(4))
    assert peak_bytes(lambda: read_camera.main([str(tmp_path / "cameras.npz")])) < 8 * 2**20
    assert "camera 0 has no world_mat_0" in one_line(capsys)


def test_report_embeds_only_the_vertices_of_the_kept_faces(tmp_path, monkeypatch):
    import base64

    import trimesh

    from threestudio.utils import report

    grid = 60  # 2·59² = 6962 faces, capped at 700: every 10th face
    xs, ys = np.meshgrid(np.arange(grid), np.arange(grid))
    vertices = np.stack([xs.ravel(), ys.ravel(), np.zeros(grid * grid)], -1).astype(np.float32)
    idx = np.arange(grid * grid).reshape(grid, grid)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel()
    faces = np.concatenate([np.stack([a, b, c], -1), np.stack([b, d, c], -1)])
    colors = np.random.default_rng(0).integers(0, 255, (len(vertices), 4), dtype=np.uint8)
    mesh = trimesh.Trimesh(vertices, faces, vertex_colors=colors, process=False)
    mesh.export(tmp_path / "model.ply")
    monkeypatch.setattr(report, "MESH_MAX_FACES", 700)
    payload, shown, total = report._mesh_payload(str(tmp_path / "model.ply"))
    data = json.loads(payload)
    positions = np.frombuffer(base64.b64decode(data["positions"]), "<f4").reshape(-1, 3)
    indices = np.frombuffer(base64.b64decode(data["indices"]), "<u4").reshape(-1, 3)
    kept = faces[:: -(-len(faces) // 700)]
    assert total == len(faces) and shown == len(kept) == len(indices)
    assert len(positions) == len(np.unique(kept)) < len(vertices)
    np.testing.assert_array_equal(positions[indices], vertices[kept])  # the same triangles, renumbered
    rgb = np.frombuffer(base64.b64decode(data["colors"]), np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(rgb[indices], colors[kept][..., :3])


@pytest.mark.parametrize("name,content", [
    ("metrics.json", {"psnr": "abc", "ssim": None, "lpips": 1e400, "per_view": 3}),
    ("run_stats.json", [1, 2]),
    ("run_stats.json", {"train": {"wall_s": "x"}, "test": 5}),
])
def test_report_on_edited_json_files_writes_the_page(tmp_path, capsys, name, content):
    trial = make_trial(tmp_path / "trial")
    (trial / "save").mkdir()
    (trial / "save" / name).write_text(json.dumps(content))
    assert report_script.main([str(trial)]) == 0, capsys.readouterr().err
    page = (trial / "save" / "report.html").read_text()
    assert "abc" in page if name == "metrics.json" else "<html>" in page


# ---------------------------------------------------------------------- 5, 6: nonsense refused before the trial
def test_a_non_finite_float_key_is_refused_where_it_is_parsed():
    import threestudio
    from threestudio.utils.config import ConfigError, in_section

    guidance = threestudio.find("zeronvs-guidance")
    for value in (float("inf"), float("nan")):
        with pytest.raises(ConfigError, match="system.guidance.guidance_scale must be a finite number"):
            guidance.parse_config(in_section({"guidance_scale": value}, "system.guidance"))


def test_1e309_on_the_command_line_is_refused_before_the_trial(tmp_path):
    from threestudio.runner import run
    from threestudio.utils.config import ConfigError

    with pytest.raises(ConfigError, match="guidance_scale must be a finite number, got inf"):
        run(str(ROOT / "configs" / "smoke.yaml"), "train", [f"exp_root_dir={tmp_path}", "use_timestamp=false",
            f"system.guidance.pretrained_config={ROOT / 'configs' / 'diffusion_tiny.yaml'}",
            "system.guidance.guidance_scale=1e309"])
    assert not list(tmp_path.iterdir()), "a trial was created"


def test_schedules_must_be_finite():
    from threestudio.utils.config import ConfigError
    from threestudio.utils.schedule import C

    for value in (float("inf"), [0, 1.0, float("nan"), 10]):
        with pytest.raises(ConfigError, match="finite"):
            C(value, 0, 0)


@pytest.mark.parametrize("args,match", [
    ({"lr": -1}, "must be finite, >= 0 .*got lr=-1"),
    ({"lr": float("inf")}, "got lr=inf"),
    ({"lr": 1e300}, "at most 1e\\+30 .*got lr=1e\\+300"),  # torch's float32 update would overflow
    ({"lr": 0.01, "betas": [2.0, 0.9]}, "bad system.optimizer.args for Adam"),
])
def test_optimizer_arguments_are_one_line(args, match):
    import torch

    from threestudio.systems.base import build_optimizer
    from threestudio.utils.config import ConfigError

    with pytest.raises(ConfigError, match=match):
        build_optimizer({"name": "Adam", "args": args}, [{"params": [torch.nn.Parameter(torch.zeros(1))]}])


@pytest.mark.parametrize("key,value,match", [
    ("n_test_views", 100_000_000, "n_test_views must lie in"),
    ("n_val_views", 100_000_000, "n_val_views must lie in"),
    ("height", [32, 1_000_000], "height' must be at most 8192"),
    ("eval_height", 1_000_000, "eval_height must lie in"),
    ("eval_camera_distance", 1e30, "eval_camera_distance must lie in"),
    ("camera_distance_range", [1.0, 1e30], "camera_distance_range must lie in"),
])
def test_orbit_sizes_and_distances_are_bounded(key, value, match):
    from threestudio.data.random_camera import RandomCameraConfig, RandomCameraSampler, ReferenceCamera
    from threestudio.utils.config import ConfigError, parse_structured

    extra = {"resolution_milestones": [1]} if key == "height" else {}
    cfg = parse_structured(RandomCameraConfig, {key: value, **extra})
    with pytest.raises(ConfigError, match=match):
        RandomCameraSampler(cfg, ReferenceCamera(0.0, 0.0, 1.0, 50.0))


@pytest.mark.parametrize("key,value,match", [
    ("height", 1_000_000, "data.height' must be at most 8192"),
    ("default_camera_distance", 1e30, "data.default_camera_distance must lie in"),
])
def test_single_image_sizes_and_distance_are_bounded(key, value, match):
    from threestudio.data.single_image import SingleImageDataModule
    from threestudio.utils.config import ConfigError

    cfg = {"image_path": "skimage:motorcycle_left", "height": 16, "width": 16, "default_fovy_deg": 50.0,
           "random_camera": {"height": 8, "width": 8}, key: value}
    with pytest.raises(ConfigError, match=match):
        SingleImageDataModule(cfg)


def test_test_video_fps_0_is_refused_when_the_system_is_built():
    import threestudio
    from threestudio.utils.config import ConfigError, load_config

    cfg = load_config(str(ROOT / "configs" / "smoke.yaml"), cli_args=[
        f"system.guidance.pretrained_config={ROOT / 'configs' / 'diffusion_tiny.yaml'}", "system.test_video_fps=0"])
    with pytest.raises(ConfigError, match="system.test_video_fps must lie in"):
        threestudio.find(cfg.system_type)(cfg.system)


def test_the_export_grid_is_bounded_by_memory_before_allocating(monkeypatch):
    from threestudio.models.exporters import mesh_exporter
    from threestudio.utils.config import ConfigError

    with pytest.raises(ConfigError, match="exporter.resolution=100000 needs about"):
        mesh_exporter.check_grid_memory(100_000)  # 4.8e16 bytes: more than any machine has
    monkeypatch.setattr(mesh_exporter, "available_memory", lambda: 2**30)
    mesh_exporter.check_grid_memory(256)  # 0.8 GB
    with pytest.raises(ConfigError, match="use at most about 281"):
        mesh_exporter.check_grid_memory(512)


def test_export_values_are_checked_before_writing():
    from omegaconf import OmegaConf

    from threestudio.runner import _check_before_writing
    from threestudio.utils.config import ConfigError

    checked = []

    class System:
        cfg = OmegaConf.create({"export_after_train": False})

        def check_export_config(self):
            checked.append(1)
            raise ConfigError("exporter.resolution=100000 needs about ...")

    cfg = OmegaConf.create({"trainer": {"max_steps": 5}, "checkpoint": {}, "resume": None})
    with pytest.raises(ConfigError, match="exporter.resolution"):
        _check_before_writing(cfg, "export", System(), 1)
    assert checked


def test_resume_at_or_past_max_steps_is_refused(tmp_path):
    from omegaconf import OmegaConf

    from threestudio.runner import _check_before_writing
    from threestudio.utils.config import ConfigError

    class System:
        cfg = OmegaConf.create({})

        def configure_optimizers(self):
            return None

        def check_resume_checkpoint(self, path):
            return {"global_step": 10}

    for max_steps in (10, 5):
        cfg = OmegaConf.create({"trainer": {"max_steps": max_steps, "accelerator": "cpu", "devices": 1},
                                "checkpoint": {}, "resume": "last.ckpt"})
        with pytest.raises(ConfigError, match="holds step 10.*nothing left to train"):
            _check_before_writing(cfg, "train", System(), 1)
    cfg.trainer.max_steps = 11
    assert _check_before_writing(cfg, "train", System(), 1) == {"last.ckpt": {"global_step": 10}}
    cfg.trainer.max_steps = 5
    assert _check_before_writing(cfg, "test", System(), 1)  # rendering a finished trial is fine


# ------------------------------------------------------------------ 5, 6: Mip-NeRF 360 scenes that are wrong
def ring_c2w(n: int = 4) -> np.ndarray:
    import torch

    from threestudio.utils.camera import look_at

    eyes = torch.tensor([[2 * math.cos(a), 2 * math.sin(a), 0.5] for a in np.linspace(0, 2 * math.pi, n + 1)[:-1]])
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    return look_at(eyes.double(), torch.zeros(n, 3, dtype=torch.float64), up).numpy()


def release_scene(folder: Path, c2w=None, hwf=(16.0, 16.0, 20.0)) -> Path:
    import torch

    from threestudio.data.mipnerf360 import opengl_to_llff
    from threestudio.utils.image import save_image

    c2w = ring_c2w() if c2w is None else c2w
    (folder / "images_2").mkdir(parents=True)
    for k in range(len(c2w)):
        save_image(str(folder / "images_2" / f"IMG_{k:03d}.png"), torch.full((8, 8, 3), 0.5))
    llff = opengl_to_llff(c2w, np.tile(hwf, (len(c2w), 1)), np.tile([0.1, 10.0], (len(c2w), 1)))
    np.save(folder / "poses_bounds.npy", llff)
    return folder


def test_a_well_formed_tiny_release_scene_loads(tmp_path):
    from threestudio.data.mipnerf360 import load_scene

    assert len(load_scene(str(release_scene(tmp_path / "s")), 0, size=8).images) == 4


@pytest.mark.parametrize("case,match", [
    ("nan_pose", "camera 1 of the scene has a non-finite pose"),
    ("one_position", "all sit at one position"),
    ("focal_0", "focal length 0 .*must be positive"),
    ("height_0", "image height 0"),
    ("empty_first_image", "cannot read image .*IMG_000.png"),
    ("text_first_image", "cannot read image .*IMG_000.png"),
])
def test_mipnerf360_release_scene_errors_are_one_line(tmp_path, case, match):
    from threestudio.data.mipnerf360 import load_scene

    c2w, hwf, first = ring_c2w(), (16.0, 16.0, 20.0), None
    if case == "nan_pose":
        c2w[1, 0, 3] = np.nan
    elif case == "one_position":
        c2w[:, :3, 3] = [1.0, 2.0, 3.0]
    elif case == "focal_0":
        hwf = (16.0, 16.0, 0.0)
    elif case == "height_0":
        hwf = (0.0, 16.0, 20.0)
    elif case.endswith("first_image"):
        first = b"this is not an image\n" if case.startswith("text") else b""
    scene = release_scene(tmp_path / "s", c2w, hwf)
    if first is not None:
        (scene / "images_2" / "IMG_000.png").write_bytes(first)
    with pytest.raises(UserError, match=match):
        load_scene(str(scene), 0, size=8)


def npz_scene(path: Path, **change) -> Path:
    arrays = {"images": np.full((4, 8, 8, 3), 128, np.uint8), "c2w": ring_c2w(), "fovy_deg": np.float64(50.0)}
    arrays.update(change)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("change,match", [
    ({"c2w": np.where(np.eye(4)[None].repeat(4, 0) > 2, 0, np.full((4, 4, 4), np.nan))}, "non-finite pose"),
    ({"fovy_deg": np.array([50.0, 60.0])}, "fovy_deg must be one number"),
    ({"fovy_deg": np.float64(0.0)}, "fovy_deg must be one number"),
    ({"images": np.zeros((4, 0, 8, 3), np.uint8)}, "expected images"),
    ({"images": np.full((4, 8, 8, 3), 500.0)}, "floats in \\[0, 1\\]"),  # frames stored ×1000 or in 0–255
])
def test_mipnerf360_npz_scene_errors_are_one_line(tmp_path, change, match):
    from threestudio.data.mipnerf360 import load_scene

    with pytest.raises(UserError, match=match):
        load_scene(str(npz_scene(tmp_path / "s.npz", **change)), 0, size=8)
    assert len(load_scene(str(npz_scene(tmp_path / "ok.npz")), 0, size=8).images) == 4


# --------------------------------------------------------------------------------- 5: LPIPS weights and notes
@pytest.mark.parametrize("damage,match", [
    ("negated", "negative values"),
    ("int8", "holds torch.int8 values"),
    ("nan", "holds NaN or inf"),
    ("missing", "alex.pth not found"),
    ("nonexistent", "is not a folder"),
])
def test_a_named_lpips_folder_with_unusable_weights_is_refused_up_front(tmp_path, capsys, damage, match):
    import torch

    import launch
    from threestudio.utils import lpips_alex

    folder = tmp_path / "w"
    folder.mkdir()
    alexnet, linear = lpips_alex.write_random_weights(str(folder), seed=0)
    sd_path = linear if damage in ("negated", "nan") else alexnet
    sd = torch.load(sd_path, weights_only=True)
    key = next(iter(sd))
    if damage == "negated":
        sd = {k: -v for k, v in sd.items()}
    elif damage == "nan":
        sd[key] = torch.full_like(sd[key], float("nan"))
    elif damage == "int8":
        sd[key] = sd[key].to(torch.int8)
    torch.save(sd, sd_path)
    if damage == "missing":
        os.remove(linear)
    named = tmp_path / "nope" if damage == "nonexistent" else folder
    config = ROOT / "configs" / "smoke.yaml"
    assert launch.main(["--config", str(config), "--test", "--lpips-weights", str(named)]) == 2
    assert match in one_line(capsys)


def test_the_lpips_note_says_how_many_views_lack_it():
    from threestudio.utils.metrics import summarize_metrics

    views = [{"target": i, "psnr": 20.0, "ssim": 0.5, "lpips": float("nan")} for i in range(3)]
    assert summarize_metrics(views)["lpips_note"] == "LPIPS is missing (or not finite) for all views"
    views[0]["lpips"] = 0.3
    assert "for 2 of 3 views" in summarize_metrics(views)["lpips_note"]


# ------------------------------------------------------------------------------- 5, 7: images and messages
def test_a_fifo_or_a_device_as_the_image_says_what_it_is(tmp_path):
    from threestudio.utils.image import load_image

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="is a FIFO .*not a regular file"):
        load_image(str(fifo))  # never opened: reading a FIFO would block
    if os.path.exists("/dev/zero"):
        with pytest.raises(UserError, match="/dev/zero is a device, not a regular file"):
            load_image("/dev/zero")
    with pytest.raises(UserError, match="image not found"):
        load_image(str(tmp_path / "missing.png"))


def test_a_newline_in_a_file_name_stays_on_one_line(tmp_path):
    from threestudio.utils.image import load_image

    bad = tmp_path / "new\nline.png"
    for make in (None, b"not an image"):
        if make is not None:
            bad.write_bytes(make)
        with pytest.raises(UserError) as info:
            load_image(str(bad))
        assert "\n" not in str(info.value) and "new\\nline.png" in str(info.value)


def test_a_float_tiff_outside_0_1_is_refused(tmp_path):
    from PIL import Image

    from threestudio.utils.image import load_image

    Image.fromarray(np.full((8, 8), 200.0, np.float32), mode="F").save(tmp_path / "f.tif")
    with pytest.raises(UserError, match="floats in \\[200, 200\\].*must lie in \\[0, 1\\]"):
        load_image(str(tmp_path / "f.tif"))
    Image.fromarray(np.full((8, 8), 0.25, np.float32), mode="F").save(tmp_path / "ok.tif")
    assert float(load_image(str(tmp_path / "ok.tif"))[0, 0, 0]) == 0.25


def test_a_1x1_input_image_is_refused(tmp_path):
    from PIL import Image

    from threestudio.data.single_image import SingleImageDataModule

    Image.new("RGB", (1, 1), (10, 20, 30)).save(tmp_path / "dot.png")
    dm = SingleImageDataModule({"image_path": str(tmp_path / "dot.png"), "height": 16, "width": 16,
                                "default_fovy_deg": 50.0, "random_camera": {"height": 8, "width": 8}})
    with pytest.raises(UserError, match="1x1 px: too small"):
        dm.setup("fit")


def test_mipnerf360_images_of_mixed_sizes_are_refused(tmp_path):
    import torch

    from threestudio.data.mipnerf360 import load_scene
    from threestudio.utils.image import save_image

    scene = release_scene(tmp_path / "s")
    save_image(str(scene / "images_2" / "IMG_002.png"), torch.full((8, 12, 3), 0.5))
    with pytest.raises(UserError, match="IMG_002.png is 12x8 px but .*IMG_000.png is 8x8"):
        load_scene(str(scene), 0, size=8)


@pytest.mark.parametrize("content,match", [
    (b"hello, not numpy\n", "it is a text file"),
    (b"", "the file is empty"),
    (pickle.dumps([1, 2]), "pickled Python objects"),
])
def test_a_file_that_is_not_numpy_is_named_for_what_it_is(tmp_path, content, match):
    from threestudio.data.mipnerf360 import load_scene
    from threestudio.data.posed_views import load_c2w_file

    (tmp_path / "poses.npz").write_bytes(content)
    with pytest.raises(UserError, match=match):
        load_c2w_file(str(tmp_path / "poses.npz"))
    (tmp_path / "scene.npz").write_bytes(content)
    with pytest.raises(UserError, match=match):
        load_scene(str(tmp_path / "scene.npz"), 0)


def test_launch_inference_takes_a_file_name_with_equals_as_a_path(tmp_path):
    (tmp_path / "shot=1.png").write_bytes(b"")

    def run(*args):
        return subprocess.run(["bash", str(ROOT / "launch_inference.sh"), *args, "--ckpt", str(tmp_path / "no.ckpt")],
                              cwd=tmp_path, capture_output=True, text=True, timeout=60)

    res = run("shot=1.png")
    assert res.returncode == 2 and "it is a file; to use it as the image, pass ./shot=1.png" in res.stderr
    res = run("./shot=1.png")  # taken as the image: the run gets as far as the missing weights
    assert res.returncode == 2 and "no.ckpt" in res.stderr and "override" not in res.stderr


@pytest.mark.slow
def test_sighup_while_training_writes_a_checkpoint_and_releases_the_lock(tmp_path):
    from test_hostile_trials import stop_training_with

    trial, _ = stop_training_with(tmp_path, signal.SIGHUP)  # exit 129, one line, the checkpoint at the signal
    assert (trial / ".lock").read_text() == "", "the lock still names the stopped run"


# ------------------------------------------------------------------------- 6: bench.py trace's fake-CUDA build
def test_fake_cuda_compiler_command_without_gpp_or_with_a_cxx_command(monkeypatch, tmp_path):
    from threestudio.profiling import fake_cuda

    monkeypatch.setattr(fake_cuda.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(fake_cuda.FakeCudaError, match="no C\\+\\+ compiler found"):
        fake_cuda.compiler_command()
    assert issubclass(fake_cuda.FakeCudaError, UserError)  # entry points print it in one line, exit 2
    monkeypatch.setattr(fake_cuda.shutil, "which", lambda name: f"/usr/bin/{name}" if name == "ccache" else None)
    monkeypatch.setenv("CXX", "ccache g++")
    assert fake_cuda.compiler_command() == ["ccache", "g++"]
    monkeypatch.setenv("CXX", "nonexistent-cxx -O2")
    with pytest.raises(fake_cuda.FakeCudaError, match="'nonexistent-cxx' is not an installed program"):
        fake_cuda.compiler_command()


def test_fake_cuda_cache_falls_back_to_a_temporary_folder(tmp_path, monkeypatch, caplog):
    from threestudio.profiling import fake_cuda

    monkeypatch.setattr(fake_cuda.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    (tmp_path / "cachefile").write_text("a file where the cache folder should be")
    folder = fake_cuda.writable_cache(str(tmp_path / "cachefile" / "fake_cuda"))
    assert folder.startswith(str(tmp_path / "tmp")) and os.path.isdir(folder)
    assert "building in" in caplog.text and (tmp_path / "cachefile").read_text().startswith("a file")
    assert fake_cuda.writable_cache(str(tmp_path / "fine")) == str(tmp_path / "fine")
    if os.geteuid() != 0:  # root writes anywhere: a read-only folder is then no test
        (tmp_path / "ro").mkdir(mode=0o500)
        assert fake_cuda.writable_cache(str(tmp_path / "ro" / "c")) == folder


def test_bench_trace_without_a_compiler_is_one_line(monkeypatch, capsys):
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench
    from benchmarks import trace

    sys.path.pop(0)
    from threestudio.profiling import fake_cuda

    def no_compiler(args):
        raise fake_cuda.FakeCudaError("no C++ compiler found (install g++ or set CXX)")

    monkeypatch.setattr(trace, "before_torch", no_compiler)
    assert bench.main(["trace"]) == 2
    assert "no C++ compiler found" in one_line(capsys)


@pytest.mark.parametrize("seed", ["1e23", "100000000000000000000000", "-5"])
def test_a_seed_numpy_cannot_take_is_one_line(seed):
    from threestudio.utils.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="seed"):
        load_config(str(ROOT / "configs" / "smoke.yaml"), cli_args=[f"seed={seed}"])


def _sleeping_job(seconds: float) -> str:
    """A launcher job: one program (a sleeping Python) through run_child."""
    return str(launcher.run_child([sys.executable, "-c", f"import time; time.sleep({seconds})"]))


@pytest.mark.slow
def test_run_jobs_forwards_a_signal_starts_nothing_more_and_waits(tmp_path):
    import threading

    cfg = launcher.LauncherConfig(kind="local", folder=str(tmp_path / "submitit"), poll_s=0.05,
                                  python_path=[str(ROOT), str(ROOT / "scripts"), str(ROOT / "tests")])
    children = tmp_path / "submitit" / "children"

    def signal_when_running():
        while not (children.is_dir() and os.listdir(children)):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=signal_when_running, daemon=True)
    jobs = [(f"job{i}", _sleeping_job, (120,)) for i in range(3)]  # one slot (the CPU): one runs, two wait
    with pytest.raises(launcher.Interrupted) as info:
        with launcher.stop_signals():
            thread.start()
            launcher.run_jobs(jobs, cfg)
    assert info.value.exit_code == 143 and info.value.stopped == 1
    assert not os.listdir(children), "a program is still registered (running)"
    assert len(list((tmp_path / "submitit").glob("*_submitted.pkl"))) == 1, "a queued job started after the signal"
