"""Experiment configs: OmegaConf YAML + command-line dotlist, parsed into typed dataclasses.

Every component has a nested ``@dataclass Config``; :func:`parse_structured` turns the user's dict into
an instance-checked OmegaConf object and turns unknown keys and wrong types into one-line
:class:`~threestudio.utils.errors.ConfigError` messages that name the key and the valid ones.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from threestudio.utils.errors import ConfigError, UserError
from threestudio.utils.paths import is_shipped_config, rebase_paths, repo_path, user_path


def _numbers(name: str, fn: Any) -> Any:
    """The arithmetic resolver ``name``: numbers in, a number out (``${mul:'aaaa',1000000000}`` would otherwise
    build a 4 GB string)."""

    def resolver(*args: Any) -> Any:
        if not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
            raise ConfigError(f"${{{name}:...}} takes numbers, got {', '.join(repr(a)[:40] for a in args)}")
        return fn(*args)

    return resolver


def _environment_refused(*args: Any) -> Any:
    raise ConfigError(
        "${oc.env:...} is disabled: configs do not read environment variables (their values would end up in the "
        "trial's folder name, parsed.yaml and checkpoints); pass the value on the command line as key=value"
    )


def _register_resolvers() -> None:
    """threestudio's resolvers (arithmetic on numbers only, basename, rmspace); ``oc.env`` refuses (see
    :func:`_environment_refused`): an experiment config never reads the environment."""
    resolvers = {
        "add": _numbers("add", lambda a, b: a + b),
        "sub": _numbers("sub", lambda a, b: a - b),
        "mul": _numbers("mul", lambda a, b: a * b),
        "div": _numbers("div", lambda a, b: a / b),
        "idiv": _numbers("idiv", lambda a, b: a // b),
        "basename": lambda p: os.path.splitext(os.path.basename(str(p)))[0],
        "rmspace": lambda s, sub="_": str(s).replace(" ", sub),
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
    OmegaConf.register_new_resolver("oc.env", _environment_refused, replace=True)


_register_resolvers()


def _full_key(cfg: Any, key: str) -> str:
    prefix = ""
    if isinstance(cfg, DictConfig):
        try:
            prefix = cfg._get_full_key(None) or ""
        except Exception:  # pragma: no cover - omegaconf internals
            prefix = ""
    return f"{prefix}.{key}" if prefix else key


def parse_structured(fields: type, cfg: Optional[Any] = None) -> Any:
    """Validate ``cfg`` (dict, DictConfig or None) against the dataclass ``fields``.

    Returns a structured OmegaConf object with attribute access. Unknown keys and values of the
    wrong type raise :class:`ConfigError` naming the full key and the valid keys; a key in the dataclass's
    ``KEY_HINTS`` (a ``ClassVar`` dict: renamed or removed key → what to do) raises "<full key> <hint>".
    """
    if cfg is None:
        cfg = {}
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return OmegaConf.structured(cfg)
    if not isinstance(cfg, (dict, DictConfig)):
        raise ConfigError(f"expected a mapping for {fields.__qualname__}, got {type(cfg).__name__}: {cfg!r}")
    _check_keys(fields, cfg, _full_key(cfg, "").rstrip("."))
    try:
        merged = OmegaConf.merge(OmegaConf.structured(fields), cfg)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or getattr(e, "key", None) or "?"
        msg = str(e).splitlines()[0]
        raise ConfigError(f"bad value for config key {_full_key(cfg, str(key))!r}: {msg}") from None
    _check_finite(fields, merged, _full_key(cfg, "").rstrip("."))
    return _at_path(merged, _full_key(cfg, ""))


def _float_field(annotation: Any) -> bool:
    """Whether a field annotated ``annotation`` holds floats: ``float``, ``Optional[float]``, ``List[float]``,
    ``Tuple[float, ...]``."""
    if annotation is float:
        return True
    args = [a for a in getattr(annotation, "__args__", ()) or () if a is not type(None) and a is not Ellipsis]
    return bool(args) and all(a is float for a in args)


def _check_finite(fields: type, merged: Any, path: str) -> None:
    """ConfigError naming the key when a float field of ``fields`` (or an element of a float list) holds inf or
    NaN (``1e309`` in YAML is inf): no float setting of a component is meaningful when not finite."""
    try:
        types = typing.get_type_hints(fields)
    except Exception:  # pragma: no cover - unresolvable annotations: no check
        return
    for f in dataclasses.fields(fields):
        if not _float_field(types.get(f.name)):
            continue
        try:
            value = merged[f.name]
        except OmegaConfBaseException:
            continue
        values = list(value) if isinstance(value, (ListConfig, list, tuple)) else [value]
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                full = f"{path}.{f.name}" if path else f.name
                raise ConfigError(f"config key {full} must be a finite number, got {v}")


def in_section(cfg: Optional[Any], section: str) -> DictConfig:
    """``cfg`` as the ``section`` node of a config (unless it already has a place in one), so that
    :func:`parse_structured`'s messages name keys in full (``data.height``) also for a plain dict."""
    if isinstance(cfg, DictConfig) and _full_key(cfg, ""):
        return cfg
    return OmegaConf.create({section: config_to_primitive(cfg) if cfg is not None else {}})[section]


def _nested_dataclass(annotation: Any) -> Optional[type]:
    """The dataclass of a field annotated ``X`` or ``Optional[X]``, else None."""
    if dataclasses.is_dataclass(annotation):
        return annotation
    args = [a for a in getattr(annotation, "__args__", ()) or () if a is not type(None)]
    return args[0] if len(args) == 1 and dataclasses.is_dataclass(args[0]) else None


def _check_keys(fields: type, cfg: Any, path: str) -> None:
    """Unknown keys of ``cfg`` (and of its nested dataclass sections) → ConfigError naming the full key; keys in a
    dataclass's ``KEY_HINTS`` → ConfigError with that hint."""
    valid = [f.name for f in dataclasses.fields(fields)]
    hints = getattr(fields, "KEY_HINTS", {})
    try:
        types = typing.get_type_hints(fields)
    except Exception:  # pragma: no cover - unresolvable annotations: no nested check
        types = {}
    for key in cfg.keys():
        full = f"{path}.{key}" if path else str(key)
        if key in hints:
            raise ConfigError(f"{full} {hints[key]}")
        if key not in valid:
            raise ConfigError(f"unknown config key {full!r}; valid keys here: {', '.join(valid)}")
        nested = _nested_dataclass(types.get(str(key)))
        try:
            value = cfg[key]
        except OmegaConfBaseException:  # a missing value or an interpolation: the merge below reports it
            value = None
        if nested is not None and isinstance(value, (dict, DictConfig)):
            _check_keys(nested, value, full)


def _at_path(node: DictConfig, path: str) -> DictConfig:
    """``node`` placed at ``path`` (e.g. ``system.geometry``) of a new root, so that the error messages of the
    components parsed from it name the full key (``system.geometry.radius``, not ``radius``)."""
    parts = [p for p in path.split(".") if p]
    if not parts or any("[" in p for p in parts):
        return node
    holder = OmegaConf.create({})
    parent = holder
    for part in parts[:-1]:
        parent[part] = {}
        parent = parent[part]
    parent[parts[-1]] = node
    return parent[parts[-1]]


@dataclass
class ExperimentConfig:
    """Top level of every experiment YAML."""

    name: str = "default"
    description: str = ""
    tag: str = ""
    seed: int = 0
    use_timestamp: bool = True
    timestamp: Optional[str] = None
    exp_root_dir: str = "outputs"
    # derived by load_config; not meant to be set by hand
    exp_dir: str = "outputs/default"
    trial_name: str = "exp"
    trial_dir: str = "outputs/default/exp"
    n_gpus: int = 1
    resume: Optional[str] = None

    data_type: str = ""
    data: dict = field(default_factory=dict)
    system_type: str = ""
    system: dict = field(default_factory=dict)
    # passed to lightning.Trainer as keyword arguments
    trainer: dict = field(default_factory=dict)
    # passed to lightning's ModelCheckpoint
    checkpoint: dict = field(default_factory=dict)


# keys load_config derives (a trial's parsed.yaml records them); set on the command line they would be overwritten
_TRIAL = "it is derived from exp_root_dir, name, tag and the time stamp (use_timestamp); set those instead"
DERIVED_KEYS = {
    "exp_dir": _TRIAL,
    "trial_name": _TRIAL,
    "trial_dir": _TRIAL,
    "n_gpus": "it is the number of devices of launch.py --gpu (e.g. --gpu 0,1)",
}

_UNSAFE_FOLDER_CHARS = re.compile(r"[\[\]\s,{}:'\"]+")


def safe_folder_name(name: str) -> str:
    """A folder name without brackets, spaces, commas, colons or quotes (they break shells and globbing)."""
    name = re.sub("_+", "_", _UNSAFE_FOLDER_CHARS.sub("_", str(name))).strip("_")
    return name or "default"


def check_path_component(value: str, key: str) -> None:
    """ConfigError unless ``value`` can be one folder name: no ``/`` or ``\\``, not ``.`` or ``..``, no NUL,
    newline or other control character, at most 255 bytes (a name must not lead out of ``exp_root_dir``)."""
    bad = [c for c in ("/", "\\") if c in value]
    if value in (".", "..") or bad or any(ord(c) < 32 or ord(c) == 127 for c in value):
        what = "a control character (NUL, newline, ...)" if not bad and value not in (".", "..") else repr(
            bad[0] if bad else value
        )
        raise ConfigError(
            f"config key {key} must be one folder name, got {value!r} (contains {what}); use letters, digits, "
            "'-', '_', '.' (it becomes a folder inside exp_root_dir)"
        )
    if len(value.encode()) > 255:
        raise ConfigError(f"config key {key} is too long for a folder name ({len(value.encode())} bytes, max 255)")


# bounds of what one config (file or command-line value) may expand to: YAML aliases share one node many times
# ("billion laughs": 9 levels of 9 aliases expand to 387 million nodes); the largest shipped config has ~220 nodes
MAX_SEED = 2**32 - 1
MAX_CONFIG_NODES = 100_000
MAX_CONFIG_DEPTH = 64
MAX_CONFIG_BYTES = 4 * 2**20  # a file, or the sum of its strings after expansion


def check_expansion(obj: Any, source: str) -> None:
    """ConfigError when the parsed YAML ``obj`` (dicts, lists, scalars; aliases are shared objects) expands to
    more than :data:`MAX_CONFIG_NODES` nodes, nests deeper than :data:`MAX_CONFIG_DEPTH` or holds more than
    :data:`MAX_CONFIG_BYTES` of strings. Counts each shared object once per use without expanding it."""
    memo: dict = {}  # id → (nodes, string bytes) of a container already counted

    def size(node: Any, depth: int) -> tuple:
        if depth > MAX_CONFIG_DEPTH:
            raise ConfigError(f"{source} nests deeper than {MAX_CONFIG_DEPTH} levels; a config is a few levels deep")
        if isinstance(node, (dict, list)):
            if id(node) in memo:
                return memo[id(node)]
            items = list(node.items()) if isinstance(node, dict) else [(None, v) for v in node]
            nodes, chars = 1, 0
            for key, value in items:
                n, c = size(value, depth + 1)
                nodes, chars = nodes + n, chars + c + (len(str(key)) if key is not None else 0)
                if nodes > MAX_CONFIG_NODES or chars > MAX_CONFIG_BYTES:
                    raise ConfigError(
                        f"{source} expands to more than {MAX_CONFIG_NODES} values or {MAX_CONFIG_BYTES} bytes of "
                        "text (YAML aliases repeat a node each time they are used); refused"
                    )
            memo[id(node)] = (nodes, chars)
            return nodes, chars
        return 1, len(node) if isinstance(node, str) else 0

    size(obj, 0)


def _parse_yaml(text: str) -> Any:
    import yaml
    from omegaconf._utils import get_yaml_loader

    return yaml.load(text, Loader=get_yaml_loader())  # noqa: S506 (OmegaConf's safe loader)


def _load_yaml_bounded(path: str) -> Any:
    """``OmegaConf.load(path)`` after checking the file's size and what its YAML expands to (ConfigError); the
    file is parsed once, with OmegaConf's loader, and the checked result becomes the config."""
    size = os.path.getsize(path)
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config {path} is {size} bytes; a config is at most {MAX_CONFIG_BYTES} bytes")
    with open(path, "rb") as f:
        text = f.read().decode("utf-8")  # not UTF-8: load_config names the file and the decoding error
    try:
        parsed = _parse_yaml(text)
    except Exception as e:  # the YAML error
        raise UserError(f"cannot read config {path}: {str(e).splitlines()[0]}") from None
    check_expansion(parsed, f"config {path}")
    if parsed is None:
        return OmegaConf.create()
    if not isinstance(parsed, (list, dict, str)):  # as OmegaConf.load
        raise IOError(f"Invalid loaded object type: {type(parsed).__name__}")
    return OmegaConf.create(parsed)


def _check_override_values(cli_args: Sequence[str]) -> None:
    """Each ``key=value`` override's value bounded as a config file is (:func:`check_expansion`)."""
    for arg in cli_args:
        key, value = arg.split("=", 1)
        if len(value) > MAX_CONFIG_BYTES:
            raise ConfigError(f"command-line override {key} is longer than {MAX_CONFIG_BYTES} bytes")
        try:
            parsed = _parse_yaml(value)
        except Exception:  # OmegaConf reports it (or takes it as a string)
            continue
        check_expansion(parsed, f"command-line override {key}")


def load_config(*yamls: str, cli_args: Sequence[str] = (), n_gpus: int = 1, **overrides: Any) -> Any:
    """Load YAML files, merge the CLI dotlist ``key=value`` overrides, derive the trial folder.

    Relative paths (:data:`~threestudio.utils.paths.PATH_KEYS`) written in the repository's own configs are read
    from the repository root, those of other files and of ``cli_args`` from the current folder
    (:mod:`threestudio.utils.paths`). Returns a structured :class:`ExperimentConfig`.
    """
    confs = []
    for path in yamls:
        if not os.path.isfile(path):
            raise UserError(f"config file not found: {path}")
        try:
            conf = _load_yaml_bounded(path)
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"cannot read config {path}: {str(e).splitlines()[0]}") from None
        if not isinstance(conf, DictConfig):
            raise UserError(
                f"config {path}: its top level must be a mapping (key: value lines), not a {type(conf).__name__}"
            )
        # a shipped config's paths are the repository's; the user's own files' are read from the current folder
        confs.append(rebase_paths(conf, repo_path if is_shipped_config(path) else user_path))
    for arg in cli_args:
        if "=" not in arg:
            raise ConfigError(f"command-line override {arg!r} is not of the form key=value")
        key = arg.split("=", 1)[0].strip()
        if key in DERIVED_KEYS:
            raise ConfigError(f"{key} cannot be set: {DERIVED_KEYS[key]}")
    _check_override_values(cli_args)
    try:
        confs.append(rebase_paths(OmegaConf.from_dotlist(list(cli_args)), user_path))
    except Exception as e:  # OmegaConf's errors, and YAML's for values it cannot read (a NUL byte, ...)
        raise ConfigError(f"cannot parse command-line overrides: {str(e).splitlines()[0]}") from None
    confs.append(OmegaConf.create(overrides))
    cfg = OmegaConf.merge(*confs)
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot resolve config: {str(e).splitlines()[0]}") from None
    scfg = parse_structured(ExperimentConfig, cfg)
    scfg.n_gpus = n_gpus
    if not 0 <= scfg.seed <= MAX_SEED:  # what numpy (and so seed_everything) accepts
        raise ConfigError(f"config key seed must be an integer in [0, {MAX_SEED}], got {scfg.seed}")
    for key in ("name", "tag"):
        check_path_component(str(scfg[key]), key)
    if "\0" in scfg.exp_root_dir:
        raise ConfigError(f"config key exp_root_dir holds a NUL byte: {scfg.exp_root_dir!r}")
    tag = safe_folder_name(scfg.tag) if scfg.tag else ""
    if scfg.use_timestamp:
        if scfg.timestamp is None:
            scfg.timestamp = datetime.now().strftime("@%Y%m%d-%H%M%S")
    else:
        scfg.timestamp = ""
    scfg.trial_name = (tag + scfg.timestamp) or "run"
    check_path_component(scfg.trial_name, "tag (with the timestamp)")
    scfg.exp_dir = os.path.join(scfg.exp_root_dir, safe_folder_name(scfg.name))
    scfg.trial_dir = os.path.join(scfg.exp_dir, scfg.trial_name)
    return scfg


def dump_config(path: str, cfg: Any) -> None:
    """Write ``cfg`` as YAML (the trial's ``configs/parsed.yaml``), atomically: a full disk or a kill leaves no
    partial file, and a symbolic link at ``path`` is replaced, never followed."""
    from threestudio.utils.io import write_bytes_atomic

    write_bytes_atomic(path, OmegaConf.to_yaml(cfg).encode())


def config_to_primitive(cfg: Any, resolve: bool = True) -> Any:
    """Plain Python containers from an OmegaConf node (anything else passes through)."""
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=resolve)
    return cfg
