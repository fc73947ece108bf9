#!/usr/bin/env bash
# The prepared GPU check for a lent H100/H200 (no network there): one call runs every benchmark and leaves JSON and
# logs in $OUT. Prepare on the CPU machine first (docs/PERFORMANCE.md, "GPU runs"):
#   .whl/      wheels of the packages the GPU image lacks (diffusers, omegaconf, antlr4-python3-runtime, trimesh)
#   .bench/    zeronvs_config.yaml (the full-size latent-diffusion YAML; ../shared does not travel) and input.png
#              (the example image, so that scikit-image is not needed there)
# then run it with carry [".whl", ".bench"]:  bash scripts/device_bench.sh [STEPS]
# Part 1 (at most FIRST_PART_S = 480 s): the CPU demo on CUDA end to end (16-mixed, Triton fast paths, then
# --export), the torch-vs-triton comparison (hash-grid encode at 2^20 samples, NeRF step at the stage-1 ray count)
# and one paper-config SDS step per stage. Part 2: the longer benchmarks, until the call's 10 minutes run out.
# The shipped configs use explicit analytic normals (geometry.analytic_normal_method); the runs marked "autograd"
# measure the previous default beside them, and `bench.py trace` puts the traced numbers (docs/PERFORMANCE.md,
# "Traced step") beside the measured ones.
set -uo pipefail
cd "$(dirname "$0")/.."
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
