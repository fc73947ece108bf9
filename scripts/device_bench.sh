#!/usr/bin/env bash
# The prepared GPU check for a lent H100/H200 (no network there): one call runs every benchmark and leaves JSON in
# $OUT. Prepare on the CPU machine first (docs/PERFORMANCE.md, "GPU runs"):
#   .whl/      wheels of the packages the GPU image lacks (diffusers, omegaconf, antlr4-python3-runtime, trimesh)
#   .bench/    zeronvs_config.yaml (the full-size latent-diffusion YAML; ../shared does not travel)
# then run it with carry [".whl", ".bench"]:  bash scripts/device_bench.sh [STEPS]
set -uo pipefail
cd "$(dirname "$0")/.."
STEPS="${1:-20}"
OUT="${OUT:-/tmp/device_bench}"
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
MODEL_CFG=.bench/zeronvs_config.yaml
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
run() { echo "== $*"; timeout 240 python3 scripts/bench.py "$@" 2>&1 | tail -40; }
# most important first: the lease is short (one call of at most 10 minutes)
run sds --model-config "$MODEL_CFG" --steps "$STEPS" --json "$OUT/sds.json"
run diffusion --config "$MODEL_CFG" --dtype bf16 --json "$OUT/diffusion_bf16.json"
run diffusion --config "$MODEL_CFG" --dtype bf16 --compile-unet reduce-overhead --json "$OUT/diffusion_bf16_graphs.json"
# the paper's stage-1 ray count (6 random views + the reference view at 128²): chunks whose graphs are recomputed
# in the backward (renderer.grad_checkpoint_chunk_size; the paper config uses 524288) vs the whole graph
for chunk in 524288 1048576 0; do
  run nerf --rays 114688 --iters 5 --grad-checkpoint-chunk "$chunk" --json "$OUT/nerf_chunk$chunk.json"
done
# analytic normals written out with first-order ops instead of autograd's double backward through the grid
run nerf --rays 114688 --iters 5 --grad-checkpoint-chunk 524288 --normal-method explicit --json "$OUT/nerf_explicit.json"
run sds --model-config "$MODEL_CFG" --steps "$STEPS" --json "$OUT/sds_bf16_graphs.json" system.guidance.dtype=bf16 \
  system.guidance.compile_unet=reduce-overhead
run diffusion --config "$MODEL_CFG" --dtype fp32 --json "$OUT/diffusion_fp32.json"
