"""Helpers for tests that drive a shipped config's system in-process, without a Trainer: build its datamodule and
system as the runner does, and run one training step's losses."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch

import threestudio
from threestudio.runner import resolve_data_config
from threestudio.utils.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def build(config: str, overrides: List[str], mode: str = "train") -> Tuple[Any, Any, Any]:
    """(cfg, datamodule, system) of ``configs/<config>`` with ``overrides``, set up and prepared for ``mode`` as
    :func:`threestudio.runner.run` does before it writes anything."""
    cfg = load_config(str(ROOT / "configs" / config), cli_args=overrides)
    resolve_data_config(cfg)
    datamodule = threestudio.find(cfg.data_type)(cfg.data)
    system = threestudio.find(cfg.system_type)(cfg.system)
    datamodule.setup("fit" if mode == "train" else mode)
    system.prepare(mode, datamodule)
    return cfg, datamodule, system


def training_batch(datamodule: Any, step: int = 0, seed: int = 0) -> Dict[str, Any]:
    """The training batch at ``step`` (seeded)."""
    torch.manual_seed(seed)
    train = datamodule.train_dataset
    if hasattr(train, "make_batch"):
        train.update_step(0, step)
        return train.make_batch()
    return train.sample()


def training_losses(system: Any, batch: Dict[str, Any], step: int = 0, seed: int = 0) -> Dict[str, torch.Tensor]:
    """One step's weighted loss terms at ``step`` (seeded; the schedules follow ``step``)."""
    system.set_global_step(step)
    system.do_update_step(0, step)
    torch.manual_seed(seed)
    random.seed(seed)  # the material's shading choice (threestudio's) draws from Python's generator
    return system.training_losses(batch)  # without a Trainer the system logs nothing (BaseSystem.log)
