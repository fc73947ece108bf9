"""The proposal networks' own optimizer, as ZeroNVS's renderer holds it (``prop_optimizer_config``)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import threestudio
from threestudio.utils.config import load_config
from threestudio.utils.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def build_system(config: str, *overrides: str):
    cfg = load_config(str(ROOT / "configs" / config), cli_args=list(overrides))
    return threestudio.find(cfg.system_type)(cfg.system)


def main_optimizer(system) -> torch.optim.Optimizer:
    built = system.configure_optimizers()
    return built["optimizer"] if isinstance(built, dict) else built


def test_paper_config_proposal_optimizer_has_the_original_settings():
    system = build_system("zeronvs.yaml")
    optimizer = system.proposal_optimizer
    assert type(optimizer) is torch.optim.Adam and len(optimizer.param_groups) == 1
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.005 and group["eps"] == 1e-15 and group["weight_decay"] == 1e-6
    assert tuple(group["betas"]) == (0.9, 0.999)  # torch's default, as the original's config gives none
    proposal_ids = {id(p) for p in system.renderer.proposal_network.parameters()}
    assert {id(p) for p in group["params"]} == proposal_ids
    main = main_optimizer(system)
    main_ids = {id(p) for g in main.param_groups for p in g["params"]}
    assert not main_ids & proposal_ids
    assert main_ids == {id(p) for p in system.parameters()} - proposal_ids
    assert all(tuple(g["betas"]) == (0.9, 0.99) for g in main.param_groups)


def test_without_prop_optimizer_config_the_main_optimizer_trains_the_proposal():
    system = build_system("smoke.yaml", "system.renderer.prop_optimizer_config=null")
    assert system.proposal_optimizer is None
    main_ids = {id(p) for g in main_optimizer(system).param_groups for p in g["params"]}
    assert {id(p) for p in system.renderer.proposal_network.parameters()} <= main_ids
    with pytest.raises(ConfigError, match="prop_optimizer_config"):
        build_system("smoke.yaml", "system.renderer.prop_optimizer_config.name=Adamm")


def rays(n=16):
    rays_o = torch.tensor([2.0, 0.0, 0.3]).expand(1, 4, n // 4, 3).clone()
    rays_d = torch.nn.functional.normalize(-rays_o + torch.randn(1, 4, n // 4, 3) * 0.2, dim=-1)
    return rays_o, rays_d


def proposal_state(system):
    return [p.detach().clone() for p in system.renderer.proposal_network.parameters()]


@pytest.mark.parametrize("main_loss_finite", [True, False])
def test_proposal_steps_after_the_main_step_even_when_that_is_skipped(monkeypatch, main_loss_finite):
    system = build_system("smoke.yaml")
    system.train()
    out = system.renderer(*rays())
    main = out["comp_rgb"].mean() * (1.0 if main_loss_finite else math.nan)
    terms = {"loss_rgb": main, "loss_proposal": out["loss_proposal"]}
    monkeypatch.setattr(system, "training_losses", lambda batch: terms)
    total = system.training_step({}, 0)
    # the proposal loss is not a part of the main loss: the main step never sees it
    if main_loss_finite:
        assert torch.equal(total, main)
    else:
        assert total is None  # the main step is skipped...
    before, geometry_before = proposal_state(system), [p.detach().clone() for p in system.geometry.parameters()]
    system.on_train_batch_end(None, {}, 0)
    after = proposal_state(system)
    assert any(not torch.equal(a, b) for a, b in zip(before, after))  # ...the proposal's update is not
    assert all(torch.equal(a, p) for a, p in zip(geometry_before, system.geometry.parameters()))
    assert system.proposal_optimizer.state  # Adam moments exist: it took a step
    system.on_train_batch_end(None, {}, 0)  # nothing pending: no second step
    assert all(torch.equal(a, b) for a, b in zip(after, proposal_state(system)))


def test_non_finite_proposal_loss_skips_only_the_proposal_update(monkeypatch):
    system = build_system("smoke.yaml")
    system.train()
    out = system.renderer(*rays())
    main = out["comp_rgb"].mean()
    monkeypatch.setattr(system, "training_losses",
                        lambda batch: {"loss_rgb": main, "loss_proposal": out["loss_proposal"] * math.inf})
    assert torch.equal(system.training_step({}, 0), main)
    before = proposal_state(system)
    system.on_train_batch_end(None, {}, 0)
    assert all(torch.equal(a, b) for a, b in zip(before, proposal_state(system)))
    assert all(torch.isfinite(p).all() for p in system.renderer.proposal_network.parameters())


def test_proposal_optimizer_state_goes_into_checkpoints():
    system = build_system("smoke.yaml")
    system.train()
    system._proposal_loss = system.renderer(*rays())["loss_proposal"]
    system.on_train_batch_end(None, {}, 0)
    checkpoint = {"state_dict": system.state_dict(), "global_step": 1, "epoch": 0}
    system.on_save_checkpoint(checkpoint)
    assert checkpoint["proposal_optimizer"]["state"]
    fresh = build_system("smoke.yaml")
    fresh.on_load_checkpoint(checkpoint)
    saved = checkpoint["proposal_optimizer"]["state"]
    loaded = fresh.proposal_optimizer.state_dict()["state"]
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k]["exp_avg"], loaded[k]["exp_avg"]) for k in saved)
