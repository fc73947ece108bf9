"""Test passes split across processes (DDP): which rank owns a batch, and merging per-target records on rank 0."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from threestudio.utils.errors import UserError
from threestudio.utils.io import write_json_atomic

if TYPE_CHECKING:
    from threestudio.systems.base import BaseSystem

PARTIAL_DIR = ".partial"


def owns_batch(trainer: Any, batch_idx: int) -> bool:
    """Whether this process handles test batch ``batch_idx`` (batch k belongs to rank k mod world_size)."""
    return trainer.world_size <= 1 or batch_idx % trainer.world_size == trainer.global_rank


def check_unsharded_test_loader(trainer: Any) -> None:
    """Refuse a test loader that Lightning sharded with a DistributedSampler (it pads: targets would repeat)."""
    if trainer.world_size <= 1:
        return
    from torch.utils.data import DistributedSampler

    loaders = trainer.test_dataloaders
    for loader in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
        if isinstance(getattr(loader, "sampler", None), DistributedSampler):
            raise UserError(
                "the test targets are split across processes by the system itself; set "
                "trainer.use_distributed_sampler=false (a DistributedSampler pads and would repeat targets)"
            )


def gather_records(system: "BaseSystem", name: str, records: List[Dict[str, Any]]) -> Optional[List[Dict[str, Any]]]:
    """Collect per-target ``records`` (dicts with ``target``) of every process; rank 0 gets them all.

    Each rank writes ``save/.partial/{name}_rank{r}.json``; after a barrier rank 0 reads and deletes them and
    returns the records sorted by target (other ranks get None). A single process returns its own records.
    """
    trainer = system.trainer
    if trainer.world_size <= 1:
        return sorted(records, key=lambda r: r["target"])
    partial = system.save_path(os.path.join(PARTIAL_DIR, f"{name}_rank{trainer.global_rank}.json"))
    write_json_atomic(partial, records)
    trainer.strategy.barrier(f"{name}_partials")
    if trainer.global_rank != 0:
        return None
    merged: List[Dict[str, Any]] = []
    for rank in range(trainer.world_size):
        path = system.save_path(os.path.join(PARTIAL_DIR, f"{name}_rank{rank}.json"))
        with open(path) as f:
            merged.extend(json.load(f))
        os.remove(path)
    try:
        os.rmdir(os.path.dirname(partial))
    except OSError:
        pass  # other partial files still there
    return sorted(merged, key=lambda r: r["target"])


def check_every_target_once(records: List[Dict[str, Any]], expected: List[int]) -> None:
    """Raise RuntimeError when the merged records miss a target or hold one twice."""
    got = [int(r["target"]) for r in records]
    if sorted(got) != sorted(int(i) for i in expected):
        missing = sorted(set(expected) - set(got))
        repeated = sorted({i for i in got if got.count(i) > 1})
        raise RuntimeError(f"sharded test pass is incomplete: missing targets {missing}, repeated {repeated}")
