"""Whose folder a relative path is read from: the repository's, or the user's.

The rule (README, "Paths"): a relative path written in one of the repository's own configs (``configs/**.yaml``)
belongs to the repository and is read from its root — ``pretrained_config: configs/diffusion_tiny.yaml`` in
``configs/smoke.yaml`` works from any folder, and ``zeronvs.ckpt`` in ``configs/zeronvs.yaml`` is the one in the
repository root. A path the user gives (on the command line, in their own YAML, in a trial's ``parsed.yaml``) is read
from the current folder; the one exception is a path starting with ``configs/`` that does not exist there: it names
the repository's shipped file (README's recipes say ``--model-config configs/diffusion_tiny.yaml``).
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Callable, Optional

logger = logging.getLogger(__name__)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHIPPED_CONFIGS = os.path.join(REPO_ROOT, "configs")

# config keys (the last part of the dotted key) whose values are files or folders the run reads
PATH_KEYS = frozenset({
    "image_path", "scene_dir", "target_c2w_path", "generated_views_dir",
    "pretrained_model_name_or_path", "pretrained_config", "weights", "resume",
})
# model sources (zeronvs_diffusion.sources.MODEL_SOURCES) whose argument is a file: "oracle:WORLD.yaml"
_FILE_SOURCES = ("oracle:",)
_SCHEME = re.compile(r"^[A-Za-z][\w+.-]+:")  # skimage:motorcycle_left, random-like names with a colon, URLs


def is_shipped_config(path: str) -> bool:
    """Whether ``path`` is one of the repository's own config files (under ``configs/``)."""
    return os.path.abspath(path).startswith(SHIPPED_CONFIGS + os.sep)


def repo_path(path: str) -> str:
    """A relative ``path`` read from the repository root (absolute paths are kept)."""
    return path if os.path.isabs(path) else os.path.join(REPO_ROOT, path)


def user_path(path: str) -> str:
    """A relative ``path`` as the user typed it (read from the current folder), except that a ``configs/...`` path
    that does not exist there but does in the repository names the repository's shipped file."""
    if os.path.isabs(path) or os.path.lexists(path):
        return path
    parts = os.path.normpath(path).split(os.sep)
    shipped = os.path.join(REPO_ROOT, path)
    if parts[0] == "configs" and os.path.exists(shipped):
        logger.debug("%s is not in %s: using the repository's %s", path, os.getcwd(), shipped)
        return shipped
    return path


def _rebased(value: Any, resolve: Callable[[str], str]) -> Any:
    """``value`` with its path part passed through ``resolve``; anything that is not a relative path is kept."""
    if not isinstance(value, str) or not value or "${" in value or value == "random":
        return value
    for prefix in _FILE_SOURCES:
        if value.startswith(prefix):
            return prefix + _rebased(value[len(prefix):], resolve)
    if _SCHEME.match(value) or os.path.isabs(value):
        return value
    return resolve(value)


def rebase_paths(conf: Any, resolve: Callable[[str], str], key: Optional[str] = None) -> Any:
    """``conf`` (an OmegaConf node or plain containers) with the values of :data:`PATH_KEYS` passed through
    ``resolve``, in place for containers (returns the node). Interpolations and missing values are kept."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(conf, (dict, DictConfig, list, ListConfig)):
        keys = list(conf.keys()) if isinstance(conf, (dict, DictConfig)) else range(len(conf))
        for k in keys:
            if isinstance(conf, (DictConfig, ListConfig)) and (
                OmegaConf.is_interpolation(conf, k) or OmegaConf.is_missing(conf, k)
            ):
                continue
            child = conf[k]
            rebased = rebase_paths(child, resolve, str(k) if isinstance(conf, (dict, DictConfig)) else key)
            if rebased is not child:  # a changed path (nodes are rebased in place; OmegaConf's assignment is slow)
                conf[k] = rebased
        return conf
    if key in PATH_KEYS:
        return _rebased(conf, resolve)
    return conf
