"""Errors for bad user input, raised by :mod:`zeronvs_diffusion` (which imports nothing of threestudio).

:class:`UserError` and :class:`ConfigError` are defined here, where the stand-alone diffusion package can use
them, and re-exported by :mod:`threestudio.utils.errors`: command-line entry points (``launch.py``,
``python -m zeronvs_diffusion.convert``) turn any of them into a one-line message and exit code 2.
"""

from __future__ import annotations

# where the released weights are described: the ZeroNVS README's "Models" section (launch_inference.sh says the same)
WEIGHTS_SOURCE = "https://github.com/kylesargent/ZeroNVS#models (README section 'Models')"
HOW_TO_GET_WEIGHTS = (
    f"download zeronvs.ckpt and zeronvs_config.yaml from the ZeroNVS release ({WEIGHTS_SOURCE}), or pass a folder "
    "written by `python -m zeronvs_diffusion.convert`"
)


class UserError(Exception):
    """Bad input from the user: a missing file, an unknown config key, a wrong value.

    The message must say what is wrong and what to do about it, on one line.
    """


class ConfigError(UserError):
    """A config key is unknown, mistyped or has a value of the wrong type."""


class CheckpointError(UserError):
    """A checkpoint or converted folder is missing, unreadable, or does not fit its YAML."""


class UnsupportedConfigError(ConfigError):
    """The latent-diffusion YAML asks for something this implementation does not support."""
