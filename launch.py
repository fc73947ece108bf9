#!/usr/bin/env python
"""Run a threestudio (ZeroNVS edition) experiment.

    python launch.py --config configs/zeronvs.yaml --train [--gpu 0] [key=value ...]
    python launch.py --config TRIAL/configs/parsed.yaml --test resume=TRIAL/ckpts/last.ckpt
    python launch.py --config TRIAL/configs/parsed.yaml --export resume=TRIAL/ckpts/last.ckpt

This file only parses the command line and wires the parts together; the work is in threestudio/.
Bad input (a missing file, an unknown key, ...) ends with a one-line message and exit code 2
(the traceback only with --verbose); SIGTERM / SIGINT end with one line saying where the run stopped and how to
continue, and exit code 143 / 130.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import threading

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3

logger = logging.getLogger("launch")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Any further key=value arguments override the config (OmegaConf dotlist), e.g. "
        "system.loss.lambda_sds=0.2 data.random_camera.height=[64,128] trainer.max_steps=100. "
        "Numbers may be schedules [start_step, start_value, end_value, end_step].",
    )
    parser.add_argument("--config", required=True, help="path to the experiment YAML")
    parser.add_argument(
        "--gpu",
        default=None,
        help="GPU(s) to use, e.g. 0 or 0,1: sets CUDA_VISIBLE_DEVICES and uses that many devices (default: "
        "the visible GPUs as trainer.devices says, 1 unless set). Without CUDA the run uses the CPU.",
    )
    mode = parser.add_mutually_exclusive_group()  # exactly one: checked in main, after unknown options
    mode.add_argument("--train", action="store_true", help="fit, then render the test orbit")
    mode.add_argument("--validate", action="store_true", help="render the validation views")
    mode.add_argument("--test", action="store_true", help="render the test views (video, frames, metrics)")
    mode.add_argument("--export", action="store_true", help="export a mesh from the density field")
    parser.add_argument("--verbose", action="store_true", help="debug logging and full tracebacks")
    parser.add_argument("--quiet", action="store_true", help="no progress bars; warnings and errors only")
    parser.add_argument(
        "--lpips-weights",
        metavar="DIR",
        help="folder with alexnet-owt-7be5be79.pth and lpips' v0.1 alex.pth for LPIPS in metrics.json (sets "
        "THREESTUDIO_LPIPS_DIR; default: that variable, else the torch hub cache, else one download into it)",
    )
    return parser


def _background_failure(hook_args: threading.ExceptHookArgs) -> None:
    """A logger's writer thread that fails (e.g. TensorBoard on a full disk): one line, not a traceback."""
    error = hook_args.exc_value
    if isinstance(error, OSError) and not logger.isEnabledFor(logging.DEBUG):
        where = f" writing {error.filename}" if error.filename else ""
        print(f"error: a background writer ({hook_args.thread.name if hook_args.thread else 'thread'}) failed"
              f"{where}: {error.strerror or error}", file=sys.stderr)
        return
    threading.__excepthook__(hook_args)


def check_lpips_folder(folder: str) -> str | None:
    """Why the ``--lpips-weights`` folder the user named cannot be used (not a folder, a file missing, weights
    that are not LPIPS's: integers, NaN, negative linear weights), or None. The weights read stay cached."""
    if not os.path.isdir(folder):
        return f"--lpips-weights {folder} is not a folder"
    from threestudio.utils import lpips_alex

    try:
        lpips_alex.load_weights(*lpips_alex.find_weight_files(os.path.abspath(folder), download=False))
    except lpips_alex.LpipsUnavailable as e:
        return f"--lpips-weights {folder}: {e}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    unknown_flags = [e for e in extras if e.startswith("-")]
    if unknown_flags:  # named first: `--trian` is a misspelt mode, not a missing one
        import difflib

        known = [o for action in parser._actions for o in action.option_strings]
        close = [m for f in unknown_flags for m in difflib.get_close_matches(f.split("=")[0], known, n=1)]
        hint = f" (did you mean {' '.join(close)}?)" if close else ""
        print(f"error: unknown option(s) {' '.join(unknown_flags)}{hint}; see --help", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not any((args.train, args.validate, args.test, args.export)):
        parser.print_usage(sys.stderr)
        print("error: one mode is required: --train, --validate, --test or --export", file=sys.stderr)
        return EXIT_BAD_INPUT

    from threestudio.utils.threads import set_cpu_thread_defaults

    set_cpu_thread_defaults()  # before torch is imported: no busy-waiting OpenMP threads on shared cores
    if args.lpips_weights:
        problem = check_lpips_folder(args.lpips_weights)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return EXIT_BAD_INPUT
        os.environ["THREESTUDIO_LPIPS_DIR"] = os.path.abspath(args.lpips_weights)
    n_gpus = 1
    if args.gpu is not None:
        # Must happen before torch initialises CUDA.
        os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
        os.environ["CUDA_VISIBLE_DEVICES"] = args.gpu
        n_gpus = max(1, len([g for g in args.gpu.split(",") if g.strip()]))

    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="[%(levelname)s] %(name)s: %(message)s")
    logging.getLogger("lightning.pytorch").propagate = False  # Lightning prints its own messages
    if args.quiet:
        from threestudio.utils.progress import set_quiet

        set_quiet()
        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    from threestudio.utils.errors import TrainingDiverged, UserError
    from threestudio.utils.stop_signals import RunInterrupted

    threading.excepthook = _background_failure
    try:
        from threestudio.runner import run
        from threestudio.utils.paths import user_path

        mode = next(m for m in ("train", "validate", "test", "export") if getattr(args, m))
        # a path you type is read from your folder; `configs/...` not there is the repository's (README, "Paths")
        trial_dir = run(user_path(args.config), mode, extras, n_gpus=n_gpus)
    except UserError as e:
        if args.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RunInterrupted as e:
        if args.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except TrainingDiverged as e:
        if args.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except OSError as e:
        if args.verbose or e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {e.filename}" if e.filename else ""
        print(
            f"error: no space left on the device{where}; free space, then resume from the last checkpoint",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    if args.quiet:  # the one line of a quiet run that went well: where its results are
        print(f"{mode} done: {os.path.abspath(trial_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
