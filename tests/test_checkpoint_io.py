"""Atomic writes: an interrupted save never replaces a good file with a partial one."""

from __future__ import annotations

import pytest
import torch

from threestudio.utils.checkpoint_io import atomic_torch_save
from threestudio.utils.io import write_json_atomic


def test_interrupted_checkpoint_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpts" / "last.ckpt"
    atomic_torch_save({"global_step": 5, "w": torch.ones(3)}, str(path))

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"global_step": 6}, str(path))
    monkeypatch.undo()
    state = torch.load(path, weights_only=True)
    assert state["global_step"] == 5 and torch.equal(state["w"], torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"], "temporary file left behind"


def test_json_is_strict_and_atomic(tmp_path):
    path = tmp_path / "metrics.json"
    write_json_atomic(str(path), {"psnr": 20.0})
    with pytest.raises(ValueError):
        write_json_atomic(str(path), {"psnr": float("nan")})
    assert path.read_text().strip().startswith("{") and "20.0" in path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
