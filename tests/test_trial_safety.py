"""No code runs from a file the user passes, no trial is damaged, every bad input is one line (issue 12).

Unit tests of the loaders, checks and lock, and CLI tests that run many launch.py command lines in one
subprocess (tests/launch_cases.py) to keep their cost small.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, smoke_args
from lightning.fabric.utilities.data import AttributeDict
from omegaconf import OmegaConf

from threestudio.utils.errors import ConfigError, UserError
from zeronvs_diffusion.torch_load import UnsafeCheckpointError, load_torch_file

TINY_YAML = str(ROOT / "configs" / "diffusion_tiny.yaml")


class Evil:
    """Unpickling this runs ``touch <marker>``: the marker file proves code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class HarmlessButUnknown(OrderedDict):
    """A class outside the allow-list (it needs full unpickling) that runs nothing."""


def write_malicious_files(folder: Path) -> dict:
    """The malicious variants of issue 12, by name → path; each creates ``folder/MARKER`` when unpickled."""
    marker = folder / "MARKER"
    w = {"layer.weight": torch.ones(2)}
    files = {
        "zip_state_dict": {"state_dict": {**w, "evil": Evil(marker)}},
        "zip_hyper_parameters": {"state_dict": w, "global_step": 3, "hyper_parameters": {"cfg": Evil(marker)}},
        "ldm_style": {
            "state_dict": {"model.diffusion_model.conv_in.weight": torch.ones(4, 4, 3, 3)},
            "callbacks": {"ModelCheckpoint": Evil(marker)},
            "global_step": 10,
        },
    }
    paths = {}
    for name, obj in files.items():
        paths[name] = folder / f"{name}.ckpt"
        torch.save(obj, paths[name])
    paths["legacy_pickle"] = folder / "legacy_pickle.ckpt"
    legacy = {"state_dict": {**w, "evil": Evil(marker)}}
    torch.save(legacy, paths["legacy_pickle"], _use_new_zipfile_serialization=False)
    paths["plain_pickle"] = folder / "plain_pickle.ckpt"
    paths["plain_pickle"].write_bytes(pickle.dumps({"state_dict": Evil(marker)}, protocol=2))
    return paths


# ----------------------------------------------------------------------------------------------- loaders
def test_malicious_files_are_refused_by_every_loader_and_run_nothing(tmp_path):
    from zeronvs_diffusion.checkpoint import read_state_dict
    from zeronvs_diffusion.errors import CheckpointError

    for name, path in write_malicious_files(tmp_path).items():
        with pytest.raises(UserError) as info:
            load_torch_file(str(path), "resume checkpoint")
        assert "\n" not in str(info.value) and str(path) in str(info.value), name
        with pytest.raises(CheckpointError) as info:
            read_state_dict(str(path))
        assert "trust_checkpoint" in str(info.value) or "not a PyTorch" in str(info.value), (name, info.value)
    assert not (tmp_path / "MARKER").exists(), "code from a checkpoint ran"


def test_allow_listed_objects_load_and_others_need_the_trust_flag(tmp_path, caplog):
    legit = {
        "state_dict": {"a": torch.ones(2)},
        "hyper_parameters": OmegaConf.create({"lr": 1e-4, "sizes": [1, 2], "sub": {"x": "y"}}),
        "namespace": argparse.Namespace(lr=1e-4),
        "lightning": AttributeDict(lr=1e-4),
        "numpy": [np.float64(1.5), np.int64(3), np.ones(3)],
    }
    torch.save(legit, tmp_path / "legit.ckpt")
    loaded = load_torch_file(str(tmp_path / "legit.ckpt"))
    assert loaded["hyper_parameters"].sub.x == "y" and loaded["namespace"].lr == 1e-4
    assert loaded["lightning"] == {"lr": 1e-4}
    assert float(loaded["numpy"][0]) == 1.5 and torch.equal(loaded["state_dict"]["a"], torch.ones(2))

    torch.save({"state_dict": {"a": torch.ones(2)}, "extra": HarmlessButUnknown(k=1)}, tmp_path / "other.ckpt")
    with pytest.raises(UnsafeCheckpointError, match="HarmlessButUnknown.*system.guidance.trust_checkpoint=true"):
        load_torch_file(str(tmp_path / "other.ckpt"), trust_hint="system.guidance.trust_checkpoint=true")
    with caplog.at_level(logging.WARNING, logger="zeronvs_diffusion.torch_load"):
        trusted = load_torch_file(str(tmp_path / "other.ckpt"), trust=True)
    assert trusted["extra"]["k"] == 1 and "runs any code" in caplog.text


@pytest.mark.parametrize("content", [b"", b"hello\n", bytes(range(256)) * 4, b"PK\x03\x04truncated"])
def test_empty_corrupt_and_random_files_are_one_line_errors(tmp_path, content):
    path = tmp_path / "bad.ckpt"
    path.write_bytes(content)
    with pytest.raises(UserError) as info:
        load_torch_file(str(path), "system.weights checkpoint")
    assert "system.weights checkpoint" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UserError, match="is a folder"):
        load_torch_file(str(tmp_path), "resume checkpoint")


def smoke_system(*overrides: str):
    import threestudio
    from threestudio.utils.config import load_config

    cfg = load_config(str(ROOT / "configs" / "smoke.yaml"), cli_args=list(overrides))
    return threestudio.find(cfg.system_type)(cfg.system)


def test_checkpoint_that_does_not_fit_the_system_is_refused(tmp_path):
    system = smoke_system()
    state = {k: v.clone() for k, v in system.state_dict().items()}
    key = next(k for k, v in state.items() if v.dim() == 2)
    state[key] = torch.zeros(3, 3)
    torch.save({"state_dict": state, "global_step": 2}, tmp_path / "mismatched.ckpt")
    with pytest.raises(UserError, match="does not fit this system's config"):
        system.check_resume_checkpoint(str(tmp_path / "mismatched.ckpt"))
    with pytest.raises(UserError, match="does not fit"):
        smoke_system(f"system.weights={tmp_path / 'mismatched.ckpt'}")
    torch.save({"state_dict": {"nope": torch.ones(1)}}, tmp_path / "foreign.ckpt")
    with pytest.raises(UserError, match="keys this system does not have"):
        system.check_resume_checkpoint(str(tmp_path / "foreign.ckpt"))
    torch.save({"epoch": 1}, tmp_path / "nostate.ckpt")
    with pytest.raises(UserError, match="no state_dict"):
        system.check_resume_checkpoint(str(tmp_path / "nostate.ckpt"))


def test_convert_refuses_malicious_checkpoints_and_an_existing_file_as_out(tmp_path, capsys):
    from zeronvs_diffusion.convert import main

    evil = write_malicious_files(tmp_path)["ldm_style"]
    out = tmp_path / "out"
    assert main(["--ckpt", str(evil), "--config", TINY_YAML, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--trust-checkpoint" in err[0] and "posix.system" in err[0]
    assert not out.exists() and not (tmp_path / "MARKER").exists()
    existing = tmp_path / "file.txt"
    existing.write_text("keep me")
    assert main(["--ckpt", str(evil), "--config", TINY_YAML, "--out", str(existing)]) == 2
    assert "is an existing file" in capsys.readouterr().err and existing.read_text() == "keep me"


# ----------------------------------------------------------------------------------------------- checks
@pytest.mark.parametrize(
    "trainer, checkpoint, key",
    [
        ({"max_steps": "abc"}, {}, "trainer.max_steps"),
        ({"max_steps": -1}, {}, "trainer.max_steps=-1"),
        ({"max_steps": 0}, {}, "trainer.max_steps"),
        ({"val_check_interval": 0}, {}, "trainer.val_check_interval"),
        ({"val_check_interval": 1.5}, {}, "trainer.val_check_interval"),
        ({"log_every_n_steps": "x"}, {}, "trainer.log_every_n_steps"),
        ({}, {"every_n_train_steps": "abc"}, "checkpoint.every_n_train_steps"),
        ({}, {"every_n_train_steps": -1}, "checkpoint.every_n_train_steps"),
        ({}, {"save_top_k": "all"}, "checkpoint.save_top_k"),
    ],
)
def test_trainer_and_checkpoint_values_are_checked(trainer, checkpoint, key):
    from threestudio.runner import check_checkpoint_values, check_trainer_values

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        check_trainer_values({"max_steps": 10, **trainer})
        check_checkpoint_values(checkpoint)


def test_good_trainer_values_pass():
    from threestudio.runner import check_checkpoint_values, check_trainer_values

    check_trainer_values({"max_steps": 10, "val_check_interval": 0.5, "max_epochs": -1})
    check_trainer_values({"max_steps": -1, "max_time": "00:01:00:00"})
    check_checkpoint_values({"every_n_train_steps": 0, "save_top_k": -1, "save_last": True})


def test_config_messages_name_the_full_key(tmp_path):
    from threestudio.utils.config import load_config

    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(UserError, match="top level must be a mapping"):
        load_config(str(tmp_path / "list.yaml"))
    with pytest.raises(ConfigError, match="'system.geometry.radiuss'"):
        smoke_system("system.geometry.radiuss=1")
    with pytest.raises(ConfigError, match="system.loss.lambda_rgb: schedule"):
        smoke_system("system.loss.lambda_rgb=abc")


# ----------------------------------------------------------------------------------------------- trial files
def test_trial_lock_refuses_a_second_holder_and_takes_over_a_stale_lock(tmp_path, caplog):
    from threestudio.utils.trial_lock import LOCK_NAME, trial_lock

    with trial_lock(str(tmp_path)):
        assert f"pid {os.getpid()}" in (tmp_path / LOCK_NAME).read_text()
        with pytest.raises(UserError, match=f"in use by another run \\(pid {os.getpid()}"):
            with trial_lock(str(tmp_path)):
                pass
    assert (tmp_path / LOCK_NAME).read_text() == ""  # released cleanly
    (tmp_path / LOCK_NAME).write_text("pid 999999 on elsewhere, since 2026-01-01 00:00:00")  # a killed run's
    with caplog.at_level(logging.WARNING, logger="threestudio.utils.trial_lock"):
        with trial_lock(str(tmp_path)):
            pass
    assert "stale lock" in caplog.text and "pid 999999" in caplog.text


def test_stale_temporary_checkpoints_are_removed(tmp_path):
    from threestudio.utils.checkpoint_io import remove_stale_temporaries

    (tmp_path / ".last.a1b2.tmp.ckpt").write_bytes(b"partial")
    (tmp_path / "last.ckpt").write_bytes(b"keep")
    assert remove_stale_temporaries(str(tmp_path)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_full_disk_is_one_line_naming_the_file_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    from threestudio.utils.checkpoint_io import atomic_torch_save

    path = tmp_path / "last.ckpt"
    atomic_torch_save({"global_step": 5, "w": torch.ones(3)}, str(path))

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(UserError) as info:
        atomic_torch_save({"global_step": 6, "w": torch.ones(2**18)}, str(path))
    monkeypatch.undo()
    message = str(info.value)
    assert str(path) in message and "1.0 MiB" in message and "\n" not in message
    assert torch.load(path, weights_only=True)["global_step"] == 5
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_launch_turns_a_full_disk_into_exit_2(monkeypatch, capsys):
    import launch
    import threestudio.runner

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "/trial/save/it4-test.mp4")

    monkeypatch.setattr(threestudio.runner, "run", full)
    assert launch.main(["--config", "x.yaml", "--train"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: no space left") and "/trial/save/it4-test.mp4" in line


def test_copied_trial_is_continued_where_it_now_lives(tmp_path):
    from threestudio.runner import plan_trial
    from threestudio.utils.config import load_config

    trial = tmp_path / "copy" / "trial"
    (trial / "configs").mkdir(parents=True)
    (trial / "ckpts").mkdir()
    conf = OmegaConf.load(ROOT / "configs" / "smoke.yaml")
    conf.exp_root_dir, conf.use_timestamp = str(tmp_path / "old"), False  # where the trial was before the copy
    OmegaConf.save(conf, trial / "configs" / "parsed.yaml")
    config = str(trial / "configs" / "parsed.yaml")
    cfg = load_config(config, cli_args=[f"resume={trial}/ckpts/last.ckpt"])
    assert plan_trial(cfg, config).trial_dir == str(trial)
    # the same checkpoint with another config starts a new trial (a fork), which must not exist yet
    other = load_config(str(ROOT / "configs" / "smoke.yaml"), cli_args=[f"resume={trial}/ckpts/last.ckpt"])
    plan = plan_trial(other, str(ROOT / "configs" / "smoke.yaml"))
    assert plan.trial_dir == other.trial_dir and not plan.existing


# ----------------------------------------------------------------------------------------------- read_camera
def test_read_camera_string_matrices_non_npz_and_plot_paths(tmp_path, capsys, caplog):
    import read_camera

    good = np.eye(4)
    np.savez(tmp_path / "strings.npz", world_mat_0=np.array([["a"] * 4] * 4))
    np.save(tmp_path / "array.npy", good)
    (tmp_path / "text.npz").write_text("not an archive")
    np.savez(tmp_path / "cameras.npz", world_mat_0=np.array([[500, 0, 200, 0], [0, 500, 150, 0], [0, 0, 1, 4.0]]))
    cases = {
        "strings.npz": "world_mat_0 holds <U1 values, expected numbers",
        "array.npy": "is not an .npz archive",
        "text.npz": "is not an .npz archive",
    }
    for name, expected in cases.items():
        assert read_camera.main([str(tmp_path / name)]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert expected in line, line
    assert read_camera.main([str(tmp_path / "cameras.npz"), "--plot", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert read_camera.main([str(tmp_path / "cameras.npz"), "--plot", str(tmp_path / "text.npz" / "x.png")]) == 2
    assert "cannot write --plot" in capsys.readouterr().err
    with caplog.at_level(logging.INFO, logger="read_camera"):
        assert read_camera.main([str(tmp_path / "cameras.npz"), "--plot", str(tmp_path / "plot")]) == 0
    assert (tmp_path / "plot.png").is_file() and f"wrote {tmp_path / 'plot.png'}" in caplog.text


# ----------------------------------------------------------------------------------------------- CLI
def run_cases(cases: list) -> list:
    """Run launch.py command lines in one subprocess (tests/launch_cases.py); their results, in order."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    res = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "launch_cases.py")],
        input=json.dumps([[str(a) for a in argv] for argv in cases]),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout)


def assert_one_line_exit(result: dict, rc: int, *expected: str) -> None:
    assert result["rc"] == rc and not result["traceback"], result
    assert len(result["errors"]) == 1 and all(e in result["errors"][0] for e in expected), result


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_cli_malicious_checkpoints_on_every_loading_path(tmp_path):
    """system.weights, resume, the guidance checkpoint in --train, the NVS config's --test: exit 2, nothing runs."""
    evil = write_malicious_files(tmp_path)
    image = tmp_path / "input.png"
    from threestudio.utils.image import save_image

    save_image(str(image), torch.rand(16, 16, 3))
    out = tmp_path / "out"
    nvs = [
        "--config", ROOT / "configs" / "zeronvs_nvs_image.yaml", "--test", f"exp_root_dir={out}",
        "use_timestamp=false", f"data.image_path={image}", "data.orbit.n_views=2", "data.height=32", "data.width=32",
        f"system.diffusion_model.pretrained_config={TINY_YAML}",
    ]  # fmt: skip
    cases, names = [], []
    for variant in ("zip_hyper_parameters", "legacy_pickle"):
        path = evil[variant]
        cases += [
            ["--train", *smoke_args(out, f"system.weights={path}")],
            ["--train", *smoke_args(out, f"resume={path}")],
            ["--test", *smoke_args(out, f"resume={path}")],
            ["--train", *smoke_args(out, f"system.guidance.pretrained_model_name_or_path={path}")],
            [*nvs, f"system.diffusion_model.pretrained_model_name_or_path={path}"],
        ]
        names += [f"{variant}: {n}" for n in ("weights", "resume --train", "resume --test", "guidance", "nvs")]
    cases.append([*nvs, f"system.diffusion_model.pretrained_model_name_or_path={evil['ldm_style']}"])
    names.append("ldm_style: nvs")
    for name, result in zip(names, run_cases(cases)):
        assert_one_line_exit(result, 2, "unpickling")
        assert "posix.system" in result["errors"][0], name
    assert not (tmp_path / "MARKER").exists(), "code from a checkpoint ran"
    assert not out.exists(), "a refused run created a trial folder"


@pytest.mark.slow
def test_cli_bad_inputs_resume_lock_and_divergence(smoke_trial: Path, tmp_path):
    """Bad values and files stop with one line before any write; a resume of a copied trial keeps everything."""
    from threestudio.utils.trial_lock import trial_lock

    copy = tmp_path / "copied" / "trial"
    shutil.copytree(smoke_trial, copy)
    locked = tmp_path / "locked" / "trial"
    shutil.copytree(smoke_trial, locked)
    step = torch.load(copy / "ckpts" / "last.ckpt", weights_only=True)["global_step"]
    state = torch.load(copy / "ckpts" / "last.ckpt", weights_only=True)
    key = next(k for k, v in state["state_dict"].items() if v.dim() == 2)
    state["state_dict"][key] = torch.zeros(3, 3)
    torch.save(state, tmp_path / "mismatched.ckpt")
    (tmp_path / "random.ckpt").write_bytes(os.urandom(4096))
    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "list.yaml").write_text("- name: smoke\n")
    (copy / "ckpts" / "corrupt.ckpt").write_bytes(b"PK\x03\x04" + os.urandom(100))
    before = snapshot(copy)
    (copy / "ckpts" / ".last.x1y2.tmp.ckpt").write_bytes(b"partial write of a killed run")
    fresh = tmp_path / "fresh"
    parsed = copy / "configs" / "parsed.yaml"
    resume = [f"resume={copy}/ckpts/last.ckpt"]
    expectations = [
        # (argv, exit code, expected text in the one error line)
        (["--train", *smoke_args(fresh, "trainer.max_steps=abc")], 2, "trainer.max_steps"),
        (["--train", *smoke_args(fresh, "trainer.max_steps=-1")], 2, "train forever"),
        (["--train", *smoke_args(fresh, "checkpoint.every_n_train_steps=abc")], 2, "checkpoint.every_n_train_steps"),
        (["--train", *smoke_args(fresh, "checkpoint.every_n_train_steps=-1")], 2, "checkpoint.every_n_train_steps"),
        (["--train", *smoke_args(fresh, "trainer.val_check_interval=0")], 2, "trainer.val_check_interval"),
        (["--train", *smoke_args(fresh, "system.optimizer.args.lr=abc")], 2, "optimizer"),
        (["--train", "--config", tmp_path / "list.yaml"], 2, "top level must be a mapping"),
        (["--train", *smoke_args(fresh, f"resume={tmp_path / 'random.ckpt'}")], 2, "random.ckpt"),
        (["--test", *smoke_args(fresh, f"resume={tmp_path / 'empty.ckpt'}")], 2, "empty"),
        (["--export", *smoke_args(fresh, f"resume={tmp_path / 'mismatched.ckpt'}")], 2, "does not fit"),
        (["--validate", *smoke_args(fresh, f"resume={tmp_path / 'mismatched.ckpt'}")], 2, "does not fit"),
        (["--test", *smoke_args(fresh, f"system.weights={tmp_path / 'random.ckpt'}")], 2, "system.weights"),
        (["--train", *smoke_args(fresh, f"system.weights={tmp_path / 'mismatched.ckpt'}")], 2, "does not fit"),
        (["--test", *smoke_args(fresh, f"resume={copy}")], 2, "is a folder"),
        # on the copied trial: a failed resume leaves it as it was
        (["--train", "--config", parsed, *resume, "system.optimizer.args.lr=abc"], 2, "optimizer"),
        (["--train", "--config", parsed, f"resume={copy}/ckpts/corrupt.ckpt"], 2, "corrupt.ckpt"),
        # a second run of a trial in use
        # (with steps left to train: a resume at max_steps is refused before the lock is tried)
        (["--train", "--config", locked / "configs" / "parsed.yaml", f"resume={locked}/ckpts/last.ckpt",
          f"trainer.max_steps={step + 2}"], 2, "in use"),
        # a successful resume of the copied trial
        (["--train", "--config", parsed, *resume, f"trainer.max_steps={step + 2}", "data.random_camera.n_test_views=1"],
         0, ""),
        # divergence: the first update makes the parameters huge (1e30) or infinite; no checkpoint of them is kept
        (["--train", *smoke_args(tmp_path / "diverged", "system.optimizer.args.lr=1e30", "system.max_nonfinite_steps=2",
                                 "checkpoint.every_n_train_steps=1", "trainer.val_check_interval=100")],
         3, "no checkpoint of this run was kept"),
        # (eps=0: Adam divides 0 by 0 for the parameters that got no gradient; lr=.inf is refused up front now)
        (["--train", *smoke_args(tmp_path / "diverged_inf", "system.optimizer.args.eps=0",
                                 "system.max_nonfinite_steps=2", "checkpoint.every_n_train_steps=1",
                                 "trainer.val_check_interval=100")],
         3, "parameters after the last update"),
    ]  # fmt: skip
    with trial_lock(str(locked)):
        results = run_cases([argv for argv, _, _ in expectations])
    for (argv, rc, text), result in zip(expectations, results):
        if rc == 0:
            assert result["rc"] == 0, (argv, result)
        else:
            assert_one_line_exit(result, rc, text)
    assert not fresh.exists(), "a run stopped by bad input created a trial folder"

    after = snapshot(copy)
    # rewritten by design: the newest state, and the run report (threestudio/utils/report.py) of the latest run
    latest = {"ckpts/last.ckpt", "save/run_stats.json", "save/report.html"}
    assert {k: v for k, v in after.items() if k in before and k not in latest} == {
        k: v for k, v in before.items() if k not in latest
    }, "the resume changed files of the trial it continued"
    assert sorted(p.name for p in (copy / "ckpts").iterdir()) == ["corrupt.ckpt", "last.ckpt"]  # no last-v1, no .tmp
    assert torch.load(copy / "ckpts" / "last.ckpt", weights_only=True)["global_step"] == step + 2
    new = set(after) - set(before)
    n = 1 + sum(k.startswith("configs/parsed-resume-") for k in before)  # the shared trial may have been resumed
    assert {f"configs/parsed-resume-{n}.yaml", f"csv_logs/resume-{n}/metrics.csv"} <= new, sorted(new)
    for folder in ("diverged", "diverged_inf"):
        assert not list((tmp_path / folder).rglob("*.ckpt")), f"{folder}: a checkpoint of diverged weights was kept"
    assert "no checkpoint of this run was kept" in results[-1]["errors"][0]
