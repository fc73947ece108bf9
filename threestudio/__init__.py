"""threestudio (ZeroNVS edition): a registry of components found by name.

Importing this package is cheap: no component module (and no CUDA library) is imported until
:func:`find` asks for it. Each registered name maps to the module that defines it in
``_COMPONENT_MODULES``; the module registers its class with :func:`register` when imported.
"""

from __future__ import annotations

import importlib
import logging
from typing import Callable, Dict, Type

__version__ = "0.1.0"

logger = logging.getLogger("threestudio")

# name -> module that registers it. Keep in step with the @register calls (tests/test_config.py checks).
_COMPONENT_MODULES: Dict[str, str] = {
    # data
    "single-image-datamodule": "threestudio.data.single_image",
    "multiview-datamodule": "threestudio.data.multiview",
    "image-target-poses-datamodule": "threestudio.data.image_target_poses",
    "posed-inputs-datamodule": "threestudio.data.posed_inputs",
    # geometry
    "implicit-volume": "threestudio.models.geometry.implicit_volume",
    # materials
    "diffuse-with-point-light-material": "threestudio.models.materials.albedo",
    "no-material": "threestudio.models.materials.albedo",
    # background
    "solid-color-background": "threestudio.models.background.solid_color",
    # renderers
    "nerf-volume-renderer": "threestudio.models.renderers.nerf_volume_renderer",
    # guidance
    "zeronvs-guidance": "threestudio.models.guidance.zeronvs_guidance",
    # exporters
    "mesh-exporter": "threestudio.models.exporters.mesh_exporter",
    # systems
    "zeronvs-system": "threestudio.systems.zeronvs",
    "nvs-system": "threestudio.systems.nvs",
    "nerf-multiview-system": "threestudio.systems.nerf_multiview",
}

_REGISTRY: Dict[str, Type] = {}

# old name → (new name, what changed): refused with a one-line hint naming the new one
_RENAMED: Dict[str, tuple] = {
    "single-view-scene-datamodule": (
        "posed-inputs-datamodule", "it takes N >= 1 posed input views of a scene (data.scene.input_views)"
    ),
}


def register(name: str) -> Callable[[Type], Type]:
    """Class decorator: make ``cls`` findable as ``find(name)``."""

    def decorator(cls: Type) -> Type:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"component name {name!r} is registered twice")
        _REGISTRY[name] = cls
        return cls

    return decorator


def available() -> list:
    """All registered component names (imported or not)."""
    return sorted(set(_COMPONENT_MODULES) | set(_REGISTRY))


def find(name: str) -> Type:
    """The class registered as ``name``, importing its module on first use.

    Raises :class:`threestudio.utils.errors.ConfigError` for an unknown name, listing the valid ones.
    """
    if name in _RENAMED:
        from threestudio.utils.errors import ConfigError

        new, why = _RENAMED[name]
        raise ConfigError(f"component type {name!r} was renamed {new!r} ({why}); use {new!r}")
    if name not in _REGISTRY and name in _COMPONENT_MODULES:
        importlib.import_module(_COMPONENT_MODULES[name])
    if name not in _REGISTRY:
        from threestudio.utils.errors import ConfigError

        raise ConfigError(f"unknown component type {name!r}; valid types: {', '.join(available())}")
    return _REGISTRY[name]
