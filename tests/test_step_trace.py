"""The step tracer (threestudio/profiling/step_trace.py, `python scripts/bench.py trace`) and fake CUDA on a CPU
build (threestudio/profiling/fake_cuda.py)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from threestudio.profiling import fake_cuda, step_trace

MIB = 2**20
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("TRITON_INTERPRET", None)  # the trace records launches of the compiled kernels' launchers
    return env


def test_live_memory_flops_and_read_backs_on_known_tensors():
    """The tracer counts each storage once while it lives (views add nothing), the peak, matmul FLOPs, and a
    Python number read from a traced-device tensor as a host read-back with its source line."""
    tracer = step_trace.StepTracer("cpu")
    with tracer:
        with tracer.part("a"):
            x = torch.empty(MIB // 4)  # 1 MiB
            view = x.view(2, -1)  # no new storage
            y = torch.ones(MIB // 2)  # 2 MiB
            assert tracer.live == 3 * MIB and view.shape[0] == 2
        del x, view
        assert tracer.live == 2 * MIB
        with tracer.part("b"):
            m = torch.ones(64, 32) @ torch.ones(32, 16)
            _ = m.sum().item()
    assert tracer.peak >= 3 * MIB
    report = tracer.report()
    assert report["parts"]["a"]["peak_gib"] * 2**30 == 3 * MIB
    assert report["parts"]["b"]["flops"]["fp32"] == 2 * 64 * 32 * 16
    (error,) = report["errors"]
    assert error["kind"] == "host read-back" and error["part"] == "b"
    assert error["where"].startswith("tests/test_step_trace.py:")
    assert report["parts"]["b"]["floor_s"]["H100"]["floor_s"] > 0
    del y, m


def test_roofline_names_the_bound():
    floor = step_trace.roofline({"tensor": 989e12, "tf32": 0.0, "fp32": 0.0}, 3.35e12 / 10)["H100"]
    assert floor["compute_s"] == pytest.approx(1.0) and floor["memory_s"] == pytest.approx(0.1)
    assert floor["bound"] == "compute" and floor["floor_s"] == pytest.approx(1.0)
    assert floor["launch_s"] == 0 and floor["roofline_s"] == floor["floor_s"]


def test_the_launch_bound_takes_over_from_the_roofline():
    """floor = max(roofline, launches × the per-launch cost of DEVICES)."""
    launch = step_trace.DEVICES["H100"]["launch"]
    floor = step_trace.roofline({"tensor": 0.0, "tf32": 0.0, "fp32": 0.0}, 3.35e12 * 1e-3, launches=1000)["H100"]
    assert floor["roofline_s"] == pytest.approx(1e-3) and floor["launch_s"] == pytest.approx(1000 * launch)
    assert floor["bound"] == "launch" and floor["floor_s"] == pytest.approx(max(1e-3, 1000 * launch))
    floor = step_trace.roofline({"tensor": 0.0, "tf32": 0.0, "fp32": 0.0}, 3.35e12 * 1e-3, launches=1)["H100"]
    assert floor["bound"] == "memory" and floor["floor_s"] == pytest.approx(1e-3)


def _twice(t: torch.Tensor) -> torch.Tensor:
    return t * 2


def test_launches_and_python_frames_of_a_known_function():
    """Each ATen operator that launches a kernel counts one (views, allocations and metadata none); each Python call
    of the traced code (not the tracer's own, not the operators' dispatch) one frame of host work."""
    tracer = step_trace.StepTracer("cpu")
    gc.disable()  # no collector-run __del__ inside the parts
    try:
        with tracer:
            with tracer.part("a"):
                x = torch.empty(8)  # allocation: no kernel
                y = x + 1  # add
                z = y.view(2, 4)  # view: no kernel
                w = _twice(_twice(z))  # mul, mul; two Python calls
                s = w.sum()  # sum
                e = torch.empty_like(s)  # allocation: no kernel
            layer = torch.nn.Linear(4, 4)
            with tracer.part("b"):
                out = layer(torch.ones(3, 4))  # ones (fill), addmm
    finally:
        gc.enable()
    parts = tracer.report()["parts"]
    assert parts["a"]["launches"] == 4 and parts["a"]["python_calls"] == 2
    assert parts["b"]["launches"] == 2 and parts["b"]["python_calls"] > 0  # nn.Module's __call__ and forward
    report = tracer.report()
    assert report["kernel_launches"] == 6 and report["python_calls"] == 2 + parts["b"]["python_calls"]
    assert report["launch_bound_s"]["H100"] == pytest.approx(6 * step_trace.DEVICES["H100"]["launch"])
    del e, out


@pytest.mark.skipif(not fake_cuda.is_cpu_only_build(), reason="the stand-in is for CPU builds of torch")
def test_fake_cuda_must_come_before_torch():
    with pytest.raises(fake_cuda.FakeCudaError, match="before `import torch`"):
        fake_cuda.install()


@pytest.mark.slow
def test_fake_cuda_runs_a_backward_and_reports_device_errors():
    """In a fresh process: fake CUDA tensors run forward (fp16 under CUDA autocast), backward and Adam; a CPU tensor
    mixed in and a host read-back are reported with their lines; bf16 attention takes flash attention (one launch)
    as on a GPU, not the CPU build's math path; silu's backward is one kernel, not its decomposition."""
    code = textwrap.dedent("""
        import json
        from threestudio.profiling import fake_cuda
        fake_cuda.install()
        import torch
        from threestudio.profiling import step_trace
        tracer = step_trace.StepTracer("cuda")
        with step_trace.fake_cuda_session(tracer):
            layer = torch.nn.Linear(64, 64).to("cuda")
            opt = torch.optim.Adam(layer.parameters())
            with torch.autocast("cuda", dtype=torch.float16):
                y = layer(torch.randn(8, 64, device="cuda"))
            y.float().sum().backward()
            opt.step()
            q = torch.randn(2, 4, 16, 40, device="cuda", dtype=torch.bfloat16)
            with tracer.part("attention"):
                torch.nn.functional.scaled_dot_product_attention(q, q, q)
            x = torch.randn(8, 8, device="cuda", requires_grad=True)
            with tracer.part("silu"):
                s = torch.nn.functional.silu(x)
            tracer.label_backward(s, "silu")
            s.backward(torch.ones_like(s))
            try:
                y + torch.ones(8, 64)
            except RuntimeError:
                pass
            bool(y.sum() > 0)
        parts = tracer.report()["parts"]
        print(json.dumps({"dtype": str(y.dtype), "grad": str(layer.weight.grad.device), "errors": tracer.errors,
                          "attention": parts["attention"]["top_launches"],
                          "silu_backward": parts["backward:silu"]["top_launches"]}))
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=_env(), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["dtype"] == "torch.float16" and out["grad"] == "cuda:0"
    kinds = [e["kind"] for e in out["errors"]]
    assert kinds == ["device mismatch", "host read-back"], out["errors"]
    assert out["attention"] == {"_scaled_dot_product_flash_attention.default": 1}  # one fused kernel, as on a GPU
    # one kernel, not the CPU build's decomposition (sigmoid, fill, sub, add, mul ×3)
    assert out["silu_backward"]["silu_backward.default"] == 1 and "sigmoid.default" not in out["silu_backward"]


@pytest.mark.slow
def test_trace_of_the_smoke_config(tmp_path):
    """`bench.py trace` on the CPU demo's config: one whole step on fake CUDA with the Triton launches recorded."""
    out = tmp_path / "trace.json"
    result = subprocess.run(
        [sys.executable, "scripts/bench.py", "trace", "--config", "configs/smoke.yaml", "--model-config",
         "configs/diffusion_tiny.yaml", "--fast-paths", "auto", "--launches", "--json", str(out)],
        cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    trace = json.loads(out.read_text())["result"]
    assert trace["errors"] == [] and trace["analytic_normal_method"] == "explicit"
    parts = trace["parts"]
    for name in ("render", "vae_encode", "unet_cfg", "backward:render", "backward:vae_encode", "optimizer"):
        assert name in parts, name
    assert parts["unet_cfg"]["flops"]["tensor"] == 0 and parts["unet_cfg"]["gflops"] > 0  # smoke: fp32, 32-true
    assert trace["peak_gib"] >= max(p["peak_gib"] for p in parts.values()) > parts["setup"]["peak_gib"] > 0
    assert all(trace["floor_s"][device] > 0 for device in step_trace.DEVICES)
    # explicit normals: the geometry runs the fused field (grid + heads) with its normals output, forward and
    # backward; the proposal network's grid the hash-grid kernel; compositing both ways
    field_launches = {(launch["kernel"], launch["args"].get("NORMALS")) for launch in trace["launches"]}
    assert {("_fused_field_kernel", True), ("_fused_field_heads_backward_kernel", True),
            ("_fused_field_levels_backward_kernel", True)} <= field_launches
    grid_launches = [launch for launch in trace["launches"] if launch["kernel"] == "_hash_grid_kernel"]
    assert {(launch["args"]["WITH_JACOBIAN"], launch["args"]["BACKWARD"]) for launch in grid_launches} == {
        (False, False), (False, True)}
    assert {"_weights_kernel", "_weights_backward_kernel", "_accumulate_kernel",
            "_accumulate_backward_kernel"} <= set(trace["triton"])
    # the fused field's MLP FLOPs are counted (fp32), its table traffic as the rows its points gather
    assert parts["render"]["flops"]["fp32"] > 0 and parts["backward:render"]["flops"]["fp32"] > 0
    assert parts["render"]["triton_launches"] > 0 and parts["backward:render"]["triton_launches"] > 0
    # launches: ATen + Triton; the floor is the larger bound per part, summed
    assert parts["render"]["launches"] > parts["render"]["triton_launches"] and parts["render"]["python_calls"] > 0
    assert trace["kernel_launches"] == sum(p["launches"] for name, p in parts.items() if name != "setup")
    for device in step_trace.DEVICES:
        assert trace["floor_s"][device] >= max(trace["roofline_s"][device], trace["launch_bound_s"][device])
