"""Errors for bad user input, raised by :mod:`zeronvs_diffusion` (which imports nothing of threestudio).

:class:`UserError` and :class:`ConfigError` are defined here, where the stand-alone diffusion package can use
them, and re-exported by :mod:`threestudio.utils.errors`: command-line entry points (``launch.py``,
``python -m zeronvs_diffusion.convert``) turn any of them into a one-line message and exit code 2.
"""

from __future__ import annotations

import os

# where the released weights are described: the ZeroNVS README's "Models" section (launch_inference.sh says the same)
WEIGHTS_SOURCE = "https://github.com/kylesargent/ZeroNVS#models (README section 'Models')"
HOW_TO_GET_WEIGHTS = (
    f"download zeronvs.ckpt and zeronvs_config.yaml from the ZeroNVS release ({WEIGHTS_SOURCE}), or pass a folder "
    "written by `python -m zeronvs_diffusion.convert`"
)

# the files of the ZeroNVS release: only a missing one of these is a download
RELEASE_FILES = ("zeronvs.ckpt", "zeronvs_config.yaml")


def missing_file_message(what: str, path: str) -> str:
    """One line for a missing file: what it is, the path given and where that was looked for, and what to do —
    the download only when the file is one of the release's (:data:`RELEASE_FILES`)."""
    looked = os.path.abspath(path)
    where = f" (looked for {looked})" if looked != path else ""
    if os.path.basename(os.path.normpath(path)) in RELEASE_FILES:
        return f"{what} not found: {path}{where}; {HOW_TO_GET_WEIGHTS}"
    return f"{what} not found: {path}{where}; check the path (a relative one is read from the current folder)"


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
