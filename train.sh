#!/usr/bin/env bash
# Paper recipes, parameterised by environment variables (defaults in brackets):
#   RECIPE    reg (SiT-XL/2 + REG, Wu et al. 2025) | repa (SiT-B/2 + REPA, Yu et al. 2025) | dit (DiT-XL/2)  [reg]
#   NUM_GPUS  processes on this node [8]      DATA_DIR  REG layout (imagenet_256_vae/ + vae-sd/) or, for dit, an ImageNet train folder
#   OUTPUT_DIR / EXP_NAME  run folder {OUTPUT_DIR}/{EXP_NAME} [exps / the recipe]
#   ENC_TYPE  [dinov2-vit-b]   MAX_STEPS [4000000 reg, 400000 repa/dit]   REPORT_TO [wandb]
# Extra arguments go to train.py, e.g.  RECIPE=repa DATA_DIR=data/ bash train.sh --resume-step 100000
set -euo pipefail
RECIPE=${RECIPE:-reg}
NUM_GPUS=${NUM_GPUS:-8}
DATA_DIR=${DATA_DIR:?set DATA_DIR to the preprocessed data (see README: Data layout)}
OUTPUT_DIR=${OUTPUT_DIR:-exps}
ENC_TYPE=${ENC_TYPE:-dinov2-vit-b}
REPORT_TO=${REPORT_TO:-wandb}
PYTHON=${PYTHON:-python}
[[ "$NUM_GPUS" =~ ^[1-9][0-9]*$ ]] || { echo "error: NUM_GPUS must be a positive integer, not '$NUM_GPUS'" >&2; exit 2; }
MULTI_GPU=(); [ "$NUM_GPUS" -gt 1 ] && MULTI_GPU=(--multi_gpu)   # accelerate refuses --multi_gpu for one process

case "$RECIPE" in
  reg)   # REG train.sh: SiT-XL/2, DINOv2-B aligned after block 8, class token weight 0.03, fp16 + TF32
    exec "$PYTHON" -m accelerate.commands.launch "${MULTI_GPU[@]}" --num_processes "$NUM_GPUS" train.py \
      --report-to "$REPORT_TO" --allow-tf32 --mixed-precision fp16 --seed 0 \
      --path-type linear --prediction v --weighting uniform \
      --model SiT-XL/2 --enc-type "$ENC_TYPE" --proj-coeff 0.5 --encoder-depth 8 --cls 0.03 \
      --output-dir "$OUTPUT_DIR" --exp-name "${EXP_NAME:-linear-dinov2-b-enc8-reg}" \
      --batch-size 256 --max-train-steps "${MAX_STEPS:-4000000}" --checkpointing-steps 50000 \
      --data-dir "$DATA_DIR" "$@" ;;
  repa)  # REPA README: SiT-B/2 aligns after block 4 (L and XL after 8), no class token
    exec "$PYTHON" -m accelerate.commands.launch "${MULTI_GPU[@]}" --num_processes "$NUM_GPUS" train.py \
      --report-to "$REPORT_TO" --allow-tf32 --mixed-precision fp16 --seed 0 \
      --path-type linear --prediction v --weighting uniform \
      --model SiT-B/2 --enc-type "$ENC_TYPE" --proj-coeff 0.5 --encoder-depth 4 --cls 0 \
      --output-dir "$OUTPUT_DIR" --exp-name "${EXP_NAME:-linear-dinov2-b-enc4-repa}" \
      --batch-size 256 --max-train-steps "${MAX_STEPS:-400000}" --checkpointing-steps 50000 \
      --data-dir "$DATA_DIR" "$@" ;;
  dit)   # DiT README: DiT-XL/2 on ImageNet 256, global batch 256, lr 1e-4, EMA 0.9999, fp32 + TF32
    exec "$PYTHON" -m torch.distributed.run --nnodes=1 --nproc_per_node="$NUM_GPUS" train.py \
      --model DiT-XL/2 --data-path "$DATA_DIR" --results-dir "$OUTPUT_DIR" \
      --max-steps "${MAX_STEPS:-400000}" --report-to "$REPORT_TO" "$@" ;;
  *) echo "error: RECIPE must be reg, repa or dit, not '$RECIPE'" >&2; exit 2 ;;
esac
