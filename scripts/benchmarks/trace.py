"""Trace one training step of a pipeline config on fake CUDA tensors: device errors, FLOPs, memory, roofline floor.

Not a GPU measurement: nothing runs on a GPU and nothing is timed. The real system of ``--config`` (default
configs/zeronvs.yaml) is built with full-size random diffusion weights (``--model-config``) on fake CUDA tensors
(:mod:`threestudio.profiling.step_trace`; on a CPU build of torch the stand-in of
:mod:`threestudio.profiling.fake_cuda`, compiled at the first run) and runs one whole step at the start of ``--stage``
(render the random views, VAE encode, UNet CFG, SDS + reference + regulariser losses, backward, optimizer) with the
config's ``trainer.precision`` (16-mixed: CUDA autocast in fp16). Triton kernels are not launched: their launches are
recorded (``triton``), their outputs' memory is counted as allocated by the launchers, their traffic from their
arguments' shapes.

Reported per part (render, vae_encode, unet_cfg, other forward, backward:<part>, optimizer) and for the step: the
matmul/conv FLOPs, the traffic of an eager execution, the peak of live CUDA memory (GiB), the kernel launches (ATen
operators that launch a kernel + Triton launches), the Python frames of host work (counted with sys.setprofile, not
timed), the roofline, the launch bound (launches × 5 us) and the floor max(roofline, launch bound) per part, summed,
on an H100 and an A100 (threestudio.profiling.step_trace.DEVICES). Host read-backs and device mismatches are errors:
they are listed with their source line and the command exits 1. The optimizer's state exists before the traced step
(as from the second step on); Lightning's GradScaler (16-mixed) is not part of the step traced here.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
from typing import Any, Dict

from benchmarks.sds import _default_model_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FORWARD_PARTS = {("renderer", "forward"): "render", ("guidance", "encode_rgb"): "vae_encode",
                 ("guidance", "sds_grad"): "unet_cfg"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "zeronvs.yaml"))
    parser.add_argument("--model-config", default=None,
                        help="latent-diffusion YAML for the random weights (default: ./zeronvs_config.yaml, else "
                        "../shared/fixtures/zeronvs_config.yaml)")
    parser.add_argument("--stage", type=int, default=1,
                        help="resolution stage (1 = from step 0, 2 = from the first resolution milestone, ...)")
    parser.add_argument("--fast-paths", choices=["auto", "off"], default=None,
                        help="system.fast_paths (default: the config's); auto uses the Triton kernels on CUDA")
    parser.add_argument("--launches", action="store_true",
                        help="list every distinct Triton launch (kernel, arguments) in the result")
    parser.add_argument("--aot", default=None, metavar="sm_80,sm_90",
                        help="also compile every distinct Triton launch of the step ahead of time for these targets "
                        "(PTX + cubin, bundled ptxas) and list registers / shared memory / spills per kernel")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")


def before_torch(args: argparse.Namespace) -> None:
    """Install the fake-CUDA stand-in (it must be loaded before ``import torch``)."""
    from threestudio.profiling import fake_cuda

    fake_cuda.install()


def _step_of_stage(cfg: Any, stage: int) -> int:
    from threestudio.utils.config import config_to_primitive

    milestones = [0, *config_to_primitive(cfg.data.random_camera).get("resolution_milestones", [])]
    if not 1 <= stage <= len(milestones):
        raise SystemExit(f"--stage must be in 1..{len(milestones)} for this config (resolution_milestones)")
    return int(milestones[stage - 1])


def run(args: argparse.Namespace) -> Dict[str, Any]:
    import logging
    import warnings

    import torch
    from lightning.fabric.utilities.apply_func import move_data_to_device

    import threestudio
    from threestudio.profiling import step_trace
    from threestudio.utils.config import config_to_primitive, load_config

    warnings.filterwarnings("ignore", message=".*self.log.*")
    logging.getLogger("threestudio").setLevel(logging.WARNING)
    overrides = list(args.overrides)
    if args.fast_paths is not None:
        overrides.append(f"system.fast_paths={args.fast_paths}")
    cfg = load_config(args.config, cli_args=[
        *overrides, "system.guidance.pretrained_model_name_or_path=random",
        f"system.guidance.pretrained_config={args.model_config or _default_model_config()}",
    ])
    step = _step_of_stage(cfg, args.stage)
    device = torch.device("cuda", 0)
    precision = str(config_to_primitive(cfg.trainer).get("precision", "32"))
    autocast_dtype = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(precision)

    # the data side runs on the host, as a dataloader's workers would
    datamodule = threestudio.find(cfg.data_type)(cfg.data)
    datamodule.setup("fit")
    dataset = datamodule.train_dataset
    dataset.update_step(0, step)
    host_batch = dataset.make_batch()

    tracer = step_trace.StepTracer("cuda")
    with step_trace.fake_cuda_session(tracer), step_trace.record_triton_launches(tracer):
        system = threestudio.find(cfg.system_type)(cfg.system)
        fast_paths = system.cfg.fast_paths
        kernels = step_trace.trust_triton_kernels(device) if str(fast_paths) != "off" else {}
        system.prepare("train", datamodule)
        system.to(device)
        guidance = system._guidance.to(device)
        system.train()
        proposal_optimizer = getattr(system, "proposal_optimizer", None)
        if proposal_optimizer is not None:  # built in __init__ on the parameters that Module.to replaced here (fake
            proposal_optimizer = system.proposal_optimizer = system._build_proposal_optimizer()  # tensors: new ones)
        opt = system.configure_optimizers()  # after it: the main optimizer leaves the proposal's parameters out
        optimizer = opt["optimizer"] if isinstance(opt, dict) else opt
        _warm_up(system, guidance, [o for o in (optimizer, proposal_optimizer) if o is not None])
        system.set_global_step(step)
        system.do_update_step(0, step)
        for (owner, method), name in FORWARD_PARTS.items():
            tracer.wrap(system.renderer if owner == "renderer" else guidance, method, name)
        batch = move_data_to_device(host_batch, device)
        with tracer.part("other forward"), torch.autocast("cuda", dtype=autocast_dtype or torch.float32,
                                                          enabled=autocast_dtype is not None):
            terms = system.training_losses(batch)
            loss = sum(terms.values())
        tracer.label_backward(loss, "other forward")
        with tracer.part("backward"):
            loss.backward()
        with tracer.part("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if proposal_optimizer is not None:  # its loss's gradient came with the step's one backward above
                proposal_optimizer.step()
                proposal_optimizer.zero_grad(set_to_none=True)
        del loss, terms, batch
    report = tracer.report()
    rc = host_batch["random_camera"]
    result = {
        "note": "a trace on fake CUDA tensors, not a GPU measurement (scripts/benchmarks/trace.py)",
        "config": args.config,
        "stage": args.stage,
        "first_step": step,
        "random_views": int(rc["c2w"].shape[0]),
        "resolution": [int(rc["height"]), int(rc["width"])],
        "precision": precision,
        "fast_paths": str(fast_paths),
        "triton_kernels": kernels,
        "analytic_normal_method": str(system.geometry.cfg.analytic_normal_method),
        "devices": step_trace.DEVICES,
        **report,
        "triton": _launch_summary(tracer.launches),
    }
    if args.launches:
        result["launches"] = _distinct_launches(tracer.launches)
    _print_table(result)
    if args.aot:
        result["aot"] = _compile_ahead_of_time(tracer.launches, args.aot.split(","))
        result["errors"] = result["errors"] + [
            {"kind": "Triton AOT", "where": row["kernel"], "detail": row.get("error", "register spills"),
             "part": row["target"]} for row in result["aot"] if row.get("error") or row.get("spill_bytes")]
    return result


def _compile_ahead_of_time(launches: list, targets: list) -> list:
    """Every distinct launch compiled for every target (threestudio.profiling.aot), printed as a table."""
    from threestudio.kernels import KERNELS
    from threestudio.profiling import aot

    unknown = sorted(set(targets) - set(aot.TARGETS))
    if unknown:
        raise SystemExit(f"--aot targets must be among {', '.join(aot.TARGETS)}, got {', '.join(unknown)}")
    launched = {f"{launch['module']}.{launch['kernel']}" for launch in launches}
    # and the variants of each launch that other configs take (a kernel module's aot_variants, where it has one)
    variants = [v for launch in launches
                for v in getattr(importlib.import_module(launch["module"]), "aot_variants", lambda _: [])(launch)]
    rows = aot.compile_all(launches + variants, targets)
    for kernel in sorted(set(aot.launched_kernels(KERNELS.values())) - launched):
        rows += [{"kernel": kernel, "target": target, "error": "no launch of this step binds this kernel: compile "
                  "it from a step that launches it"} for target in targets]
    print(f"{'kernel':<30}{'target':>8}{'regs':>6}{'shared B':>10}{'spill B':>9}  constexprs")
    for row in rows:
        if "error" in row:
            print(f"{row['kernel']:<30}{row['target']:>8}  ERROR {row['error'][:200]}")
            continue
        print(f"{row['kernel']:<30}{row['target']:>8}{row['registers']:>6}{row['shared_bytes']:>10}"
              f"{row['spill_bytes']:>9}  {row['constexprs']}")
    return rows


def _warm_up(system: Any, guidance: Any, optimizers: list) -> None:
    """What exists from the second step on: the guidance's conditioning embeddings and the optimizers' state."""
    import torch

    guidance.conditioning_bank()
    for optimizer in optimizers:
        with torch.no_grad():
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = torch.zeros_like(p)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def _launch_summary(launches: list) -> Dict[str, Dict[str, Any]]:
    summary: Dict[str, Dict[str, Any]] = {}
    for launch in launches:
        entry = summary.setdefault(launch["kernel"], {"launches": 0, "parts": []})
        entry["launches"] += 1
        if launch["part"] not in entry["parts"]:
            entry["parts"].append(launch["part"])
    return summary


def _distinct_launches(launches: list) -> list:
    """Launches that differ in more than their sizes (tensor shapes, grids), with a count."""
    distinct: Dict[str, Dict[str, Any]] = {}
    for launch in launches:
        key = json.dumps([launch["kernel"], {k: (v["tensor"], v["aligned16"]) if isinstance(v, dict) else v
                                             for k, v in launch["args"].items() if not k.startswith("n_")}])
        entry = distinct.setdefault(key, {**launch, "count": 0})
        entry["count"] += 1
    return list(distinct.values())


def _print_table(result: Dict[str, Any]) -> None:
    print(f"trace (fake CUDA, not a GPU measurement): stage {result['stage']} (step {result['first_step']}), "
          f"{result['random_views']} views at {result['resolution']}, {result['precision']}, fast_paths "
          f"{result['fast_paths']}, normals {result['analytic_normal_method']}")
    print(f"{'part':<24}{'GFLOP':>9}{'traffic GB':>11}{'peak GiB':>9}{'launches':>9}{'py calls':>9}"
          f"{'H100 roofline ms':>17}{'launch ms':>10}{'H100 floor ms':>15}{'A100 floor ms':>15}")
    for name, part in result["parts"].items():
        h100, a100 = part["floor_s"]["H100"], part["floor_s"]["A100"]
        print(f"{name:<24}{part['gflops']:>9.1f}{part['traffic_gb']:>11.2f}{part['peak_gib']:>9.2f}"
              f"{part['launches']:>9}{part['python_calls']:>9}{h100['roofline_s'] * 1e3:>17.1f}"
              f"{h100['launch_s'] * 1e3:>10.1f}{h100['floor_s'] * 1e3:>11.1f} ({h100['bound'][0]})"
              f"{a100['floor_s'] * 1e3:>11.1f} ({a100['bound'][0]})")
    print(f"{'step':<24}{result['gflops']:>9.1f}{result['traffic_gb']:>11.2f}{result['peak_gib']:>9.2f}"
          f"{result['kernel_launches']:>9}{result['python_calls']:>9}{result['roofline_s']['H100'] * 1e3:>17.1f}"
          f"{result['launch_bound_s']['H100'] * 1e3:>10.1f}{result['floor_s']['H100'] * 1e3:>15.1f}"
          f"{result['floor_s']['A100'] * 1e3:>15.1f}")
    print("floor per part = max(roofline, launches x step_trace.LAUNCH_S); bound: c compute, m memory, l launches; "
          "py calls: Python frames of host work (counted, not timed)")
    for error in result["errors"]:
        print(f"ERROR {error['kind']} at {error['where']} [{error['part']}]: {error['detail']}")
