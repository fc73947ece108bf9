#!/usr/bin/env bash
# ZeroNVS one-image inference with the paper's settings: SDS distillation of a NeRF, then test renders.
#
#   bash launch_inference.sh [IMAGE] [--fov DEG] [--elevation DEG] [--scale S] [--ckpt PATH]
#                            [--model-config YAML] [--config PIPELINE_YAML | --fast] [--gpu IDS] [key=value ...]
#
# IMAGE           input image (RGB or RGBA); default: the bundled example skimage:motorcycle_left. A name with '='
#                 is read as key=value: pass it as a path (./shot=1.png)
# --fov DEG       vertical field of view of the (centre-cropped, square) image; default: from the image's EXIF
#                 focal length, else 52.55 (the bundled example: its calibrated 28.2)
# --elevation DEG elevation of the input camera above the ground plane; default 31.0
# --scale S       how close the content is to the camera (smaller is closer; see the paper); default 0.7
# --ckpt PATH     zeronvs.ckpt or a folder converted with `python -m zeronvs_diffusion.convert`;
#                 default: zeronvs.ckpt in the repository root
# --model-config  the checkpoint's latent-diffusion YAML (optional for a converted folder);
#                 default: zeronvs_config.yaml in the repository root
# --config        pipeline config; default: the repository's configs/zeronvs.yaml (the paper's settings)
# --fast          the fast preset configs/zeronvs_fast.yaml: 32+32 samples, no NeRF recomputation, bf16
#                 diffusion model (its header lists every change; docs/PERFORMANCE.md, "Fast preset")
# --gpu IDS       GPU(s) to use; default 0 (the CPU when there is no CUDA)
# --quiet         no progress bar; warnings and errors only
# key=value       any further config override, e.g. trainer.max_steps=1000
#
# Relative paths (IMAGE, --ckpt, --model-config, --config, paths in key=value) are read from the folder you run
# the script in, and the trial is written to ./outputs there (exp_root_dir), as `python launch.py` does.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

IMAGE=""
FOV=""
ELEVATION_DEG=31.0
SCALE=0.7
CKPT_PATH="$REPO/zeronvs.ckpt"
CONFIG_PATH="$REPO/zeronvs_config.yaml"
PIPELINE_CONFIG="$REPO/configs/zeronvs.yaml"
CONFIG_GIVEN=""
FAST=""
GPU=0
QUIET=()
EXTRA=()

# the comment block at the top of this file, without its "# "
usage() { sed -n '2,/^[^#]/p' "${BASH_SOURCE[0]}" | sed -n 's/^#\( \{0,1\}\)//p'; }
need_value() { if [ $# -lt 2 ]; then echo "error: $1 needs a value" >&2; exit 2; fi; }

while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --fov) need_value "$@"; FOV="$2"; shift 2 ;;
    --elevation) need_value "$@"; ELEVATION_DEG="$2"; shift 2 ;;
    --scale) need_value "$@"; SCALE="$2"; shift 2 ;;
    --ckpt) need_value "$@"; CKPT_PATH="$2"; shift 2 ;;
    --model-config) need_value "$@"; CONFIG_PATH="$2"; shift 2 ;;
    --config) need_value "$@"; PIPELINE_CONFIG="$2"; CONFIG_GIVEN=1; shift 2 ;;
    --fast) FAST=1; shift ;;
    --gpu) need_value "$@"; GPU="$2"; shift 2 ;;
    --quiet) QUIET=(--quiet); shift ;;
    --*) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    ./*|../*|/*) if [ -n "$IMAGE" ]; then echo "error: more than one image given ($IMAGE, $1)" >&2; exit 2; fi
       IMAGE="$1"; shift ;;  # a path, even with '=' in its name
    *=*) if [ -e "$1" ]; then
           echo "error: $1 is read as a key=value override, but it is a file; to use it as the image, pass ./$1" >&2
           exit 2
         fi
         EXTRA+=("$1"); shift ;;
    *) if [ -n "$IMAGE" ]; then echo "error: more than one image given ($IMAGE, $1)" >&2; exit 2; fi
       IMAGE="$1"; shift ;;
  esac
done

if [ -n "$FAST" ]; then
  if [ -n "$CONFIG_GIVEN" ]; then echo "error: --fast and --config both choose the pipeline config; give one" >&2; exit 2; fi
  PIPELINE_CONFIG="$REPO/configs/zeronvs_fast.yaml"
fi

# without IMAGE the config's data.image_path applies (the bundled example)
IMAGE_ARG=()
if [ -n "$IMAGE" ]; then IMAGE_ARG=("data.image_path=$IMAGE"); fi
# without --fov the config's data.default_fovy_deg applies (auto: the bundled example's calibration, the EXIF
# focal length, else data.fovy_fallback_deg; see threestudio/data/examples.py)
FOV_ARG=()
if [ -n "$FOV" ]; then FOV_ARG=("data.default_fovy_deg=$FOV"); fi

if [[ -n "$IMAGE" && "$IMAGE" != skimage:* && ! -f "$IMAGE" ]]; then
  echo "error: input image not found: $IMAGE" >&2
  exit 2
fi

missing=()
if [ "$CKPT_PATH" != "random" ] && [ ! -e "$CKPT_PATH" ]; then missing+=("checkpoint $CKPT_PATH"); fi
if [ ! -d "$CKPT_PATH" ] && [ ! -f "$CONFIG_PATH" ]; then missing+=("model config $CONFIG_PATH"); fi
if [ ${#missing[@]} -gt 0 ]; then
  {
    joined="${missing[0]}"; [ ${#missing[@]} -gt 1 ] && joined="$joined and ${missing[1]}"
    echo "error: missing $joined."
    # the same place as zeronvs_diffusion/errors.py's WEIGHTS_SOURCE
    echo "  ZeroNVS needs its released weights: put zeronvs.ckpt (15.5 GB) and zeronvs_config.yaml from the ZeroNVS"
    echo "  release (https://github.com/kylesargent/ZeroNVS#models (README section 'Models')) in $REPO,"
    echo "  or pass --ckpt/--model-config."
    echo "  Without them, the CPU demo runs the same pipeline with a tiny random model:"
    echo "    python $REPO/launch.py --config $REPO/configs/smoke.yaml --train"
  } >&2
  exit 2
fi

MODEL_CONFIG_ARG=()
if [ -f "$CONFIG_PATH" ]; then MODEL_CONFIG_ARG=("system.guidance.pretrained_config=$CONFIG_PATH"); fi

exec python "$REPO/launch.py" --config "$PIPELINE_CONFIG" --train --gpu "$GPU" "${QUIET[@]}" \
  "${IMAGE_ARG[@]}" \
  system.guidance.pretrained_model_name_or_path="$CKPT_PATH" \
  "${MODEL_CONFIG_ARG[@]}" \
  data.default_elevation_deg="$ELEVATION_DEG" \
  "${FOV_ARG[@]}" \
  system.guidance.precomputed_scale="$SCALE" \
  "${EXTRA[@]}"
