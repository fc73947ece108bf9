"""Convert a latent-diffusion ZeroNVS checkpoint into a diffusers-style folder of safetensors.

    python -m zeronvs_diffusion.convert --ckpt zeronvs.ckpt --config zeronvs_config.yaml --out DIR [--dtype fp16]

The folder holds ``model_index.json``, ``unet/``, ``vae/``, ``image_encoder/``, ``scheduler/``,
``cc_projection/`` (each loadable with its library's ``from_pretrained``) and ``conditioning.json``;
``load_model(DIR)`` reads it without unpickling anything.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from typing import List, Optional, Union

import torch

from zeronvs_diffusion.errors import UserError
from zeronvs_diffusion.model import COMPONENT_CLASSES, CONDITIONING_FILE, MODEL_INDEX, load_model

logger = logging.getLogger(__name__)


# what a converted folder holds (ZeroNVSModel.save_pretrained): --overwrite replaces only such a folder
CONVERTED_ENTRIES = {MODEL_INDEX, CONDITIONING_FILE, *COMPONENT_CLASSES}


def _is_within(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_out_dir(out_dir: str, inputs: List[str], overwrite: bool) -> None:
    """UserError, before anything is converted, for an ``--out`` the converter must not write or replace.

    ``--out`` must not be a symbolic link or a file; an existing non-empty folder is replaced only with
    ``--overwrite``, only when it is itself a converted model (``model_index.json`` of a ZeroNVSModel,
    ``conditioning.json``, nothing but the component folders) and never when it holds one of the ``inputs``.
    """
    if os.path.islink(out_dir):
        raise UserError(f"--out {out_dir} is a symbolic link; give the real folder path")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"--out {out_dir} is an existing file; give a folder path (it is created)")
    for path in inputs:
        if path and os.path.exists(path) and _is_within(path, out_dir):
            raise UserError(f"--out {out_dir} holds the input {path}; write the converted model to another folder")
    if not os.path.isdir(out_dir) or not os.listdir(out_dir):
        return
    if not overwrite:
        raise UserError(f"{out_dir} exists and is not empty; choose another --out or pass --overwrite")
    foreign = sorted(set(os.listdir(out_dir)) - CONVERTED_ENTRIES)
    if foreign or not _is_converted_model(out_dir):
        what = f"it holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}" if foreign else (
            f"it has no {MODEL_INDEX} of a ZeroNVSModel and {CONDITIONING_FILE}")
        raise UserError(
            f"--overwrite replaces only a folder written by this converter, and {out_dir} is not one ({what}); "
            "choose another --out"
        )


def _is_converted_model(folder: str) -> bool:
    """``folder`` has the marker files of a converted model: a ZeroNVSModel ``model_index.json`` and
    ``conditioning.json``."""
    try:
        with open(os.path.join(folder, MODEL_INDEX), encoding="utf-8") as f:
            index = json.load(f)
    except (OSError, ValueError):
        return False
    marker = isinstance(index, dict) and index.get("_class_name") == "ZeroNVSModel"
    return marker and os.path.isfile(os.path.join(folder, CONDITIONING_FILE))


def convert(
    ckpt: str,
    config: str,
    out_dir: str,
    dtype: Union[str, torch.dtype] = "fp32",
    overwrite: bool = False,
    trust_checkpoint: bool = False,
) -> str:
    """Convert ``ckpt`` (+ its YAML ``config``) into the folder ``out_dir``; returns ``out_dir``.

    The folder is written next to ``out_dir`` first and renamed at the end, so an interrupted conversion
    never leaves a half-written model behind. ``trust_checkpoint``: allow full (code-running) unpickling of a
    checkpoint that holds more than tensors.
    """
    out_dir = os.path.abspath(out_dir)
    check_out_dir(out_dir, [ckpt, config], overwrite)
    model = load_model(ckpt, config, dtype=dtype, device="cpu", trust_checkpoint=trust_checkpoint)
    parent = os.path.dirname(out_dir) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".convert-", dir=parent)
    try:
        model.save_pretrained(tmp)
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote %s (%s)", out_dir, MODEL_INDEX)
    return out_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m zeronvs_diffusion.convert",
        description="Convert zeronvs.ckpt (+ zeronvs_config.yaml) into a diffusers-style safetensors folder.",
    )
    parser.add_argument("--ckpt", required=True, help="latent-diffusion checkpoint, e.g. zeronvs.ckpt")
    parser.add_argument("--config", required=True, help="its YAML, e.g. zeronvs_config.yaml")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="weight precision")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow full unpickling of a checkpoint that holds more than tensors; it runs any code the file "
        "holds, so only for files from a source you trust (by default such files are refused)",
    )
    parser.add_argument("--verbose", action="store_true", help="show tracebacks and debug logging")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        out = convert(
            args.ckpt,
            args.config,
            args.out,
            dtype=args.dtype,
            overwrite=args.overwrite,
            trust_checkpoint=args.trust_checkpoint,
        )
    except UserError as e:
        if args.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
