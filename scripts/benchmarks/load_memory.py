"""Peak RSS and time of loading a full-size ZeroNVS checkpoint in a fresh process (synthetic, from the manifest).

Writes a synthetic Lightning-style checkpoint with every key and shape of a real zeronvs.ckpt
(zeronvs_state_dict_manifest.json), plus a dummy Adam ``optimizer_states`` entry the size of the real one
(exp_avg + exp_avg_sq for the trainable UNet and cc_projection, fp32; fp16 when the disk is short) and a
``hyper_parameters`` dict, to a temporary folder; loads it with ``load_model`` in a fresh subprocess; reports
ru_maxrss against the bytes of the weights kept; deletes the file. The tensors are zeros written from a sparse
file, so building the checkpoint needs little memory. Not a test: it writes ~15 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(os.environ.get("ZERONVS_SHARED_DIR", os.path.join(os.path.dirname(ROOT), "shared")), "fixtures")
TRAINABLE_PREFIXES = ("model.diffusion_model.", "cc_projection.")
DISK_MARGIN = 1.1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", default=os.path.join(FIXTURES, "zeronvs_state_dict_manifest.json"))
    parser.add_argument("--config", default=os.path.join(FIXTURES, "zeronvs_config.yaml"))
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where to write the temporary checkpoint")
    parser.add_argument("--optimizer-dtype", choices=["auto", "fp32", "fp16"], default="auto",
                        help="dummy optimizer state precision (auto: fp32 if the disk has room, else fp16)")


def _dtype(name: str):
    import torch

    return getattr(torch, name)


def _zero_tensor(shape, dtype, zero_file: str):
    """A tensor of zeros backed by a private mapping of a sparse file (no anonymous memory)."""
    import torch

    numel = 1
    for s in shape:
        numel *= int(s)
    nbytes = max(numel * torch.empty((), dtype=dtype).element_size(), 1)
    storage = torch.UntypedStorage.from_file(zero_file, False, nbytes)
    return torch.empty(0, dtype=dtype).set_(storage, 0, tuple(shape))


def _write_checkpoint(path: str, manifest: Dict[str, Tuple[list, str]], optimizer_dtype: str) -> None:
    import torch

    zero_file = path + ".zeros"
    largest = max(
        (
            torch.Size(shape).numel() * torch.empty((), dtype=_dtype(dt)).element_size()
            for shape, dt in manifest.values()
        )
    )
    with open(zero_file, "wb") as f:
        f.truncate(largest)  # sparse: no disk blocks, reads as zeros
    try:
        state = {k: _zero_tensor(shape, _dtype(dt), zero_file) for k, (shape, dt) in manifest.items()}
        opt_dtype = _dtype({"fp32": "float32", "fp16": "float16"}[optimizer_dtype])
        trainable = [shape for k, (shape, _) in manifest.items() if k.startswith(TRAINABLE_PREFIXES)]
        adam_state = {
            i: {
                "step": torch.tensor(1000.0),
                "exp_avg": _zero_tensor(s, opt_dtype, zero_file),
                "exp_avg_sq": _zero_tensor(s, opt_dtype, zero_file),
            }
            for i, s in enumerate(trainable)
        }
        checkpoint = {
            "epoch": 0,
            "global_step": 100000,
            "state_dict": state,
            "optimizer_states": [{"state": adam_state, "param_groups": [{"lr": 1e-4, "params": list(adam_state)}]}],
            "lr_schedulers": [],
            "hyper_parameters": {"base_learning_rate": 1e-4, "scale_factor": 0.18215, "conditioning_key": "hybrid"},
        }
        torch.save(checkpoint, path)
    finally:
        os.remove(zero_file)


def _vm_hwm() -> int:
    """This process's own peak RSS (VmHWM, bytes) from /proc; 0 where unavailable."""
    try:
        with open("/proc/self/status", "r", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _child(ckpt: str, config: str) -> None:
    """Runs in the fresh subprocess: load, touch every weight, print JSON."""
    import resource

    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel  # noqa: F401  (imports are
    from transformers import CLIPVisionModelWithProjection  # noqa: F401            counted in the baseline)

    from zeronvs_diffusion import load_model

    def rss() -> int:
        """Peak RSS in bytes: ru_maxrss (KiB on Linux), or VmHWM where ru_maxrss still holds the parent's peak."""
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return min(maxrss, _vm_hwm()) if _vm_hwm() else maxrss

    baseline = rss()
    t0 = time.perf_counter()
    model = load_model(ckpt, config, dtype="fp32", device="cpu")
    load_s = time.perf_counter() - t0
    after_load = rss()
    t0 = time.perf_counter()
    with torch.no_grad():
        total = sum(float(p.float().sum()) for p in model.parameters())  # page every weight in
    touch_s = time.perf_counter() - t0
    kept = sum(p.numel() * p.element_size() for p in model.parameters())
    print(
        json.dumps(
            {
                "baseline_rss": baseline,
                "load_s": load_s,
                "rss_after_load": after_load,
                "touch_s": touch_s,
                "peak_rss": rss(),
                "weights_kept": kept,
                "checksum": total,
                "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "vm_hwm": _vm_hwm(),
            }
        )
    )


def run(args: argparse.Namespace) -> Dict[str, Any]:
    import torch

    with open(args.manifest, "r", encoding="utf-8") as f:
        manifest = json.load(f)
    nbytes = lambda shape, dt: torch.Size(shape).numel() * torch.empty((), dtype=_dtype(dt)).element_size()  # noqa
    state_bytes = sum(nbytes(s, dt) for s, dt in manifest.values())
    trainable = sum(torch.Size(s).numel() for k, (s, _) in manifest.items() if k.startswith(TRAINABLE_PREFIXES))
    free = shutil.disk_usage(args.dir).free
    opt = args.optimizer_dtype
    if opt == "auto":
        opt = "fp32" if (state_bytes + 8 * trainable) * DISK_MARGIN < free else "fp16"
    need = state_bytes + (8 if opt == "fp32" else 4) * trainable
    if need * DISK_MARGIN > free:
        raise SystemExit(f"not enough disk in {args.dir}: need {need / 1e9:.1f} GB, {free / 1e9:.1f} GB free")
    print(f"[load-memory] writing a synthetic {need / 1e9:.1f} GB checkpoint (optimizer state {opt}) to {args.dir}")
    tmp = tempfile.mkdtemp(prefix="zeronvs-load-memory-", dir=args.dir)
    try:
        path = os.path.join(tmp, "zeronvs.ckpt")
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), HF_HUB_OFFLINE="1")
        t0 = time.perf_counter()
        # written in a subprocess: on Linux a child's ru_maxrss starts at its parent's peak
        subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--write", path, args.manifest, opt],
            check=True,
            env=env,
            cwd=ROOT,
        )
        size = os.path.getsize(path)
        write_s = time.perf_counter() - t0
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--child", path, args.config],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"loader subprocess failed:\n{proc.stderr[-4000:]}")
        child = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    gb = lambda b: round(b / 1e9, 3)  # noqa: E731
    result = {
        "checkpoint_gb": gb(size),
        "optimizer_state_dtype": opt,
        "write_s": round(write_s, 1),
        "load_s": round(child["load_s"], 2),
        "touch_all_weights_s": round(child["touch_s"], 2),
        "weights_kept_gb": gb(child["weights_kept"]),
        "baseline_rss_gb": gb(child["baseline_rss"]),
        "rss_after_load_gb": gb(child["rss_after_load"]),
        "peak_rss_gb": gb(child["peak_rss"]),
        "ru_maxrss_gb": gb(child["ru_maxrss"]),
        "vm_hwm_gb": gb(child["vm_hwm"]),
        "peak_rss_over_weights": round(child["peak_rss"] / child["weights_kept"], 3),
        "peak_rss_minus_baseline_over_weights": round(
            (child["peak_rss"] - child["baseline_rss"]) / child["weights_kept"], 3
        ),
    }
    print(
        f"[load-memory] checkpoint {result['checkpoint_gb']} GB; load {result['load_s']}s "
        f"(+{result['touch_all_weights_s']}s to page every weight in); weights kept {result['weights_kept_gb']} GB; "
        f"peak RSS {result['peak_rss_gb']} GB = {result['peak_rss_over_weights']}× weights "
        f"(imports alone {result['baseline_rss_gb']} GB)"
    )
    return result


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 5 and sys.argv[1] == "--write":
        with open(sys.argv[3], "r", encoding="utf-8") as f:
            _write_checkpoint(sys.argv[2], json.load(f), sys.argv[4])
    else:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        add_arguments(parser)
        print(json.dumps(run(parser.parse_args()), indent=2))
