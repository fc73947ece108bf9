#!/usr/bin/env python
"""Benchmarks (never timed assertions in tests): one subcommand per benchmark, each with --json OUT.

    python scripts/bench.py nerf      [--device auto|cpu|cuda] [--json OUT]   render forward+backward rays/s
    python scripts/bench.py diffusion [--steps N] [--batches 1,4,16] [--json OUT]
    python scripts/bench.py sds       --config configs/zeronvs.yaml [--steps N] [--json OUT]
    python scripts/bench.py load-memory [--json OUT]                          checkpoint load peak RSS
    python scripts/bench.py oracle [--scenes S.yaml ...] [--steps N] [--renderers 16+16,32+32] [--json OUT]
    python scripts/bench.py trace  [--stage 1|2] [--fast-paths auto|off] [key=value ...]   one step on fake CUDA

Each subcommand lives in scripts/benchmarks/<name>.py with ``add_arguments(parser)`` and ``run(args) -> dict``
(and optionally ``before_torch(args)``, called before anything imports torch). A result with a non-empty
``errors`` list makes the command exit 1.
Results go into docs/PERFORMANCE.md with device, date, command and torch version.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

BENCHMARKS = {
    "nerf": "benchmarks.nerf",
    "diffusion": "benchmarks.diffusion",
    "sds": "benchmarks.sds",
    "load-memory": "benchmarks.load_memory",
    "oracle": "benchmarks.oracle",
    "trace": "benchmarks.trace",
}


def environment() -> dict:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    return {
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "device": device,
        "python": platform.python_version(),
        "command": " ".join(["python", "scripts/bench.py", *sys.argv[1:]]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="benchmark", required=True)
    modules = {}
    for name, module_name in BENCHMARKS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("benchmarks"):
                continue  # benchmark not written yet
            raise
        modules[name] = module
        p = sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else None)
        module.add_arguments(p)
        p.add_argument("--json", default=None, help="also write the result as JSON to this file")
    args = parser.parse_args(argv)
    if hasattr(modules[args.benchmark], "before_torch"):
        from threestudio.utils.errors import UserError

        try:
            modules[args.benchmark].before_torch(args)
        except UserError as e:  # e.g. no C++ compiler for the fake-CUDA stand-in: one line
            print(f"error: {e}", file=sys.stderr)
            return 2
    result = {"benchmark": args.benchmark, **environment(), "result": modules[args.benchmark].run(args)}
    print(json.dumps(result, indent=2))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 1 if result["result"].get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
