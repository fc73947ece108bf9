"""Hostile trials, inputs and signals (issue 21): nothing outside the trial is written or truncated, no input is
deleted, a killed child is never a finished scan, every stop says why in one line.

Unit tests of the lock, the confined writes, the checks and the scripts' helpers; slow tests launch the smoke
pipeline in subprocesses (signals, a full disk in a private tmpfs, bad command lines grouped in one process).
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, smoke_args
from test_trial_safety import assert_one_line_exit, run_cases, snapshot

from threestudio.utils.errors import ConfigError, UserError

TINY_YAML = str(ROOT / "configs" / "diffusion_tiny.yaml")


def make_victim(folder: Path, name: str = "victim.txt") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    victim = folder / name
    victim.write_text("the user's data")
    return victim


# ------------------------------------------------------------------ 1, 2: no write or truncation out of the trial
@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_lock_never_opens_a_linked_file_and_leaves_it_intact(tmp_path, link):
    from threestudio.utils.trial_lock import trial_lock

    victim = make_victim(tmp_path / "outside")
    trial = tmp_path / "trial"
    trial.mkdir()
    (os.symlink if link == "symlink" else os.link)(victim, trial / ".lock")
    with pytest.raises(UserError, match="not the trial's own lock file"):
        with trial_lock(str(trial)):
            pass
    assert victim.read_text() == "the user's data"


def test_writes_do_not_follow_a_linked_folder_out_of_the_trial(tmp_path):
    from threestudio.runner import check_trial_links
    from threestudio.utils.image import save_image
    from threestudio.utils.io import UnsafePathError, confined_writes, ensure_folder

    outside = tmp_path / "outside"
    victim = make_victim(outside, "0000.png")
    trial = tmp_path / "trial"
    (trial / "save").mkdir(parents=True)
    os.symlink(outside, trial / "save" / "it4-test")
    with pytest.raises(UserError, match="it4-test.*outside the trial"):
        check_trial_links(str(trial))
    with confined_writes(str(trial)):
        with pytest.raises(UnsafePathError, match="symbolic link"):
            save_image(str(trial / "save" / "it4-test" / "0000.png"), torch.zeros(4, 4, 3))
        with pytest.raises(UnsafePathError):
            save_image(str(trial / "save" / "it4-test" / "0001.png"), torch.zeros(4, 4, 3))
        with pytest.raises(UnsafePathError):
            ensure_folder(str(trial / "save" / "it4-test" / "sub"))
        save_image(str(trial / "save" / "it4-val" / "0000.png"), torch.zeros(4, 4, 3))  # inside: fine
    assert sorted(p.name for p in outside.iterdir()) == ["0000.png"] and victim.read_text() == "the user's data"
    os.symlink(trial / "save" / "it4-val", trial / "save" / "inside-link")  # a link within the trial is fine
    os.remove(trial / "save" / "it4-test")
    check_trial_links(str(trial))


def test_a_dangling_parsed_yaml_link_is_refused_and_its_target_not_created(tmp_path):
    from threestudio.runner import check_trial_links
    from threestudio.utils.config import dump_config
    from threestudio.utils.io import confined_writes

    trial = tmp_path / "trial"
    (trial / "configs").mkdir(parents=True)
    target = tmp_path / "outside" / "created.yaml"
    os.symlink(target, trial / "configs" / "parsed.yaml")
    with pytest.raises(UserError, match="parsed.yaml"):
        check_trial_links(str(trial))
    with confined_writes(str(trial)):
        dump_config(str(trial / "configs" / "parsed.yaml"), {"a": 1})  # replaces the link itself
    assert not target.exists() and not (trial / "configs" / "parsed.yaml").is_symlink()


# ------------------------------------------------------------------------------------ 3: names, environment
@pytest.mark.parametrize(
    "override",
    ["name=../../X", "tag=../../../X", "name=/abs/path", "name=..", "tag=.", "timestamp=/../x", "name=a\x00b",
     'name="a\\x00b"'],
)
def test_name_and_tag_are_one_path_component(override):
    from threestudio.utils.config import load_config

    with pytest.raises(ConfigError) as info:
        load_config(str(ROOT / "configs" / "smoke.yaml"), cli_args=[override])
    assert "\n" not in str(info.value)


def test_configs_never_read_the_environment_and_resolvers_stay_small(monkeypatch):
    """The policy (README): ${oc.env:...} is refused everywhere; arithmetic resolvers take numbers only."""
    from threestudio.utils.config import load_config

    monkeypatch.setenv("SECRET", "hunter2")
    smoke = str(ROOT / "configs" / "smoke.yaml")
    for override in ("tag=${oc.env:SECRET}", "data.image_path=${oc.env:SECRET,x}"):
        with pytest.raises(ConfigError, match="oc.env.*disabled") as info:
            load_config(smoke, cli_args=[override])
        assert "hunter2" not in str(info.value)
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="takes numbers"):
        load_config(smoke, cli_args=["tag=${mul:'aaaa',1000000000}"])
    assert time.perf_counter() - started < 5, "the 4 GB string was built"
    assert load_config(smoke, cli_args=["tag=${mul:2,3}", "use_timestamp=false"]).trial_name == "6"


# ------------------------------------------------------------------------------------ 4: convert --overwrite
def test_convert_overwrite_replaces_only_a_converted_model(tmp_path, monkeypatch, capsys):
    from zeronvs_diffusion.convert import main

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    ckpt, config, notes = inputs / "model.ckpt", inputs / "config.yaml", inputs / "NOTES.txt"
    ckpt.write_bytes(b"weights")
    shutil.copy(TINY_YAML, config)
    notes.write_text("notes")
    before = snapshot(inputs)
    # the folder holding the inputs, and the working folder: refused before anything is read
    assert main(["--ckpt", str(ckpt), "--config", str(config), "--out", str(inputs), "--overwrite"]) == 2
    assert "holds the input" in capsys.readouterr().err
    monkeypatch.chdir(inputs)
    assert main(["--ckpt", "random", "--config", str(config), "--out", ".", "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds the input" in err[0]
    other = tmp_path / "other"
    make_victim(other, "NOTES.txt")
    assert main(["--ckpt", "random", "--config", str(config), "--out", str(other), "--overwrite"]) == 2
    assert "not one" in capsys.readouterr().err and (other / "NOTES.txt").exists()
    link = tmp_path / "link"
    os.symlink(other, link)
    assert main(["--ckpt", "random", "--config", str(config), "--out", str(link)]) == 2
    assert "symbolic link" in capsys.readouterr().err
    assert snapshot(inputs) == before
    # a converted model is replaced
    out = tmp_path / "converted"
    assert main(["--ckpt", "random", "--config", str(config), "--out", str(out)]) == 0
    assert main(["--ckpt", "random", "--config", str(config), "--out", str(out), "--overwrite"]) == 0
    assert (out / "model_index.json").is_file()
    (out / "mine.txt").write_text("x")  # not the converter's any more
    assert main(["--ckpt", "random", "--config", str(config), "--out", str(out), "--overwrite"]) == 2
    assert "mine.txt" in capsys.readouterr().err and (out / "mine.txt").exists()


# ----------------------------------------------------------------------------------- 5, 6: resume, full disk
def test_a_training_resume_without_parsed_yaml_keeps_every_log(tmp_path):
    from omegaconf import OmegaConf

    from threestudio.runner import TrialPlan, _write_trial_config

    trial = tmp_path / "trial"
    (trial / "configs").mkdir(parents=True)
    (trial / "csv_logs").mkdir()
    (trial / "csv_logs" / "metrics.csv").write_text("step\n0\n1\n2\n3\n")
    cfg = OmegaConf.create({"a": 1})
    assert _write_trial_config(cfg, TrialPlan(str(trial), existing=True), "train") == 1
    assert (trial / "configs" / "parsed-resume-1.yaml").is_file()
    assert not (trial / "configs" / "parsed.yaml").exists()
    (trial / "csv_logs" / "resume-2").mkdir()  # a log folder whose config went missing: its number is taken
    assert _write_trial_config(cfg, TrialPlan(str(trial), existing=True), "train") == 3
    assert (trial / "csv_logs" / "metrics.csv").read_text() == "step\n0\n1\n2\n3\n"


def test_a_full_disk_while_starting_a_new_trial_leaves_no_trial(tmp_path):
    from threestudio.runner import TrialPlan, _write_failure
    from threestudio.utils.checkpoint_io import DiskFullError

    trial = tmp_path / "trial"
    (trial / "configs").mkdir(parents=True)
    (trial / "configs" / "parsed.yaml").write_bytes(b"")
    error = _write_failure(OSError(errno.ENOSPC, "No space left on device", str(trial / "csv_logs" / "metrics.csv")),
                           TrialPlan(str(trial), existing=False))
    assert isinstance(error, UserError) and "metrics.csv" in str(error) and "was removed" in str(error)
    assert not trial.exists()
    (trial / "ckpts").mkdir(parents=True)  # an existing trial, or one with a checkpoint, is kept
    (trial / "ckpts" / "last.ckpt").write_bytes(b"x")
    error = _write_failure(DiskFullError(str(trial / "ckpts" / "last.ckpt"), "no space left writing last.ckpt"),
                           TrialPlan(str(trial), existing=False))
    assert isinstance(error, UserError) and trial.exists()


def test_a_folder_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
    from threestudio.runner import TrialPlan, _write_failure, create_trial_folder

    def refuse(path, *args, **kwargs):
        raise PermissionError(errno.EROFS, "Read-only file system", path)

    monkeypatch.setattr(os, "mkdir", refuse)
    with pytest.raises(UserError, match="cannot create the trial folder.*Read-only file system.*exp_root_dir"):
        create_trial_folder(str(tmp_path / "root" / "name" / "tag"))
    monkeypatch.undo()
    error = _write_failure(PermissionError(errno.EACCES, "Permission denied", str(tmp_path / ".lock")),
                           TrialPlan(str(tmp_path), existing=True))
    assert isinstance(error, UserError) and ".lock" in str(error)


def test_image_and_mesh_writes_on_a_full_disk_name_the_file_and_leave_no_empty_folder(tmp_path, monkeypatch):
    import imageio.v3 as iio

    from threestudio.models.exporters import mesh_exporter
    from threestudio.utils.image import save_image

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(iio, "imwrite", full)
    target = tmp_path / "save" / "it4-test" / "0000.png"
    with pytest.raises(OSError) as info:
        save_image(str(target), torch.zeros(4, 4, 3))
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    exporter = mesh_exporter.MeshExporter.__new__(mesh_exporter.MeshExporter)
    monkeypatch.setattr(exporter, "extract_mesh", lambda: (np.zeros((3, 3), np.float32), np.zeros((1, 3)), None),
                        raising=False)
    monkeypatch.setattr(exporter, "_write", lambda *a: full(), raising=False)
    folder = tmp_path / "save" / "it4-export"
    with pytest.raises(OSError):
        exporter.export(str(folder))
    assert not folder.exists()


# ------------------------------------------------------------------------------------------- 7: eval_dtu stages
def test_eval_dtu_a_stage_is_finished_only_with_its_marker_and_a_signal_is_named(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    import eval_dtu

    def run(name: str, code: str) -> "eval_dtu.LaunchRun":
        trial = tmp_path / "runs" / name
        return eval_dtu.LaunchRun([sys.executable, "-c", code], str(trial), str(tmp_path / "logs" / f"{name}.log"))

    killed = run("nvs", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)")
    nerf = run("nerf", "raise SystemExit(0)")
    error = eval_dtu.run_scan(24, [killed, nerf])
    assert "killed by SIGTERM" in error and not eval_dtu.stage_finished(killed)
    assert not os.path.exists(nerf.trial), "the NeRF stage ran on an unfinished nvs stage"
    stopped = run("stopped", "raise SystemExit(143)")
    assert "stopped by SIGTERM (exit 143)" in eval_dtu.run_scan(24, [stopped])
    partial = run("partial", f"import os; os.makedirs({str(tmp_path / 'runs' / 'partial' / 'save')!r})")
    assert "wrote no" in eval_dtu.run_scan(24, [partial]) and not eval_dtu.stage_finished(partial)
    write = "import os, sys; p = sys.argv[1]; os.makedirs(p); open(os.path.join(p, 'metrics.json'), 'w').write('{}')"
    done = run("done", write)
    done.cmd.append(done.save)
    assert eval_dtu.run_scan(24, [done]) is None and eval_dtu.stage_finished(done)


def test_eval_dtu_ctrl_c_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    sys.path.insert(0, str(ROOT / "scripts"))
    import eval_dtu

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(eval_dtu, "run_scans", interrupted)
    (tmp_path / "dtu" / "dtu_scan24").mkdir(parents=True)
    (tmp_path / "dtu" / "dtu_scan24" / "cameras.npz").touch()  # passes the up-front --root/--scans check
    try:
        code = eval_dtu.main(["--root", str(tmp_path / "dtu"), "--scans", "24", "--mode", "nvs", "--out",
                              str(tmp_path / "out"), "--ckpt", "random", "--model-config", TINY_YAML])
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped eval_dtu.main: the user sees a traceback")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 130 and len(err) == 1 and err[0].startswith("error: interrupted (SIGINT)")


# -------------------------------------------------------------------------- 8: the "already exists" follow-up
def test_an_existing_trial_without_checkpoint_is_not_offered_for_resume(tmp_path):
    from omegaconf import OmegaConf

    from threestudio.runner import plan_trial

    trial = tmp_path / "trial"
    trial.mkdir()
    cfg = OmegaConf.create({"trial_dir": str(trial), "resume": None})
    with pytest.raises(UserError) as info:
        plan_trial(cfg, "cfg.yaml")
    assert "resume=" not in str(info.value) and "holds no checkpoint" in str(info.value)
    (trial / "ckpts").mkdir()
    (trial / "ckpts" / "last.ckpt").write_bytes(b"x")
    with pytest.raises(UserError, match="resume=.*last.ckpt"):
        plan_trial(cfg, "cfg.yaml")


# ---------------------------------------------------------------------------------- 9, 10: devices, cameras
def test_devices_are_checked_and_smoke_sets_the_distributed_sampler():
    from omegaconf import OmegaConf

    from threestudio.runner import check_devices

    with pytest.raises(ConfigError, match="trainer.devices=.*CPU core"):
        check_devices({"accelerator": "cpu", "devices": (os.cpu_count() or 1) + 5})
    with pytest.raises(ConfigError, match="trainer.devices"):
        check_devices({"accelerator": "cpu", "devices": "abc"})
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="trainer.accelerator=gpu"):
            check_devices({"accelerator": "gpu", "devices": 1})
    check_devices({"accelerator": "cpu", "devices": 1})
    assert OmegaConf.load(ROOT / "configs" / "smoke.yaml").trainer.use_distributed_sampler is False


@pytest.mark.parametrize(
    "key, value",
    [("default_elevation_deg", math.nan), ("default_elevation_deg", 500.0), ("default_azimuth_deg", math.inf),
     ("default_camera_distance", math.nan), ("default_fovy_deg", 0.027)],
)
def test_camera_values_are_range_checked(tmp_path, key, value):
    from threestudio.data.single_image import SingleImageDataModule

    cfg = {"image_path": "skimage:motorcycle_left", "height": 16, "width": 16, "default_fovy_deg": 50.0,
           "random_camera": {"height": 8, "width": 8}, key: value}
    with pytest.raises(ConfigError, match=f"data.{key}"):
        SingleImageDataModule(cfg)


def test_orbit_ranges_and_pose_files_are_range_checked(tmp_path):
    from threestudio.data.posed_views import load_c2w_file
    from threestudio.data.random_camera import RandomCameraConfig, check_random_camera_config
    from threestudio.utils.config import parse_structured

    for key, value in (("eval_elevation_deg", math.nan), ("eval_camera_distance", math.inf),
                       ("elevation_range", [math.nan, 10.0])):
        with pytest.raises(ConfigError, match=key):
            check_random_camera_config(parse_structured(RandomCameraConfig, {key: value}))
    poses = np.eye(4)[None].repeat(2, 0)
    poses[1, :3, 3] = 1e300
    np.save(tmp_path / "poses.npy", poses)
    with pytest.raises(UserError, match="camera 1 has entries of 1e.300"):
        load_c2w_file(str(tmp_path / "poses.npy"))


# ------------------------------------------------------------------------------------ tracebacks → one line
@pytest.fixture(scope="module")
def converted_tiny(tmp_path_factory) -> Path:
    from zeronvs_diffusion.model import load_model

    folder = tmp_path_factory.mktemp("converted") / "tiny"
    load_model("random", TINY_YAML).save_pretrained(str(folder))
    return folder


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "tamper",
    ["bad_conditioning", "bad_index", "no_unet_config", "wrong_shape", "unet_sizes", "negative_timesteps"],
)
def test_tampered_converted_folders_are_one_line_errors(converted_tiny, tmp_path, tamper):
    from safetensors.torch import load_file, save_file

    from zeronvs_diffusion.model import load_model

    folder = tmp_path / "model"
    shutil.copytree(converted_tiny, folder)
    if tamper == "bad_conditioning":
        (folder / "conditioning.json").write_text("{nope")
    elif tamper == "bad_index":
        (folder / "model_index.json").write_text("not json")
    elif tamper == "no_unet_config":
        (folder / "unet" / "config.json").unlink()
    elif tamper == "wrong_shape":
        path = next((folder / "vae").glob("*.safetensors"))
        state = load_file(path)
        key = next(iter(state))
        state[key] = state[key].flatten()[:3].clone()
        save_file(state, path)
    elif tamper == "unet_sizes":
        config = folder / "unet" / "config.json"
        _edit_json(config, block_out_channels=[2 * c for c in json.loads(config.read_text())["block_out_channels"]])
    else:
        _edit_json(folder / "scheduler" / "scheduler_config.json", num_train_timesteps=-5)
    with pytest.raises(UserError) as info:
        load_model(str(folder))
    assert "\n" not in str(info.value) and str(folder) in str(info.value)


def test_exif_values_out_of_range_fall_back_and_bad_orientation_is_not_applied(tmp_path, caplog):
    from test_image_input import _data, write_photo

    from threestudio.data.single_image import SingleImageDataModule
    from threestudio.utils.image import load_image

    bad_unit = write_photo(tmp_path / "unit.jpg", 64, 48, focal_mm=4.0, plane_res=1000.0, unit="abc")
    assert SingleImageDataModule.resolve_config(_data(bad_unit)).default_fovy_deg == 47.0
    sentinel = write_photo(tmp_path / "f35.jpg", 64, 48, f35=65535)
    with caplog.at_level(logging.WARNING, logger="threestudio.data.single_image"):
        assert SingleImageDataModule.resolve_config(_data(sentinel)).default_fovy_deg == 47.0
    assert "outside the plausible" in caplog.text
    odd = write_photo(tmp_path / "odd.jpg", 48, 32, orientation=99, fmt="JPEG")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert load_image(odd).shape[:2] == (32, 48)
    assert "not a valid value" in caplog.text and "applied" not in caplog.text


@pytest.mark.parametrize(
    "args, expected",
    [(["--scales", "inf"], "--scales"), (["--scales", "1", "--azimuths", "nan"], "--azimuths"),
     (["--scales", "1", "--azimuths", "inf"], "--azimuths"), (["--scales", "1", "--guidance-scale", "nan"],
                                                              "--guidance-scale"),
     (["--scales", "1", "--out", "FILE"], "existing file")]
    + ([] if torch.cuda.is_available() else [(["--scales", "1", "--device", "cuda"], "CUDA is not available")]),
)
def test_preview_settings_checks_every_value_before_sampling(tmp_path, capsys, monkeypatch, args, expected):
    sys.path.insert(0, str(ROOT / "scripts"))
    import preview_settings

    import zeronvs_diffusion

    def never(*a, **k):
        raise AssertionError("the model was loaded before the values were checked")

    monkeypatch.setattr(zeronvs_diffusion, "load_model", never)
    (tmp_path / "FILE").write_text("keep")
    args = [str(tmp_path / "FILE") if a == "FILE" else a for a in args]
    out = [] if "--out" in args else ["--out", str(tmp_path / "preview")]
    code = preview_settings.main(["skimage:motorcycle_left", "--ckpt", "random", "--model-config", TINY_YAML,
                                  *out, *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and expected in err[0], err
    assert (tmp_path / "FILE").read_text() == "keep"


@pytest.mark.parametrize("content", [b"- a\n- b\n", b"a: [\n", b"\x00\x01\xff\xfe"])
def test_report_script_on_a_bad_parsed_yaml_is_one_line(tmp_path, capsys, content):
    sys.path.insert(0, str(ROOT / "scripts"))
    import report

    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "parsed.yaml").write_bytes(content)
    assert report.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "parsed.yaml" in err[0]


# ---------------------------------------------------------------------------------------------- CLI (slow)
def _start(root: Path, *extra: str, mode: str = "--train", config_args=None) -> subprocess.Popen:
    args = config_args if config_args is not None else smoke_args(root, *extra)
    return subprocess.Popen([sys.executable, str(ROOT / "launch.py"), mode, *args], cwd=ROOT,
                            env=dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _signal_when(proc: subprocess.Popen, path: Path, signum: int, timeout: float = 600) -> tuple:
    started = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() - started < timeout, f"{path} did not appear"
        time.sleep(0.2)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, [ln for ln in err.splitlines() if ln.startswith("error:")], err


def stop_training_with(tmp_path: Path, signum: int):
    """Train the smoke config with no scheduled checkpoints (every_n_train_steps=0), send ``signum`` once the first
    validation frame exists, and check the one-line stop: exit 128 + signum, the checkpoint written at the signal.
    Returns (trial, step of that checkpoint)."""
    root = tmp_path / "out"
    proc = _start(root, "trainer.max_steps=200", "checkpoint.every_n_train_steps=0", "trainer.val_check_interval=1",
                  "data.random_camera.n_val_views=1")
    trial = root / "smoke" / "skimage_motorcycle_left"
    code, errors, err = _signal_when(proc, trial / "save" / "it1-val" / "0000.png", signum)
    assert code == 128 + signum and len(errors) == 1 and "Traceback" not in err, err[-3000:]
    name = signal.Signals(signum).name
    assert f"stopped by {name} during training" in errors[0] and "--train resume=" in errors[0]
    step = torch.load(trial / "ckpts" / "last.ckpt", weights_only=True)["global_step"]
    assert 1 <= step < 200 and f"holds step {step}" in errors[0]
    return trial, step


@pytest.mark.slow
def test_sigterm_while_training_writes_a_checkpoint_and_resume_continues(tmp_path):
    """No scheduled checkpoints: the one kept is written at the signal."""
    trial, step = stop_training_with(tmp_path, signal.SIGTERM)
    assert not list((trial / "ckpts").glob(".*tmp*")), "a temporary checkpoint file was left"
    [result] = run_cases([["--train", "--config", trial / "configs" / "parsed.yaml", f"resume={trial}/ckpts/last.ckpt",
                           f"trainer.max_steps={step + 1}", "data.random_camera.n_test_views=1",
                           "trainer.val_check_interval=100"]])
    assert result["rc"] == 0, result
    assert torch.load(trial / "ckpts" / "last.ckpt", weights_only=True)["global_step"] == step + 1


@pytest.mark.slow
def test_sigint_in_the_test_pass_says_it_is_incomplete(smoke_trial, tmp_path):
    trial = tmp_path / "trial"
    shutil.copytree(smoke_trial, trial)
    proc = _start(tmp_path, mode="--test", config_args=[
        "--config", str(trial / "configs" / "parsed.yaml"), f"resume={trial}/ckpts/last.ckpt",
        "data.random_camera.n_test_views=40"])
    step = torch.load(trial / "ckpts" / "last.ckpt", weights_only=True)["global_step"]
    shutil.rmtree(trial / "save" / f"it{step}-test", ignore_errors=True)
    code, errors, err = _signal_when(proc, trial / "save" / f"it{step}-test" / "0000.png", signal.SIGINT)
    assert code == 130 and len(errors) == 1 and "Traceback" not in err, err[-3000:]
    assert "test pass" in errors[0] and "incomplete" in errors[0] and "--test resume=" in errors[0]


@pytest.mark.slow
def test_cli_hostile_command_lines_stop_before_any_write(smoke_trial, tmp_path, converted_tiny):
    victim = make_victim(tmp_path / "outside")
    linked = tmp_path / "linked" / "trial"
    shutil.copytree(smoke_trial, linked)
    os.remove(linked / ".lock") if (linked / ".lock").exists() else None
    os.symlink(victim, linked / ".lock")
    no_parsed = tmp_path / "no_parsed" / "smoke" / smoke_trial.name  # where smoke_args(tmp_path / "no_parsed") puts it
    shutil.copytree(smoke_trial, no_parsed)
    (no_parsed / "configs" / "parsed.yaml").unlink()
    metrics_before = (no_parsed / "csv_logs" / "metrics.csv").read_bytes()
    step = torch.load(no_parsed / "ckpts" / "last.ckpt", weights_only=True)["global_step"]
    poses = np.eye(4)[None].repeat(2, 0)
    poses[1, :3, 3] = 1e300
    np.save(tmp_path / "poses.npy", poses)
    fresh = tmp_path / "fresh"
    tampered = tmp_path / "tampered"
    shutil.copytree(converted_tiny, tampered)
    (tampered / "conditioning.json").write_text("{nope")
    expectations = [
        (["--test", "--config", linked / "configs" / "parsed.yaml", f"resume={linked}/ckpts/last.ckpt"], 2,
         "outside the trial"),
        (["--train", *smoke_args(fresh, "name=../../escaped")], 2, "one folder name"),
        (["--train", *smoke_args(fresh, "tag=/abs/path")], 2, "one folder name"),
        (["--train", *smoke_args(fresh, "tag=${oc.env:HOME}")], 2, "oc.env"),
        (["--train", *smoke_args(fresh, f"trainer.devices={(os.cpu_count() or 1) + 1}", "trainer.accelerator=cpu")], 2,
         "trainer.devices"),
        (["--train", *smoke_args(fresh, "data.default_elevation_deg=nan")], 2, "default_elevation_deg"),
        (["--train", *smoke_args(fresh, "data.default_elevation_deg=500")], 2, "default_elevation_deg"),
        (["--test", "--config", ROOT / "configs" / "zeronvs_nvs_image.yaml", f"exp_root_dir={fresh}",
          "data.image_path=skimage:motorcycle_left", f"data.target_c2w_path={tmp_path / 'poses.npy'}",
          "data.height=32", "data.width=32", f"system.diffusion_model.pretrained_config={TINY_YAML}"], 2, "camera 1"),
        (["--train", *smoke_args(fresh, f"system.guidance.pretrained_model_name_or_path={tampered}")], 2,
         "not a usable converted model"),
        (["--train", *smoke_args(tmp_path / "no_parsed", f"resume={no_parsed}/ckpts/last.ckpt",
                                 f"trainer.max_steps={step + 1}", "data.random_camera.n_test_views=1")], 0, ""),
    ]  # fmt: skip
    results = run_cases([argv for argv, _, _ in expectations])
    for (argv, rc, text), result in zip(expectations, results):
        if rc == 0:
            assert result["rc"] == 0, (argv, result)
        else:
            assert_one_line_exit(result, rc, text)
    assert victim.read_text() == "the user's data"
    assert not fresh.exists() and not (tmp_path.parent / "escaped").exists()
    assert (no_parsed / "csv_logs" / "metrics.csv").read_bytes() == metrics_before, "the resume lost earlier logs"
    assert (no_parsed / "csv_logs" / "resume-1" / "metrics.csv").is_file()
    assert (no_parsed / "configs" / "parsed-resume-1.yaml").is_file()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1) to mount a small private tmpfs")
@pytest.mark.parametrize("size, mount, expected", [("4k", "rw", "configs/parsed.yaml"),
                                                   ("16k", "rw", "csv_logs/metrics.csv"),
                                                   ("64m", "ro", "cannot create the trial folder")])
def test_a_full_or_read_only_disk_at_start_leaves_no_trial(tmp_path, size, mount, expected):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare -rm is not permitted here: {probe.stderr.decode().strip()}")
    launch = " ".join(f"'{a}'" for a in [sys.executable, str(ROOT / "launch.py"), "--train",
                                          *smoke_args(mnt / "out", "trainer.max_steps=2")])
    prepare = f"mkdir -p {mnt}/out/smoke" if mount == "ro" else "true"
    script = (f"mount -t tmpfs -o size={size} tmpfs {mnt} && {prepare} && mount -o remount,{mount} {mnt} && "
              f"{launch}; echo rc=$?; find {mnt} -mindepth 1")
    res = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=600)
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert "rc=2" in res.stdout and len(errors) == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert expected in errors[0], errors
    assert "skimage_motorcycle_left" not in res.stdout, f"a trial was left: {res.stdout}"


def test_a_background_writer_failing_on_a_full_disk_is_one_line(capsys):
    """TensorBoard's writer thread on a full disk: one line naming the file, not a thread traceback."""
    import threading

    import launch

    error = OSError(errno.ENOSPC, "No space left on device", "tb_logs/events.out")
    launch._background_failure(threading.ExceptHookArgs([OSError, error, None, threading.current_thread()]))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tb_logs/events.out" in err[0] and "No space left" in err[0]
