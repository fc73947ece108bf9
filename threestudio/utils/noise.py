"""Narrow filters for warnings a user of launch.py can do nothing about (each with the reason it is safe)."""

from __future__ import annotations

import warnings


def silence_unactionable_warnings(mode: str) -> None:
    """Hide library warnings that say nothing about the user's run; ``mode`` is launch.py's (train, test, ...)."""
    # Lightning 2.6's own pytree helper still builds torch's deprecated LeafSpec; it is Lightning's to change, and
    # it says so on every run.
    leaf_spec = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
    warnings.filterwarnings("ignore", message=leaf_spec, category=FutureWarning)
    if mode != "train":
        # Rendering or exporting from a training checkpoint: the ModelCheckpoint (and progress bar) states it holds
        # only matter to a training run, which resume= builds with those callbacks.
        warnings.filterwarnings("ignore", message=r"Be aware that when using `ckpt_path`, callbacks used to create")
    if mode == "export":
        # The export pass runs as Lightning's predict loop, whose steps return nothing on purpose (the mesh is
        # written once at the end of the epoch).
        warnings.filterwarnings("ignore", message=r"predict returned None if it was on purpose")
