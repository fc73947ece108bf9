#!/usr/bin/env bash
# The prepared GPU check for a lent H100/H200 (no network there): one call runs every benchmark and leaves JSON and
# logs in $OUT. Prepare on the CPU machine first (docs/PERFORMANCE.md, "GPU runs"):
#   .whl/      wheels of the packages the GPU image lacks (diffusers, omegaconf, antlr4-python3-runtime, trimesh)
#   .bench/    zeronvs_config.yaml (the full-size latent-diffusion YAML; ../shared does not travel) and input.png
#              (the example image, so that scikit-image is not needed there)
# then run it with carry [".whl", ".bench"]:  bash scripts/device_bench.sh [STEPS]
#   or, for issue 30's comparison only:         bash scripts/device_bench.sh --speed [STEPS]
# --speed: the paper config (configs/zeronvs.yaml) and the fast preset (configs/zeronvs_fast.yaml) timed per stage
# (bench.py sds, STEPS steps after a warm-up, peak memory) and traced per stage (bench.py trace: roofline, launch
# bound, floor, traced peak), side by side in $OUT/speed_vs_floor.json and a printed table; about 8 minutes.
# Part 1 (at most FIRST_PART_S = 480 s): the CPU demo on CUDA end to end (16-mixed, Triton fast paths, then
# --export), the torch-vs-triton comparison (hash-grid encode at 2^20 samples, NeRF step at the stage-1 ray count)
# and one paper-config SDS step per stage. Part 2: the longer benchmarks, until the call's 10 minutes run out.
# The shipped configs use explicit analytic normals (geometry.analytic_normal_method); the runs marked "autograd"
# measure the previous default beside them, and `bench.py trace` puts the traced numbers (docs/PERFORMANCE.md,
# "Traced step") beside the measured ones.
set -uo pipefail
cd "$(dirname "$0")/.."
SPEED_ONLY=""
if [ "${1:-}" = "--speed" ]; then SPEED_ONLY=1; shift; fi
STEPS="${1:-20}"
OUT="${OUT:-/tmp/device_bench}"
FIRST_PART_S="${FIRST_PART_S:-480}"
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
MODEL_CFG=.bench/zeronvs_config.yaml
IMAGE=skimage:motorcycle_left
[ -f .bench/input.png ] && IMAGE=.bench/input.png
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 - <<'EOF' 2>&1 | tee "$OUT/packages.txt"
import importlib
for name in ("torch", "triton", "lightning", "diffusers", "transformers", "omegaconf", "trimesh", "imageio",
             "imageio_ffmpeg", "skimage"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except Exception as e:
        print(name, "MISSING", type(e).__name__, e)
EOF

# ---- issue 30: measured s/step per stage of both configs beside the traced floors (H100 constants)
speed_vs_floor() {
  local name cfg stage
  for name in zeronvs zeronvs_fast; do
    cfg="configs/$name.yaml"
    echo "== [${SECONDS}s] sds $cfg"
    timeout 200 python3 scripts/bench.py sds --config "$cfg" --model-config "$MODEL_CFG" --steps "$STEPS" \
      --test-views 1 --json "$OUT/speed_sds_$name.json" data.image_path="$IMAGE" 2>&1 | tail -8
    for stage in 1 2; do
      echo "== [${SECONDS}s] trace $cfg stage $stage"
      timeout 120 python3 scripts/bench.py trace --config "$cfg" --model-config "$MODEL_CFG" --stage "$stage" \
        --json "$OUT/speed_trace_${name}_$stage.json" data.image_path="$IMAGE" 2>&1 | sed -n '2,16p'
    done
  done
  python3 - "$OUT" <<'EOF' 2>&1 | tee "$OUT/speed_vs_floor.txt"
import json, os, sys
out, rows = sys.argv[1], []


def load(path):
    try:
        with open(os.path.join(out, path)) as f:
            return json.load(f)["result"]
    except (OSError, ValueError, KeyError):
        return None


for name in ("zeronvs", "zeronvs_fast"):
    sds = load(f"speed_sds_{name}.json")
    measured = {s["first_step"]: s for s in (sds or {}).get("stages", [])}
    for stage in (1, 2):
        trace = load(f"speed_trace_{name}_{stage}.json")
        if trace is None:
            continue
        m = measured.get(trace["first_step"], {})
        rows.append({"config": name, "stage": stage, "first_step": trace["first_step"],
                     "measured_s_per_step": m.get("s_per_step"), "measured_peak_gb": m.get("peak_memory_gb"),
                     "traced_floor_s": trace["floor_s"]["H100"], "traced_roofline_s": trace["roofline_s"]["H100"],
                     "traced_launch_bound_s": trace["launch_bound_s"]["H100"],
                     "kernel_launches": trace["kernel_launches"], "traced_peak_gib": trace["peak_gib"]})
with open(os.path.join(out, "speed_vs_floor.json"), "w") as f:
    json.dump(rows, f, indent=1)


def ms(v, k=1e3):
    return "-" if v is None else f"{v * k:.1f}"


print(f"{'config':<14}{'stage':>6}{'measured ms':>13}{'floor ms':>10}{'roofline':>10}{'launch':>8}{'launches':>10}"
      f"{'peak GB':>9}{'traced GiB':>11}")
for r in rows:
    print(f"{r['config']:<14}{r['stage']:>6}{ms(r['measured_s_per_step']):>13}{ms(r['traced_floor_s']):>10}"
          f"{ms(r['traced_roofline_s']):>10}{ms(r['traced_launch_bound_s']):>8}{r['kernel_launches']:>10}"
          f"{ms(r['measured_peak_gb'], 1):>9}{r['traced_peak_gib']:>11.2f}")
print("floors with H100 constants (step_trace.DEVICES); an H200 has 4.8 TB/s, so its memory-bound floors are lower")
EOF
}
if [ -n "$SPEED_ONLY" ]; then speed_vs_floor; exit 0; fi

# capped LIMIT_S CMD...: run CMD with at most LIMIT_S seconds, and never past the end of part 1
capped() {
  local limit="$1"; shift
  local left=$((FIRST_PART_S - SECONDS))
  [ "$left" -lt "$limit" ] && limit="$left"
  if [ "$limit" -lt 15 ]; then echo "== skipped (part 1 out of time): $*"; return; fi
  echo "== [${SECONDS}s, limit ${limit}s] $*"
  timeout "$limit" "$@" 2>&1 | tail -40
}
bench() { local limit="$1"; shift; capped "$limit" python3 scripts/bench.py "$@"; }

# ---- part 1: the first code of this project on a GPU, then the backend comparison and the paper-config step
SMOKE="$OUT/smoke"
capped 150 python3 launch.py --config configs/smoke.yaml --train exp_root_dir="$SMOKE" tag=gpu use_timestamp=false \
  data.image_path="$IMAGE" trainer.precision=16-mixed system.fast_paths=auto
capped 60 python3 launch.py --config "$SMOKE/smoke/gpu/configs/parsed.yaml" --export \
  resume="$SMOKE/smoke/gpu/ckpts/last.ckpt"
ls -R "$SMOKE" > "$OUT/smoke_files.txt" 2>&1
for backend in torch triton; do
  bench 45 nerf --encoding-only --backend "$backend" --samples 1048576 --json "$OUT/encode_$backend.json"
done
for backend in torch triton; do
  bench 70 nerf --backend "$backend" --rays 114688 --iters 3 --json "$OUT/nerf_$backend.json"
done
bench 150 sds --model-config "$MODEL_CFG" --steps 1 --test-views 1 --json "$OUT/sds_paper_1step.json" \
  data.image_path="$IMAGE"

# ---- part 2: the longer runs (each capped at 240 s; the call ends after 10 minutes)
run() { echo "== [${SECONDS}s] $*"; timeout 240 python3 scripts/bench.py "$@" 2>&1 | tail -40; }
run sds --model-config "$MODEL_CFG" --steps "$STEPS" --json "$OUT/sds.json" data.image_path="$IMAGE"
run nerf --backend triton --rays 114688 --iters 3 --normal-method autograd --json "$OUT/nerf_triton_autograd.json"
run diffusion --config "$MODEL_CFG" --dtype bf16 --json "$OUT/diffusion_bf16.json"
run diffusion --config "$MODEL_CFG" --dtype bf16 --compile-unet reduce-overhead --json "$OUT/diffusion_bf16_graphs.json"
run sds --model-config "$MODEL_CFG" --steps 3 --json "$OUT/sds_torch.json" data.image_path="$IMAGE" system.fast_paths=off
# the paper's stage-1 ray count (6 random views + the reference view at 128²): chunks whose graphs are recomputed
# in the backward (renderer.grad_checkpoint_chunk_size; the paper config uses 524288) vs the whole graph
for chunk in 524288 1048576 0; do
  run nerf --rays 114688 --iters 5 --grad-checkpoint-chunk "$chunk" --json "$OUT/nerf_chunk$chunk.json"
done
run sds --model-config "$MODEL_CFG" --steps "$STEPS" --json "$OUT/sds_bf16_graphs.json" data.image_path="$IMAGE" \
  system.guidance.dtype=bf16 system.guidance.compile_unet=reduce-overhead
run sds --model-config "$MODEL_CFG" --steps 3 --json "$OUT/sds_autograd.json" data.image_path="$IMAGE" \
  system.geometry.analytic_normal_method=autograd
run diffusion --config "$MODEL_CFG" --dtype fp32 --json "$OUT/diffusion_fp32.json"
# the traced step (fake CUDA tensors, no kernel runs) beside the measured peaks above: traced peak vs max_memory_allocated
for stage in 1 2; do
  run trace --model-config "$MODEL_CFG" --stage "$stage" --json "$OUT/trace_stage$stage.json" data.image_path="$IMAGE"
done
