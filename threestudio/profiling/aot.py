"""Ahead-of-time compilation of the Triton kernels for CUDA GPUs, on a machine without one.

A launch recorded by :func:`threestudio.profiling.step_trace.record_triton_launches` (kernel, every argument by name:
tensors as dtype + 16-byte alignment, numbers as values, compile-time constants) is bound by Triton's own launcher
code (the binder a ``kernel[grid](...)`` call uses, for the chosen target's backend), so the signature, the
constants and the specialisations (integers equal to 1, divisible by 16, aligned pointers) are those a real launch
on that GPU would compile. :func:`compile_launch` then runs ``triton.compile`` to PTX and cubin with the Triton
wheel's bundled ``ptxas``, and :func:`resource_usage` reads registers, shared, local memory and stack of the cubin
with the bundled ``cuobjdump --dump-resource-usage`` (local memory or stack > 0 means register spills).

The interpreter (``TRITON_INTERPRET=1``, the tests' default) replaces ``@triton.jit`` functions at import time, so
compile in a process without it (``tests/test_triton_aot.py`` starts one). This module imports Triton.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import tempfile
from typing import Any, Dict, Iterable, List

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import JITFunction, MockTensor, create_function_from_signature

# sm_80 = A100, sm_90 = H100/H200; warp size 32
TARGETS = {"sm_80": GPUTarget("cuda", 80, 32), "sm_90": GPUTarget("cuda", 90, 32)}


class _UnalignedMockTensor(MockTensor):
    """A tensor argument whose address is not a multiple of 16 (Triton then does not assume the alignment)."""

    @staticmethod
    def data_ptr() -> int:
        return 4


def kernel_function(module: str, name: str) -> JITFunction:
    fn = getattr(importlib.import_module(module), name)
    if not isinstance(fn, JITFunction):
        raise RuntimeError(f"{module}.{name} is a {type(fn).__name__}, not a JITFunction: Triton's interpreter is on "
                           "(TRITON_INTERPRET=1); compile in a process without it")
    return fn


def launched_kernels(modules: Iterable[str]) -> List[str]:
    """``module.name`` of every ``@triton.jit`` function of ``modules`` that no other one calls: the kernels that
    launches start (the others are inlined into them)."""
    roots = []
    for module_name in modules:
        module = importlib.import_module(module_name)
        jitted = {name: fn for name, fn in vars(module).items() if isinstance(fn, JITFunction)}
        called = {name for fn in jitted.values() for name in fn.fn.__code__.co_names}
        roots += [f"{module_name}.{name}" for name in jitted if name not in called]
    return sorted(roots)


def _arguments(launch: Dict[str, Any]) -> Dict[str, Any]:
    args = {}
    for name, value in launch["args"].items():
        if isinstance(value, dict):  # a tensor: what the binder reads of it (dtype, address alignment)
            mock = MockTensor if value["aligned16"] else _UnalignedMockTensor
            args[name] = mock(getattr(torch, value["tensor"]), value.get("shape"))
        else:
            args[name] = value
    return args


def compile_launch(launch: Dict[str, Any], target: GPUTarget) -> Any:
    """The ``CompiledKernel`` (``.asm["ptx"]``, ``.asm["cubin"]``, ``.metadata``) a launch like ``launch`` would
    compile on ``target``."""
    fn = kernel_function(launch["module"], launch["kernel"])
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    args = _arguments(launch)
    bound_args, specialization, options = binder(**args)
    options, signature, constexprs, attrs = fn._pack_args(backend, args, bound_args, specialization, options)
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)


def _cuobjdump() -> str:
    from triton import knobs

    path = knobs.nvidia.cuobjdump.path
    if not path or not os.path.isfile(path):
        path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return path


def resource_usage(kernel: Any) -> Dict[str, int]:
    """Registers per thread, shared memory (static + Triton's dynamic), local memory and stack bytes of a compiled
    kernel's cubin (bundled ``cuobjdump --dump-resource-usage``); ``spill_bytes`` = local + stack."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(kernel.asm["cubin"])
        text = subprocess.run([_cuobjdump(), "--dump-resource-usage", path], capture_output=True, text=True,
                              check=True).stdout
    fields = {key: int(value) for key, value in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text)}
    if "REG" not in fields:
        raise RuntimeError(f"cuobjdump printed no resource usage:\n{text}")
    return {"registers": fields["REG"], "shared_bytes": fields.get("SHARED", 0) + int(kernel.metadata.shared),
            "local_bytes": fields.get("LOCAL", 0), "stack_bytes": fields.get("STACK", 0),
            "spill_bytes": fields.get("LOCAL", 0) + fields.get("STACK", 0)}


def distinct_launches(launches: Iterable[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One launch per distinct compilation: the binder's signature, constants and specialisations, per kernel
    (sizes that do not change them are dropped)."""
    distinct: Dict[str, Dict[str, Any]] = {}
    backend = make_backend(TARGETS["sm_90"])
    for launch in launches:
        fn = kernel_function(launch["module"], launch["kernel"])
        binder = create_function_from_signature(fn.signature, fn.params, backend)
        _, specialization, _ = binder(**_arguments(launch))
        key = repr((launch["module"], launch["kernel"], specialization))
        distinct.setdefault(key, launch)
    return list(distinct.values())


def compile_all(launches: Iterable[Dict[str, Any]], targets: Iterable[str] = tuple(TARGETS)) -> List[Dict[str, Any]]:
    """Compile every distinct launch for every target; one row per (launch, target) with the kernel, its
    compile-time constants, the target and :func:`resource_usage` (or the error)."""
    rows = []
    for launch in distinct_launches(launches):
        fn = kernel_function(launch["module"], launch["kernel"])
        constants = {k: v for k, v in launch["args"].items() if k in {p.name for p in fn.params if p.is_constexpr}}
        for target in targets:
            row = {"kernel": launch["kernel"], "target": target, "constexprs": constants}
            try:
                row.update(resource_usage(compile_launch(launch, TARGETS[target])))
            except Exception as e:  # reported per launch: the caller fails on any
                row["error"] = f"{type(e).__name__}: {str(e)[:2000]}"
            rows.append(row)
    return rows
