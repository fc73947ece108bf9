"""Trace a training step on fake CUDA tensors: device errors, FLOPs, live memory and a roofline floor per part.

Nothing here measures a GPU. A step runs under :class:`~torch._subclasses.fake_tensor.FakeTensorMode` with every
module and batch on ``cuda`` (on a CPU build of torch through :mod:`threestudio.profiling.fake_cuda`): each operator
computes only the shapes, dtypes and devices of its outputs, with CUDA's autocast rules, so a full-size model and a
paper-sized step cost seconds of Python and no memory. :class:`StepTracer` (a ``TorchDispatchMode`` inside the fake
mode) sees every operator of the forward, the backward and the optimizer and records:

- **errors**: a CUDA tensor read back by the host (``.item()``, ``bool()``, ``.cpu()`` ...: a synchronisation on a
  GPU) and operators that mix devices, each with the project's source line;
- **matmul/conv FLOPs** (:data:`torch.utils.flop_counter.flop_registry`), by the precision they would run in;
- **traffic** of an eager (unfused) execution: every operator that is not a view reads its tensor inputs and writes
  its outputs once; Triton launches (not executed: :func:`record_triton_launches`) read and write their tensor
  arguments once, the hash-grid table counted as the rows its points gather;
- **live memory**: the bytes of every CUDA storage from its creation until Python lets go of it (weak references
  to the storages), i.e. what ``torch.cuda.memory_allocated`` would show without the caching allocator's rounding,
  cuBLAS/cuDNN workspaces and fragmentation; the peak is taken per part and over the step;
- **kernel launches**: every ATen operator on the device that launches a kernel (not a view, not an allocation or
  other metadata-only operator: :data:`_NO_LAUNCH`) counts one, each Triton launch one. Approximations: a cuBLAS
  call counted as one kernel (split-K may add one), a ``_foreach_*`` operator as one (CUDA's multi-tensor apply
  launches one per chunk of tensors);
- **host Python work**: the Python frames (function calls) the step runs outside the operators themselves, counted
  with :func:`sys.setprofile` — the project's code, ``nn.Module``/``torch.nn.functional``, autograd Functions, the
  optimizer's Python, autocast — and not the fake-tensor machinery, the dispatch inside the operators or this
  tracer. A count, not a time: the trace's own wall time is dominated by the fake tensors.

Parts are named by the caller (:meth:`StepTracer.part`, :meth:`StepTracer.wrap`); the backward is split by the part
whose forward created each autograd node (``backward:<part>``). :func:`roofline` turns a part's FLOPs and bytes into
the time floor on the devices of :data:`DEVICES`: the larger of the roofline (FLOPs, bytes) and the launch bound
(launches × the per-launch host cost).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
import traceback
import weakref
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

GIB = 2**30

# Datasheet peaks (dense, no sparsity) of the SXM parts: HBM bandwidth (bytes/s) and FLOP/s by the precision an
# operator runs in ("tensor": fp16/bf16 tensor cores; "tf32": fp32 convolutions, cuDNN's default; "fp32": fp32
# matmuls, PyTorch's default without TF32). docs/PERFORMANCE.md states them.
# "launch": seconds of host work per kernel launch, the floor of a step made of many small kernels launched one by
# one from eager PyTorch: the CUDA driver's launch alone is ~2-4 us (NVIDIA Technical Blog, "Getting Started with
# CUDA Graphs", 2019: 3.8 us per launch back to back vs 2.9 us in a graph, V100) and PyTorch's dispatcher adds its
# own per operator; 5 us is the round figure of issue 30 for both parts (a host-side cost: the GPU does not matter).
LAUNCH_S = 5e-6
DEVICES: Dict[str, Dict[str, float]] = {
    "H100": {"bandwidth": 3.35e12, "tensor": 989e12, "tf32": 494e12, "fp32": 67e12, "launch": LAUNCH_S},
    "A100": {"bandwidth": 2.039e12, "tensor": 312e12, "tf32": 156e12, "fp32": 19.5e12, "launch": LAUNCH_S},
}
PRECISIONS = ("tensor", "tf32", "fp32")

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_aten = torch.ops.aten
# operators that move no data (metadata, aliasing) beyond what func.is_view already says
_NO_TRAFFIC = {_aten.detach.default, _aten.empty.memory_format, _aten.empty_strided.default, _aten.lift_fresh.default,
               _aten.alias.default, _aten._local_scalar_dense.default, _aten._unsafe_view.default}
# operators that launch no kernel: those above and allocations / metadata changes
_NO_LAUNCH = _NO_TRAFFIC | {_aten.empty_like.default, _aten.new_empty.default, _aten.new_empty_strided.default,
                            _aten.resize_.default, _aten.set_.source_Storage_storage_offset, _aten.set_.source_Tensor}
# Python code whose frames are not host work of the step: the fake tensors, the Python dispatch that a dispatch
# mode adds in front of every operator (rule look-ups, compile-stance checks) and this package (the tracer)
_TORCH_DIR = os.path.dirname(torch.__file__)
_NOT_HOST_CODE = (
    *(os.path.join(_TORCH_DIR, sub) + os.sep for sub in ("_subclasses", "_library", "_dynamo", "compiler")),
    *(os.path.join(_TORCH_DIR, *f) for f in (("_compile.py",), ("_ops.py",), ("utils", "_python_dispatch.py"))),
    os.path.dirname(os.path.abspath(__file__)) + os.sep,
)


@dataclass
class PartStats:
    """What one part of the step did: FLOPs by precision, bytes moved, operators, kernel launches (ATen + Triton),
    Triton launches, Python frames of host work, peak live bytes."""

    flops: Dict[str, float] = field(default_factory=lambda: dict.fromkeys(PRECISIONS, 0.0))
    bytes: float = 0.0
    ops: int = 0
    launches: int = 0
    python_calls: int = 0
    triton_launches: int = 0
    triton_bytes: float = 0.0
    peak_bytes: int = 0
    op_bytes: Dict[str, float] = field(default_factory=lambda: defaultdict(float))
    op_launches: Dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def as_dict(self) -> Dict[str, Any]:
        return {
            "flops": dict(self.flops),
            "gflops": sum(self.flops.values()) / 1e9,
            "traffic_gb": self.bytes / 1e9,
            "ops": self.ops,
            "launches": self.launches,
            "python_calls": self.python_calls,
            "triton_launches": self.triton_launches,
            "triton_traffic_gb": self.triton_bytes / 1e9,
            "peak_gib": self.peak_bytes / GIB,
            "floor_s": roofline(self.flops, self.bytes, self.launches),
            "top_traffic_gb": {k: v / 1e9 for k, v in sorted(self.op_bytes.items(), key=lambda kv: -kv[1])[:6]},
            "top_launches": dict(sorted(self.op_launches.items(), key=lambda kv: -kv[1])[:8]),
        }


def roofline(flops: Dict[str, float], traffic: float, launches: int = 0) -> Dict[str, Dict[str, Any]]:
    """Per device of :data:`DEVICES`: compute time (FLOPs / peak of their precision), memory time (bytes /
    bandwidth), the roofline max(compute, memory), the launch bound (launches × the per-launch host cost), the floor
    max(roofline, launch bound) in seconds and which of the three bounds it."""
    out = {}
    for name, peaks in DEVICES.items():
        bounds = {"compute": sum(flops.get(p, 0.0) / peaks[p] for p in PRECISIONS),
                  "memory": traffic / peaks["bandwidth"], "launch": launches * peaks["launch"]}
        out[name] = {"compute_s": bounds["compute"], "memory_s": bounds["memory"], "launch_s": bounds["launch"],
                     "roofline_s": max(bounds["compute"], bounds["memory"]), "floor_s": max(bounds.values()),
                     "bound": max(bounds, key=bounds.get)}
    return out


def _project_line() -> str:
    """The innermost frame of the project's code (not this module) on the current stack, as ``path:line (fn)``."""
    for frame in reversed(traceback.extract_stack()):
        path = os.path.abspath(frame.filename)
        if path.startswith(_REPO_ROOT) and path != os.path.abspath(__file__):
            return f"{os.path.relpath(path, _REPO_ROOT)}:{frame.lineno} ({frame.name})"
    return "(outside the project)"


def _tensors(tree: Any) -> List[Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, Tensor)]


def _bytes_of(t: Tensor) -> int:
    """Bytes an operator touches in t: its elements, at most its storage (expanded tensors repeat elements)."""
    try:
        return min(t.numel() * t.element_size(), t.untyped_storage().nbytes())
    except (RuntimeError, NotImplementedError):
        return t.numel() * t.element_size()


class _Part:
    """The context manager of :meth:`StepTracer.part`."""

    def __init__(self, tracer: "StepTracer", name: str) -> None:
        self.tracer, self.name, self.previous = tracer, name, None

    def __enter__(self) -> None:
        tracer = self.tracer
        self.previous, tracer.current = tracer.current, self.name
        tracer.parts[self.name].peak_bytes = max(tracer.parts[self.name].peak_bytes, tracer.live)

    def __exit__(self, *exc: Any) -> None:
        self.tracer.current = self.previous


class StepTracer(TorchDispatchMode):
    """Records device errors, FLOPs, traffic and live memory of everything run under it (module docstring).

    Use inside a fake mode whose tensors sit on ``device_type``; only storages on that device are counted."""

    def __init__(self, device_type: str = "cuda") -> None:
        super().__init__()
        self.device_type = device_type
        self.live = 0
        self.peak = 0
        self._storages: Dict[int, tuple] = {}
        self.current = "setup"
        self._op = "(tensor from outside)"
        self.parts: Dict[str, PartStats] = defaultdict(PartStats)
        self.errors: List[Dict[str, str]] = []
        self.warnings: List[Dict[str, str]] = []
        self.launches: List[Dict[str, Any]] = []
        self._node_parts: Dict[int, str] = {}
        self.at_peak: Dict[str, float] = {}  # live GiB at the peak by (part, operator) that allocated it
        self._snapshot_peak = 0
        self._hooked: List[Any] = []
        self._dispatch_depth = 0
        self._import_depth = 0
        self._host_code: Dict[Any, bool] = {}  # code object -> whether its frames count as host work
        self._profiled_threads: set = set()

    # ------------------------------------------------------------------ parts
    def part(self, name: str) -> "_Part":
        """Attribute what runs inside to part ``name`` (parts nest: the innermost wins). A context manager of this
        module, not ``contextlib``'s, so that its frames are not counted as the step's host work."""
        return _Part(self, name)

    def wrap(self, obj: Any, method: str, name: str) -> None:
        """Run ``obj.method`` as part ``name``; the autograd nodes its outputs hang on get ``backward:name``."""
        original: Callable = getattr(obj, method)

        @functools.wraps(original)
        def traced(*args: Any, **kwargs: Any) -> Any:
            with self.part(name):
                result = original(*args, **kwargs)
            self.label_backward(result, name)
            return result

        setattr(obj, method, traced)

    def label_backward(self, outputs: Any, name: str) -> None:
        """Give every autograd node reachable from ``outputs`` and not labelled yet the part ``backward:name``: the
        backward then runs those nodes as that part."""
        stack = [t.grad_fn for t in _tensors(outputs) if t.grad_fn is not None]
        while stack:
            node = stack.pop()
            if node is None or id(node) in self._node_parts:
                continue
            self._node_parts[id(node)] = f"backward:{name}"
            self._hooked.append(node)  # keeps the id valid while the trace lives
            node.register_prehook(functools.partial(self._enter_backward_part, f"backward:{name}"))
            stack.extend(next_node for next_node, _ in node.next_functions)

    def _enter_backward_part(self, name: str, grad_outputs: Any) -> None:
        self._profile_this_thread()  # the autograd engine may run the backward on its own device thread
        self.current = name
        self.parts[name].peak_bytes = max(self.parts[name].peak_bytes, self.live)

    # ------------------------------------------------------------------ host Python work
    def __enter__(self) -> "StepTracer":
        result = super().__enter__()
        self._profile_this_thread()
        return result

    def __exit__(self, *exc: Any) -> Any:
        sys.setprofile(None)
        self._profiled_threads.clear()  # other threads' hooks remove themselves at their next call
        return super().__exit__(*exc)

    def _profile_this_thread(self) -> None:
        ident = threading.get_ident()
        if ident not in self._profiled_threads:
            self._profiled_threads.add(ident)
            sys.setprofile(self._count_call)

    def _count_call(self, frame: Any, event: str, _arg: Any) -> None:
        """sys.setprofile hook: a Python function call outside the operators' dispatch, outside imports and outside
        the fake-tensor and tracer code counts as one frame of host work of the current part."""
        if not self._profiled_threads:
            sys.setprofile(None)
            return
        code = frame.f_code
        if code.co_name == "_find_and_load" and code.co_filename.startswith("<frozen importlib"):
            self._import_depth += {"call": 1, "return": -1}.get(event, 0)  # an import: once per process, not per step
            return
        if event != "call" or self._dispatch_depth or self._import_depth:
            return
        caller = frame.f_back  # what the tracer itself calls (a part's PartStats, ...) is not the step's either
        if self._is_host_code(code) and (caller is None or self._is_host_code(caller.f_code)):
            self.parts[self.current].python_calls += 1

    def _is_host_code(self, code: Any) -> bool:
        host = self._host_code.get(code)
        if host is None:
            host = self._host_code[code] = not os.path.abspath(code.co_filename).startswith(_NOT_HOST_CODE)
        return host

    # ------------------------------------------------------------------ memory
    def track(self, tensor: Tensor) -> None:
        """Count ``tensor``'s storage as live until it is freed (once per storage)."""
        if tensor.device.type != self.device_type:
            return
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self._storages:
            return
        nbytes = storage.nbytes()
        origin = f"{self.current}: {self._op}"
        self._storages[key] = (nbytes, weakref.ref(storage, functools.partial(self._freed, key)), origin)
        self.live += nbytes
        if self.live > self.peak:
            self.peak = self.live
            if self.peak > self._snapshot_peak * 1.01:
                self._snapshot()
        stats = self.parts[self.current]
        stats.peak_bytes = max(stats.peak_bytes, self.live)

    def _freed(self, key: int, _ref: Any) -> None:
        nbytes = self._storages.pop(key, (0, None, None))[0]
        self.live -= nbytes

    def _snapshot(self) -> None:
        """Remember what is live now (the largest groups by allocating part and operator)."""
        groups: Dict[str, float] = defaultdict(float)
        for nbytes, _, origin in self._storages.values():
            groups[origin] += nbytes / GIB
        self.at_peak = dict(sorted(groups.items(), key=lambda kv: -kv[1])[:12])
        self._snapshot_peak = self.peak

    def track_all(self, tensors: Sequence[Tensor]) -> None:
        for t in tensors:
            self.track(t)

    # ------------------------------------------------------------------ errors
    def error(self, kind: str, detail: str) -> None:
        self.errors.append({"kind": kind, "where": _project_line(), "detail": detail, "part": self.current})

    def _on_device(self, t: Any) -> bool:
        return isinstance(t, Tensor) and t.device.type == self.device_type

    # ------------------------------------------------------------------ operators
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: D105
        self._dispatch_depth += 1
        try:
            return self._dispatch(func, args, kwargs or {})
        finally:
            self._dispatch_depth -= 1

    def _dispatch(self, func, args, kwargs):
        if func is _aten._local_scalar_dense.default:
            return self._scalar(func, args)
        if func in (_aten._to_copy.default, _aten.copy_.default) and self._reads_back(func, args, kwargs):
            self.error("host read-back", f"{func} copies a {self.device_type} tensor to the host (a device sync)")
        try:
            out = func(*args, **kwargs)
        except RuntimeError as e:
            if "device" in str(e).lower():
                self.error("device mismatch", f"{func}: {str(e).splitlines()[0]}")
            raise
        self._op = func.__name__
        self._account(func, args, kwargs, out)
        self._op = "(tensor from outside)"
        return out

    def _scalar(self, func, args):
        (t,) = args
        if self._on_device(t):
            self.error("host read-back", f"a Python number of a {self.device_type} tensor (.item(), bool(), "
                       "float(), int(), if-tensor): the host waits for the device")
            return False if t.dtype == torch.bool else 0
        try:
            return func(t)
        except Exception as e:  # a data-dependent host value fake tensors cannot know
            self.warnings.append({"kind": "host value unknown to the trace", "where": _project_line(),
                                  "detail": f"{type(e).__name__}; used 0", "part": self.current})
            return False if t.dtype == torch.bool else 0

    def _reads_back(self, func, args, kwargs) -> bool:
        if func is _aten.copy_.default:
            dst, src = args[0], args[1]
            return self._on_device(src) and isinstance(dst, Tensor) and dst.device.type == "cpu"
        target = kwargs.get("device")
        return self._on_device(args[0]) and target is not None and torch.device(target).type == "cpu"

    def _account(self, func, args, kwargs, out) -> None:
        stats = self.parts[self.current]
        stats.ops += 1
        inputs = [t for t in _tensors((args, kwargs)) if self._on_device(t)]
        outputs = [t for t in _tensors(out) if self._on_device(t)]
        if func.namespace == "aten" and not (func.is_view or func in _NO_TRAFFIC):
            seen, moved = set(), 0
            for t in inputs + outputs:
                key = t.untyped_storage()._cdata
                if key not in seen:
                    seen.add(key)
                    moved += _bytes_of(t)
            stats.bytes += moved
            stats.op_bytes[func.__name__] += moved
        if func.namespace == "aten" and not (func.is_view or func in _NO_LAUNCH) and (inputs or outputs):
            stats.launches += 1
            stats.op_launches[func.__name__] += 1
        packet = func._overloadpacket
        if packet in _flop_registry():
            flops = _flop_registry()[packet](*args, **kwargs, out_val=out)
            stats.flops[_precision(func, inputs)] += float(flops)
        self.track_all(outputs)

    # ------------------------------------------------------------------ report
    def report(self) -> Dict[str, Any]:
        parts = {name: stats.as_dict() for name, stats in self.parts.items()}
        step_parts = {k: v for k, v in parts.items() if k != "setup"}
        flops = {p: sum(s["flops"][p] for s in step_parts.values()) for p in PRECISIONS}
        def total(key: str) -> Dict[str, float]:
            return {dev: sum(s["floor_s"][dev][key] for s in step_parts.values()) for dev in DEVICES}

        return {
            "peak_gib": self.peak / GIB,
            "setup_gib": self.parts["setup"].peak_bytes / GIB if "setup" in self.parts else 0.0,
            "gflops": sum(flops.values()) / 1e9,
            "traffic_gb": sum(s["traffic_gb"] for s in step_parts.values()),
            "kernel_launches": sum(s["launches"] for s in step_parts.values()),
            "python_calls": sum(s["python_calls"] for s in step_parts.values()),
            # per part max(roofline, launch bound), summed; and each bound alone summed over the parts
            "floor_s": total("floor_s"),
            "roofline_s": total("roofline_s"),
            "launch_bound_s": total("launch_s"),
            "live_at_peak_gib": self.at_peak,
            "parts": parts,
            "errors": self.errors,
            "warnings": self.warnings,
        }


@functools.lru_cache(maxsize=1)
def _flop_registry() -> Dict[Any, Callable]:
    from torch.utils.flop_counter import flop_registry

    return flop_registry


def _precision(func, inputs: List[Tensor]) -> str:
    dtype = inputs[0].dtype if inputs else torch.float32
    if dtype in (torch.float16, torch.bfloat16):
        return "tensor"
    if "convolution" in func.__name__:
        return "tf32" if torch.backends.cudnn.allow_tf32 else "fp32"
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32"


# ---------------------------------------------------------------------- Triton launches (recorded, not run)
def _launch_traffic(kernel_name: str, named: Dict[str, Any]) -> float:
    """Bytes a launch moves: each distinct tensor argument read or written once (a tensor passed again as an
    unused placeholder counts once), except the hash-grid tables of the kernels that gather them (``N_CORNERS``
    among their constants: the hash grid's and the fused field's), of which only the rows gathered by their points'
    cell corners count: ``table_ptr`` read (``BACKWARD``: atomically added, read + write), ``grad_table_ptr``
    atomically added."""
    total = 0.0
    seen = set()
    for name, value in named.items():
        if not isinstance(value, Tensor) or id(value) in seen:
            continue
        seen.add(id(value))
        if name in ("table_ptr", "grad_table_ptr") and "N_CORNERS" in named:
            rows = named["n_points"] * len(named["scales_ptr"]) * named["N_CORNERS"]
            passes = 2 if named.get("BACKWARD") or name == "grad_table_ptr" else 1  # atomics: read + write
            total += min(rows * named["F"] * value.element_size() * passes, _bytes_of(value) * passes)
        else:
            total += _bytes_of(value)
    return total


def _launch_flops(fn: Any, named: Dict[str, Any]) -> float:
    """FLOPs of a launch, from its module's ``launch_flops(kernel, args)`` when it has one (the fused field's MLPs;
    the other kernels' arithmetic is negligible next to their traffic)."""
    module = sys.modules.get(getattr(fn, "__module__", ""))
    counter = getattr(module, "launch_flops", None)
    return float(counter(fn.__name__, named)) if counter is not None else 0.0


@contextlib.contextmanager
def record_triton_launches(tracer: StepTracer) -> Iterator[None]:
    """Replace Triton kernel launches by a record in ``tracer.launches`` (kernel, grid, every argument by name:
    tensors as dtype/shape/alignment, numbers as values) and their traffic; nothing is compiled or run. The outputs
    were allocated by the launchers (``torch.empty``), so their memory is already counted."""
    import triton.runtime.jit as jit

    classes = [jit.JITFunction]
    try:
        from triton.runtime.interpreter import InterpretedFunction

        classes.append(InterpretedFunction)
    except ImportError:  # pragma: no cover - a Triton without its interpreter
        pass

    def run(self, *args, grid, warmup=False, **kwargs):
        fn = getattr(self, "fn", self)
        names = list(getattr(self, "arg_names", None) or fn.__code__.co_varnames[: fn.__code__.co_argcount])
        named = dict(zip(names, args))
        named.update(kwargs)
        stats = tracer.parts[tracer.current]
        stats.triton_launches += 1
        stats.launches += 1
        stats.op_launches[f"triton:{fn.__name__}"] += 1
        traffic = _launch_traffic(fn.__name__, named)
        stats.flops["fp32"] += _launch_flops(fn, named)  # Triton's fp32 arithmetic (the fused field: ieee dots)
        stats.triton_bytes += traffic
        stats.bytes += traffic
        stats.op_bytes[f"triton:{fn.__name__}"] += traffic
        tracer.launches.append({
            "module": fn.__module__, "kernel": fn.__name__, "part": tracer.current,
            "grid": [int(g) for g in (grid(named) if callable(grid) else grid)],
            "args": {k: _describe_arg(v) for k, v in named.items()},
        })

    originals = [(cls, cls.run) for cls in classes]
    try:
        for cls in classes:
            cls.run = run
        yield
    finally:
        for cls, original in originals:
            cls.run = original


def _describe_arg(value: Any) -> Any:
    if isinstance(value, Tensor):
        offset_bytes = value.storage_offset() * value.element_size()
        return {"tensor": str(value.dtype).replace("torch.", ""), "shape": list(value.shape),
                "aligned16": offset_bytes % 16 == 0}
    if isinstance(value, (bool, int, float)):
        return value
    return repr(value)


# ---------------------------------------------------------------------- the fake-CUDA session
def _apply_to_fake(self: nn.Module, fn: Callable, recurse: bool = True) -> nn.Module:
    """``nn.Module._apply`` for fake tensors: torch's own swaps parameters in place, which fake tensors refuse."""
    if recurse:
        for module in self.children():
            module._apply(fn)
    for key, param in self._parameters.items():
        if param is None:
            continue
        with torch.no_grad():
            applied = fn(param)
        if applied is not param:
            self._parameters[key] = nn.Parameter(applied, requires_grad=param.requires_grad)
    for key, buffer in self._buffers.items():
        if buffer is not None:
            self._buffers[key] = fn(buffer)
    return self


def _sdpa_as_on_gpu(original: Callable) -> Callable:
    """``F.scaled_dot_product_attention`` choosing the fused kernel a GPU would: a CPU build of torch has no CUDA
    backend selection and runs the math path (fp32 upcast, bmm, softmax, bmm: several launches and the attention
    matrix in memory). fp16/bf16 without a mask → flash attention (head dims ≤ 256, multiples of 8: the UNet's
    40/80/160), fp32 without a mask → memory-efficient attention; anything else keeps the original."""

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        fused = (query.device.type == "cuda" and attn_mask is None and not enable_gqa and query.dim() == 4
                 and query.shape[-1] <= 256 and query.shape[-1] % 8 == 0)
        if fused and query.dtype in (torch.float16, torch.bfloat16):
            return _aten._scaled_dot_product_flash_attention(query, key, value, dropout_p, is_causal, scale=scale)[0]
        if fused and query.dtype == torch.float32:
            need_lse = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
            return _aten._scaled_dot_product_efficient_attention(query, key, value, None, need_lse, dropout_p,
                                                                 is_causal, scale=scale)[0]
        return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                        scale=scale, enable_gqa=enable_gqa)

    return sdpa


def _register_cuda_kernels_of_cpu_ops() -> Optional[Any]:
    """On a CPU build of torch: a CUDA kernel for each ATen operator that has a CPU kernel and a
    CompositeImplicitAutograd one (``silu_backward``, ...). A CUDA build has its own CUDA kernel for them; without
    one the dispatcher decomposes them above the tracer into several operators (silu's backward into 7). The
    registered kernel never runs: fake tensors compute the operator on the meta device. Returns the registration
    (``._destroy()`` removes it), None on a CUDA build."""
    from threestudio.profiling import fake_cuda

    if not fake_cuda.is_cpu_only_build():
        return None
    names = [name.split("::", 1)[1] for name in torch._C._dispatch_get_all_op_names() if name.startswith("aten::")
             and torch._C._dispatch_has_kernel_for_dispatch_key(name, "CPU")
             and torch._C._dispatch_has_kernel_for_dispatch_key(name, "CompositeImplicitAutograd")
             and not torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA")]

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a fake-CUDA stand-in kernel ran on real tensors")

    library = torch.library.Library("aten", "IMPL")
    for name in names:
        library.impl(name, unreachable, "CUDA")
    return library


@contextlib.contextmanager
def fake_cuda_session(tracer: Optional[StepTracer] = None) -> Iterator[Any]:
    """Fake tensors on ``cuda`` with CUDA's autocast, ``Module.to`` working on them, the fused attention kernels a
    GPU chooses (:func:`_sdpa_as_on_gpu`), the optimizers' foreach path, single CUDA kernels for operators a CPU
    build decomposes (:func:`_register_cuda_kernels_of_cpu_ops`) and, when ``tracer`` is given, every operator
    traced. Real tensors passed in (data from the host) become fake. Needs
    :func:`threestudio.profiling.fake_cuda.install` before ``import torch`` on a CPU build (for the backward)."""
    import torch.cuda.amp.common as amp_common
    import torch.optim.optimizer as optim_base
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    from threestudio.profiling import fake_cuda

    if not fake_cuda.active():
        raise RuntimeError("fake CUDA is not installed: call threestudio.profiling.fake_cuda.install() before "
                           "`import torch` (python scripts/bench.py trace does)")
    patches = [
        (nn.Module, "_apply", _apply_to_fake),
        (amp_common, "amp_definitely_not_available", lambda: False),  # torch.autocast("cuda") stays enabled
        (torch.cuda, "is_bf16_supported", lambda *a, **k: True),  # the H100/A100 the trace stands for
        (torch.cuda, "current_device", lambda: 0),
        (nn.functional, "scaled_dot_product_attention", _sdpa_as_on_gpu(nn.functional.scaled_dot_product_attention)),
        # optimizers take their multi-tensor (foreach) path on fake CUDA parameters, as on real ones
        (optim_base, "_foreach_supported_types", [*optim_base._foreach_supported_types, FakeTensor]),
    ]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    kernels = _register_cuda_kernels_of_cpu_ops()
    try:
        for obj, name, value in patches:
            setattr(obj, name, value)
        with mode, (tracer if tracer is not None else contextlib.nullcontext()):
            yield mode
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)
        if kernels is not None:
            kernels._destroy()


def trust_triton_kernels(device: Any) -> Dict[str, bool]:
    """Let :func:`threestudio.utils.fast_paths.triton_kernels` choose the Triton kernels on ``device`` without their
    one-time self-check (it compares values, which fake tensors do not have): the trace then takes the path a GPU
    whose self-check passed takes. Returns which kernel modules import (Triton missing: none)."""
    import importlib

    from threestudio.kernels import KERNELS
    from threestudio.utils import fast_paths

    usable = {}
    for name, module_name in KERNELS.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            module = None
        fast_paths._kernel_cache[(name, str(torch.device(device)))] = module
        usable[name] = module is not None
    return usable
