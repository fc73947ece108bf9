"""Errors raised by :mod:`zeronvs_diffusion` for bad user input (all derive from ``UserError``)."""

from __future__ import annotations

from threestudio.utils.errors import ConfigError, UserError

HOW_TO_GET_WEIGHTS = (
    "download zeronvs.ckpt and zeronvs_config.yaml from the ZeroNVS release "
    "(https://github.com/kylesargent/ZeroNVS, 'Trained models'), or pass a folder written by "
    "`python -m zeronvs_diffusion.convert`"
)


class CheckpointError(UserError):
    """A checkpoint or converted folder is missing, unreadable, or does not fit its YAML."""


class UnsupportedConfigError(ConfigError):
    """The latent-diffusion YAML asks for something this implementation does not support."""
