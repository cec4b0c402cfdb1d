#!/usr/bin/env bash
# Sample 50k images and score them with the ADM-compatible evaluator (REG / REPA eval.sh, DiT's protocol).
#   RECIPE    reg (SDE 250, cfg 2.3, class-token cfg 2.3, guidance t <= 0.85) |
#             repa (SDE 250, cfg 1.8, guidance t <= 0.7) | dit (DDPM 250, cfg 1.5) |
#             repae (SDE 250, cfg 2.2, guidance t <= 0.65: REPA-E + SD-VAE) |
#             repae-ldm (SDE 250, cfg 2.5, guidance t <= 0.75: SiT-XL/1 on the E2E-VA-VAE) |
#             dmd2-imagenet (a distilled generator, its own steps; DMD2's evaluation: class-balanced labels,
#             seed 10, batch 128; REF_BATCH e.g. imagenet-64x64.npz; with WATCH=RUN_FOLDER instead of CKPT, every
#             checkpoint of the run as it appears, as DMD2's test_folder_edm.py: REF_BATCH is then EDM's
#             reference statistics, imagenet_fid_refs_edm.npz) |
#             dmd2-sd15 / dmd2-sdxl (WATCH=RUN_FOLDER: every checkpoint of a text-to-image run as it appears, as
#             DMD2's test_folder_sd.py / test_folder_sdxl.py: ANNO the captions, REF_DIR the reference images;
#             SD1.5: 30k COCO-2014 captions at 256 px; SDXL: COCO-10k at 512 px, patch FID and CLIP score;
#             NUM_STEP [4] and COND_TIMESTEP [999] for DMD2's own SDXL folders)   [reg]
#   CKPT      checkpoint (required)       NUM_GPUS [8]     REF_BATCH  ADM reference batch, e.g.
#             VIRTUAL_imagenet256_labeled.npz (required)   SAMPLE_DIR [samples]   NUM_SAMPLES [50000]
#   NUM_STEPS / CFG_SCALE / CLS_CFG_SCALE (reg) / GH (reg, repa)  override the recipe's values
# Extra arguments go to generate.py, e.g.  CKPT=... REF_BATCH=... bash eval.sh --per-proc-batch-size 32
set -euo pipefail
RECIPE=${RECIPE:-reg}
PYTHON=${PYTHON:-python}
case "$RECIPE" in   # DMD2's text-to-image evaluation: one process, as its scripts
  dmd2-sd15)
    exec "$PYTHON" -m evaluations.watch_text --folder "${WATCH:?set WATCH to the run folder}" \
      --anno_path "${ANNO:?set ANNO to the captions (captions_coco14_test.pkl)}" \
      --ref_dir "${REF_DIR:?set REF_DIR to the reference images (val2014/)}" --eval_res 256 --seed 10 \
      --total_eval_samples "${NUM_SAMPLES:-30000}" --eval_batch_size 10 --model_id "${TEACHER:-runwayml/stable-diffusion-v1-5}" \
      --pred_eps "$@" ;;
  dmd2-sdxl)
    exec "$PYTHON" -m evaluations.watch_text --folder "${WATCH:?set WATCH to the run folder}" \
      --anno_path "${ANNO:?set ANNO to the captions (coco10k/all_prompts.pkl)}" \
      --ref_dir "${REF_DIR:?set REF_DIR to the reference images (coco10k/subset/)}" --eval_res 512 --seed 10 \
      --total_eval_samples "${NUM_SAMPLES:-10000}" --eval_batch_size 4 --clip_score \
      --model_id "${TEACHER:-stabilityai/stable-diffusion-xl-base-1.0}" --num_step "${NUM_STEP:-4}" \
      --conditioning_timestep "${COND_TIMESTEP:-999}" "$@" ;;
esac
if [ -z "${WATCH:-}" ]; then CKPT=${CKPT:?set CKPT to the checkpoint to evaluate}; fi
REF_BATCH=${REF_BATCH:?set REF_BATCH to the ADM reference batch (VIRTUAL_imagenet256_labeled.npz)}
NUM_GPUS=${NUM_GPUS:-8}

# The DiT recipe is official DiT's: DDPM guided at every step on three channels, no class token.
case "$RECIPE" in
  reg)  MODE=sde;  STEPS=${NUM_STEPS:-250}; CFG=${CFG_SCALE:-2.3}
        FLOW=(--cls-cfg-scale "${CLS_CFG_SCALE:-2.3}" --guidance-high "${GH:-0.85}") ;;
  repa) MODE=sde;  STEPS=${NUM_STEPS:-250}; CFG=${CFG_SCALE:-1.8}; FLOW=(--guidance-high "${GH:-0.7}") ;;
  dit)  MODE=ddpm; STEPS=${NUM_STEPS:-250}; CFG=${CFG_SCALE:-1.5}; FLOW=() ;;
  repae) MODE=sde; STEPS=${NUM_STEPS:-250}; CFG=${CFG_SCALE:-2.2}; FLOW=(--guidance-high "${GH:-0.65}") ;;
  repae-ldm) MODE=sde; STEPS=${NUM_STEPS:-250}; CFG=${CFG_SCALE:-2.5}; FLOW=(--guidance-high "${GH:-0.75}") ;;
  dmd2-imagenet)
    if [ -n "${WATCH:-}" ]; then
      exec "$PYTHON" -m torch.distributed.run --nnodes=1 --nproc_per_node="$NUM_GPUS" -m evaluations.watch \
        --folder "$WATCH" --resolution 64 --label_dim 1000 --ref_path "$REF_BATCH" --seed 10 \
        --total_eval_samples "${NUM_SAMPLES:-50000}" --eval_batch_size 128 "$@"
    fi
    exec "$PYTHON" -m torch.distributed.run --nnodes=1 --nproc_per_node="$NUM_GPUS" generate.py \
      --ckpt "$CKPT" --class-balanced --global-seed 10 --num-fid-samples "${NUM_SAMPLES:-50000}" \
      --per-proc-batch-size 128 --sample-dir "${SAMPLE_DIR:-samples}" --ref-batch "$REF_BATCH" "$@" ;;
  *) echo "error: RECIPE must be reg, repa, dit, repae, repae-ldm, dmd2-imagenet, dmd2-sd15 or dmd2-sdxl, not" \
          "'$RECIPE'" >&2; exit 2 ;;
esac

exec "$PYTHON" -m torch.distributed.run --nnodes=1 --nproc_per_node="$NUM_GPUS" generate.py \
  --ckpt "$CKPT" --mode "$MODE" --num-steps "$STEPS" --cfg-scale "$CFG" "${FLOW[@]}" \
  --num-fid-samples "${NUM_SAMPLES:-50000}" --per-proc-batch-size 64 \
  --sample-dir "${SAMPLE_DIR:-samples}" --ref-batch "$REF_BATCH" "$@"
