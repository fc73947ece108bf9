"""SDS distillation speed of a pipeline config with random full-size diffusion weights, per stage and per part.

Runs ``--steps`` real training steps (render random views → VAE encode → UNet CFG → SDS + reference + regulariser
losses → backward → optimizer) at the start of each resolution stage of the config, times the parts, renders a few
test views, and extrapolates the whole run (``trainer.max_steps`` steps + validation + test renders). The
extrapolation is labelled as such: only the steps run here are measured. The per-part breakdown synchronises CUDA
around each part; on CUDA the same number of steps is then run again without it, and that plain step time is the
reported ``s_per_step`` (and the extrapolation's). The backend comes from the config: ``system.fast_paths=off``
(an override) times the pure-PyTorch reference, ``auto`` (the paper config's) the Triton kernels on CUDA; the
result lists the kernels that ran (``triton_kernels``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import resource
import time
from collections import defaultdict
from typing import Any, Callable, Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "zeronvs.yaml"))
    parser.add_argument(
        "--model-config",
        default=None,
        help="latent-diffusion YAML for the random weights (default: ./zeronvs_config.yaml, else "
        "../shared/fixtures/zeronvs_config.yaml)",
    )
    parser.add_argument("--steps", type=int, default=None, help="timed steps per stage (default 2 on CPU, 20 on CUDA)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before each stage's timed steps")
    parser.add_argument("--test-views", type=int, default=2, help="test views rendered (extrapolated to all)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value (e.g. data.random_camera.height=64)")


def _default_model_config() -> str:
    for path in (
        os.path.join(ROOT, "zeronvs_config.yaml"),
        os.path.join(ROOT, "..", "shared", "fixtures", "zeronvs_config.yaml"),
    ):
        if os.path.isfile(path):
            return path
    raise SystemExit("pass --model-config: the latent-diffusion YAML of ZeroNVS (zeronvs_config.yaml)")


class PartTimer:
    """Accumulates wall time per named part, synchronising CUDA around each measurement."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self.totals: Dict[str, float] = defaultdict(float)
        self.enabled = True  # off: parts run without synchronisation or timing (the plain step time)

    def sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()

    @contextlib.contextmanager
    def part(self, name: str):
        if not self.enabled:
            yield
            return
        self.sync()
        start = time.perf_counter()
        yield
        self.sync()
        self.totals[name] += time.perf_counter() - start

    def wrap(self, obj: Any, method: str, name: str) -> None:
        original: Callable = getattr(obj, method)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.part(name):
                return original(*args, **kwargs)

        setattr(obj, method, timed)


def _peak_memory_gb(device: Any) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run(args: argparse.Namespace) -> Dict[str, Any]:
    import warnings

    import torch
    from lightning.fabric.utilities.apply_func import move_data_to_device

    warnings.filterwarnings("ignore", message=".*self.log.*")  # no Trainer here: LightningModule.log is a no-op

    import threestudio
    from threestudio.utils import fast_paths
    from threestudio.utils.config import config_to_primitive, load_config

    device = torch.device(
        "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    steps = args.steps or (20 if device.type == "cuda" else 2)
    model_config = args.model_config or _default_model_config()
    cfg = load_config(
        args.config,
        cli_args=[
            *args.overrides,
            "system.guidance.pretrained_model_name_or_path=random",
            f"system.guidance.pretrained_config={model_config}",
        ],
    )
    datamodule = threestudio.find(cfg.data_type)(cfg.data)
    datamodule.setup("fit")
    datamodule.setup("test")
    system = threestudio.find(cfg.system_type)(cfg.system)
    system.prepare("train", datamodule)
    system.to(device)
    guidance = system._guidance.to(device)
    opt = system.configure_optimizers()
    optimizer = opt["optimizer"] if isinstance(opt, dict) else opt
    precision = str(config_to_primitive(cfg.trainer).get("precision", "32"))
    autocast_dtype = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(precision)
    use_autocast = device.type == "cuda" and autocast_dtype is not None
    scaler = torch.amp.GradScaler("cuda", enabled=use_autocast and autocast_dtype == torch.float16)

    timer = PartTimer(device)
    timer.wrap(system.renderer, "forward", "render_forward")
    timer.wrap(guidance, "encode_rgb", "vae_encode")
    timer.wrap(guidance, "sds_grad", "unet_cfg")
    dataset = datamodule.train_dataset
    milestones = [0, *config_to_primitive(cfg.data.random_camera).get("resolution_milestones", [])]
    max_steps = int(config_to_primitive(cfg.trainer).get("max_steps", 1000))

    def one_step(global_step: int) -> None:
        dataset.update_step(0, global_step)
        system.set_global_step(global_step)
        system.do_update_step(0, global_step)  # the guidance too (one of the system's updateable_children)
        batch = move_data_to_device(dataset.make_batch(), device)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=use_autocast):
            terms = system.main_loss_terms(batch)  # loss_proposal goes to the proposal's own optimizer
            loss = sum(terms.values())
        with timer.part("backward"):
            scaler.scale(loss).backward()
        with timer.part("optimizer"):
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
        with timer.part("proposal_update"):  # as on_train_batch_end: its own backward and step, after the main one
            system.step_proposal_optimizer()

    stages: List[Dict[str, Any]] = []
    for stage_index, start in enumerate(milestones):
        if start >= max_steps:
            break
        for i in range(args.warmup):
            one_step(start + i)
        timer.totals.clear()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        timer.sync()
        t0 = time.perf_counter()
        for i in range(steps):
            one_step(start + args.warmup + i)
        timer.sync()
        per_step = (time.perf_counter() - t0) / steps
        parts = {k: v / steps for k, v in timer.totals.items()}
        parts["overhead"] = per_step - sum(parts.values())
        per_step_breakdown = per_step
        if device.type == "cuda":  # the breakdown synchronises around each part: time the plain step as well
            timer.enabled = False
            t0 = time.perf_counter()
            for i in range(steps):
                one_step(start + args.warmup + steps + i)
            timer.sync()
            per_step = (time.perf_counter() - t0) / steps
            timer.enabled = True
        batch = dataset.make_batch()
        rc = batch["random_camera"]
        stage = {
            "stage": stage_index,
            "first_step": start,
            "steps_timed": steps,
            "random_views": int(rc["c2w"].shape[0]),
            "resolution": [int(rc["height"]), int(rc["width"])],
            "s_per_step": per_step,
            "s_per_step_with_breakdown_syncs": per_step_breakdown,
            "it_per_s": 1.0 / per_step,
            "breakdown_s": parts,
            "peak_memory_gb": _peak_memory_gb(device),
            "peak_memory_kind": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "process ru_maxrss",
        }
        stages.append(stage)
        print(
            f"stage {stage_index} (from step {start}): {per_step:.3f} s/step ({1.0 / per_step:.2f} it/s; "
            f"{per_step_breakdown:.3f} s/step with the breakdown's syncs), peak "
            f"{stage['peak_memory_gb']:.2f} GB ({stage['peak_memory_kind']}), parts "
            + ", ".join(f"{k} {v:.3f}" for k, v in parts.items())
        )

    system.eval()
    test_loader = datamodule.test_dataloader()
    n_test = len(test_loader.dataset) if hasattr(test_loader, "dataset") else args.test_views
    timer.sync()
    t0 = time.perf_counter()
    with torch.no_grad():  # as Lightning's test loop (analytic normals switch autograd on locally)
        for i, batch in enumerate(test_loader):
            if i >= args.test_views:
                break
            system(move_data_to_device(batch, device))
    timer.sync()
    per_view = (time.perf_counter() - t0) / max(1, min(args.test_views, n_test))
    val_every = config_to_primitive(cfg.trainer).get("val_check_interval", max_steps) or max_steps
    n_val = int(config_to_primitive(cfg.data.random_camera).get("n_val_views", 0))
    n_validations = max_steps // int(val_every) if isinstance(val_every, int) else 0

    bounds = [*(s["first_step"] for s in stages), max_steps]
    train_total = sum(s["s_per_step"] * (bounds[i + 1] - bounds[i]) for i, s in enumerate(stages))
    renders_total = per_view * (n_test + n_validations * n_val)
    result = {
        "config": args.config,
        "device": str(device),
        "precision": precision if device.type == "cuda" else "32-true",
        "fast_paths": system.cfg.fast_paths,
        "triton_kernels": fast_paths.triton_kernel_status(),
        "stages": stages,
        "test_render_s_per_view": per_view,
        "extrapolated": {
            "note": "extrapolated from the timed steps above, not measured end to end",
            "max_steps": max_steps,
            "train_s": train_total,
            "val_and_test_renders_s": renders_total,
            "total_min": (train_total + renders_total) / 60,
        },
    }
    print(f"extrapolated {max_steps}-step run: {result['extrapolated']['total_min']:.1f} min (not measured end to end)")
    return result
