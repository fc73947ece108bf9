"""Convert a latent-diffusion ZeroNVS checkpoint into a diffusers-style folder of safetensors.

    python -m zeronvs_diffusion.convert --ckpt zeronvs.ckpt --config zeronvs_config.yaml --out DIR [--dtype fp16]

The folder holds ``model_index.json``, ``unet/``, ``vae/``, ``image_encoder/``, ``scheduler/``,
``cc_projection/`` (each loadable with its library's ``from_pretrained``) and ``conditioning.json``;
``load_model(DIR)`` reads it without unpickling anything.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from typing import List, Optional, Union

import torch

from zeronvs_diffusion.errors import UserError
from zeronvs_diffusion.model import MODEL_INDEX, load_model

logger = logging.getLogger(__name__)


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
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"--out {out_dir} is an existing file; give a folder path (it is created)")
    if os.path.exists(out_dir) and os.listdir(out_dir) and not overwrite:
        raise UserError(f"{out_dir} exists and is not empty; choose another --out or pass --overwrite")
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
