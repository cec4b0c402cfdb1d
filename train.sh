#!/usr/bin/env bash
# Paper recipes, parameterised by environment variables (defaults in brackets):
#   RECIPE    reg (SiT-XL/2 + REG, Wu et al. 2025) | repa (SiT-B/2 + REPA, Yu et al. 2025) | dit (DiT-XL/2)
#             | repae (SiT-XL/2 + SD-VAE end to end, Leng et al. 2025) | repae-ldm (SiT-XL/1 on cached E2E-VAE latents)
#             | dmd2-imagenet (DMD2's ImageNet-64 GAN recipe, Yin et al. 2024) | dmd2-sd15 (DMD2's SD1.5 recipe)
#             | dmd2-sd15-gan (its second stage: the GAN head, from CKPT_ONLY) | dmd2-sdxl (SDXL, four steps,
#             backward simulation, GAN) | dmd2-sdxl-lora (the same with LoRA) | dmd2-sdxl-1step (one step at
#             timestep 399, from the ODE-pair pretraining's GENERATOR_CKPT) | dmd2-sdxl-ode (that pretraining:
#             LPIPS regression on DMD2's noise-image pairs, DATA_DIR their LMDB)  [reg]
#   TEACHER   dmd2-imagenet: [edm-imagenet-64x64-cond-adm.pkl]; dmd2-sd15*: [runwayml/stable-diffusion-v1-5];
#             dmd2-sdxl*: [stabilityai/stable-diffusion-xl-base-1.0] (hub ids or local folders)
#   PROMPTS   dmd2-sd15*, dmd2-sdxl*: the training prompts (DMD2's captions_laion_score6.25.pkl)
#   VAE_CKPT  repae: pretrained/sdvae/sdvae-f8d4.pt (+ -latents-stats.pt, -discriminator-ckpt.pt beside it);
#             repae-ldm: pretrained/e2e-vavae-400k/e2e-vavae-400k.pt   LATENTS  repae-ldm: [e2e-vavae-400k]
#   NUM_GPUS  processes per node [8; dmd2-imagenet 7]   NNODES [1; dmd2-sd15*, dmd2-sdxl* 8] with NODE_RANK [0],
#             MASTER_ADDR, MASTER_PORT [29500] on each node. Each recipe trains with its paper's global batch (256;
#             DMD2: 7 x 40 = 280 on ImageNet, 64 x 32 = 2048 on SD1.5, 64 x 2 = 128 on SDXL, 64 x 4 = 256 pairs
#             in the ODE-pair pretraining), split over
#             NNODES x NUM_GPUS processes: a count that cannot split it evenly is refused
#   DATA_DIR  REG layout (imagenet_256_vae/ + vae-sd/) or, for dit, an ImageNet train folder;
#             dmd2-imagenet: DMD2's imagenet-64x64_lmdb; dmd2-sd15: its LMDB of SD latents and prompts
#   OUTPUT_DIR / EXP_NAME  run folder {OUTPUT_DIR}/{EXP_NAME} [exps / the recipe]
#   ENC_TYPE  [dinov2-vit-b]   MAX_STEPS [4000000 reg, 400000 repa/dit]   REPORT_TO [wandb]
# Extra arguments go to train.py, e.g.  RECIPE=repa DATA_DIR=data/ bash train.sh --resume-step 100000
set -euo pipefail
RECIPE=${RECIPE:-reg}
case "$RECIPE" in   # the paper's global batch and its GPU count
  dmd2-imagenet) GLOBAL_BATCH=280; NUM_GPUS=${NUM_GPUS:-7}; NNODES=${NNODES:-1} ;;
  dmd2-sd15*)    GLOBAL_BATCH=2048; NUM_GPUS=${NUM_GPUS:-8}; NNODES=${NNODES:-8} ;;
  dmd2-sdxl-ode) GLOBAL_BATCH=256; NUM_GPUS=${NUM_GPUS:-8}; NNODES=${NNODES:-8} ;;
  dmd2-sdxl*)    GLOBAL_BATCH=128; NUM_GPUS=${NUM_GPUS:-8}; NNODES=${NNODES:-8} ;;
  *)             GLOBAL_BATCH=256; NUM_GPUS=${NUM_GPUS:-8}; NNODES=${NNODES:-1} ;;
esac
DATA_DIR=${DATA_DIR:?set DATA_DIR to the preprocessed data (see docs/running.md, "Data layout")}
OUTPUT_DIR=${OUTPUT_DIR:-exps}
ENC_TYPE=${ENC_TYPE:-dinov2-vit-b}
REPORT_TO=${REPORT_TO:-wandb}
PYTHON=${PYTHON:-python}
for var in NUM_GPUS NNODES; do
  [[ "${!var}" =~ ^[1-9][0-9]*$ ]] || { echo "error: $var must be a positive integer, not '${!var}'" >&2; exit 2; }
done
WORLD=$((NUM_GPUS * NNODES))
if (( GLOBAL_BATCH % WORLD )); then
  echo "error: RECIPE=$RECIPE trains with the paper's global batch $GLOBAL_BATCH, which $WORLD processes" \
       "($NNODES node(s) x $NUM_GPUS) cannot split evenly; choose NUM_GPUS x NNODES dividing $GLOBAL_BATCH" >&2; exit 2
fi
if (( NNODES > 1 )) && [ -z "${MASTER_ADDR:-}" ]; then
  echo "error: RECIPE=$RECIPE runs on $NNODES nodes of $NUM_GPUS GPUs (global batch $GLOBAL_BATCH): on each node set" \
       "MASTER_ADDR (the first node's address) and NODE_RANK, or set NNODES=1 for one node" >&2; exit 2
fi
PER_PROCESS=$((GLOBAL_BATCH / WORLD))
echo "RECIPE=$RECIPE: global batch $GLOBAL_BATCH = $WORLD process(es) x $PER_PROCESS" >&2
NODES=(); TORCHRUN_NODES=(--nnodes=1)
if (( NNODES > 1 )); then
  NODES=(--num_machines "$NNODES" --machine_rank "${NODE_RANK:-0}" --main_process_ip "$MASTER_ADDR"
         --main_process_port "${MASTER_PORT:-29500}")
  TORCHRUN_NODES=(--nnodes="$NNODES" --node_rank="${NODE_RANK:-0}" --master_addr="$MASTER_ADDR"
                  --master_port="${MASTER_PORT:-29500}")
fi
MULTI_GPU=(); [ "$WORLD" -gt 1 ] && MULTI_GPU=(--multi_gpu)   # accelerate refuses --multi_gpu for one process
ACCELERATE=("$PYTHON" -m accelerate.commands.launch "${MULTI_GPU[@]}" --num_processes "$WORLD" "${NODES[@]}")
TORCHRUN=("$PYTHON" -m torch.distributed.run "${TORCHRUN_NODES[@]}" --nproc_per_node="$NUM_GPUS")

case "$RECIPE" in
  reg)   # REG train.sh: SiT-XL/2, DINOv2-B aligned after block 8, class token weight 0.03, fp16 + TF32
    exec "${ACCELERATE[@]}" train.py \
      --report-to "$REPORT_TO" --allow-tf32 --mixed-precision fp16 --seed 0 \
      --path-type linear --prediction v --weighting uniform \
      --model SiT-XL/2 --enc-type "$ENC_TYPE" --proj-coeff 0.5 --encoder-depth 8 --cls 0.03 \
      --output-dir "$OUTPUT_DIR" --exp-name "${EXP_NAME:-linear-dinov2-b-enc8-reg}" \
      --batch-size "$GLOBAL_BATCH" --max-train-steps "${MAX_STEPS:-4000000}" --checkpointing-steps 50000 \
      --data-dir "$DATA_DIR" "$@" ;;
  repa)  # REPA README: SiT-B/2 aligns after block 4 (L and XL after 8), no class token
    exec "${ACCELERATE[@]}" train.py \
      --report-to "$REPORT_TO" --allow-tf32 --mixed-precision fp16 --seed 0 \
      --path-type linear --prediction v --weighting uniform \
      --model SiT-B/2 --enc-type "$ENC_TYPE" --proj-coeff 0.5 --encoder-depth 4 --cls 0 \
      --output-dir "$OUTPUT_DIR" --exp-name "${EXP_NAME:-linear-dinov2-b-enc4-repa}" \
      --batch-size "$GLOBAL_BATCH" --max-train-steps "${MAX_STEPS:-400000}" --checkpointing-steps 50000 \
      --data-dir "$DATA_DIR" "$@" ;;
  dit)   # DiT README: DiT-XL/2 on ImageNet 256, global batch 256, lr 1e-4, EMA 0.9999, fp32 + TF32
    exec "${TORCHRUN[@]}" train.py \
      --model DiT-XL/2 --data-path "$DATA_DIR" --results-dir "$OUTPUT_DIR" --global-batch-size "$GLOBAL_BATCH" \
      --max-steps "${MAX_STEPS:-400000}" --report-to "$REPORT_TO" "$@" ;;
  repae) # REPA-E README: SiT-XL/2 + SD-VAE (f8d4) end to end, DINOv2-B after block 8, 400k steps, fp16
    VAE_CKPT=${VAE_CKPT:-pretrained/sdvae/sdvae-f8d4.pt}
    exec "${ACCELERATE[@]}" train_repae.py \
      --max-train-steps "${MAX_STEPS:-400000}" --report-to "$REPORT_TO" --allow-tf32 --mixed-precision fp16 --seed 0 \
      --data-dir "$DATA_DIR" --output-dir "$OUTPUT_DIR" --batch-size "$GLOBAL_BATCH" --path-type linear --prediction v \
      --weighting uniform --model SiT-XL/2 --checkpointing-steps 50000 --loss-cfg-path configs/l1_lpips_kl_gan.yaml \
      --vae f8d4 --vae-ckpt "$VAE_CKPT" --disc-pretrained-ckpt "${VAE_CKPT%.pt}-discriminator-ckpt.pt" \
      --enc-type "$ENC_TYPE" --proj-coeff 0.5 --encoder-depth 8 --vae-align-proj-coeff 1.5 --bn-momentum 0.1 \
      --exp-name "${EXP_NAME:-sit-xl-dinov2-b-enc8-repae-sdvae}" "$@" ;;
  repae-ldm) # REPA-E README: SiT-XL/1 + REPA on the cached latents of the E2E-VA-VAE (f16d32), 4M steps
    VAE_CKPT=${VAE_CKPT:-pretrained/e2e-vavae-400k/e2e-vavae-400k.pt}
    exec "${ACCELERATE[@]}" train_ldm_only.py \
      --max-train-steps "${MAX_STEPS:-4000000}" --report-to "$REPORT_TO" --allow-tf32 --mixed-precision fp16 --seed 0 \
      --data-dir "$DATA_DIR" --output-dir "$OUTPUT_DIR" --batch-size "$GLOBAL_BATCH" --path-type linear --prediction v \
      --weighting uniform --model SiT-XL/1 --checkpointing-steps 50000 --vae f16d32 --vae-ckpt "$VAE_CKPT" \
      --vae-latents-name "${LATENTS:-e2e-vavae-400k}" --enc-type "$ENC_TYPE" --proj-coeff 0.5 --encoder-depth 8 \
      --exp-name "${EXP_NAME:-sit-xl-1-dinov2-b-enc8-ldm-e2e-vavae}" "$@" ;;
  dmd2-imagenet) # DMD2 experiments/imagenet: GAN head, diffusion GAN, TTUR 5, lr 2e-6, batch 40 per GPU (7 GPUs), bf16,
                 # only the newest checkpoint kept
    exec "${TORCHRUN[@]}" train_dmd2.py \
      --teacher "${TEACHER:-edm-imagenet-64x64-cond-adm.pkl}" --real_image_path "$DATA_DIR" \
      --generator_lr 2e-6 --guidance_lr 2e-6 --train_iters "${MAX_STEPS:-10000000}" --batch_size "$PER_PROCESS" --log_iters 500 \
      --seed 10 --wandb_iters 100 --use_fp16 --dfake_gen_update_ratio 5 --gan_classifier --cls_loss_weight 1e-2 \
      --gen_cls_loss_weight 3e-3 --diffusion_gan --diffusion_gan_max_timestep 1000 --report_to "$REPORT_TO" \
      --resolution 64 --label_dim 1000 --delete_ckpts \
      --output_path "$OUTPUT_DIR" --exp_name "${EXP_NAME:-imagenet_gan_classifier_genloss3e-3_diffusion1000_lr2e-6}" "$@" ;;
  dmd2-sd15|dmd2-sd15-gan) # DMD2 experiments/sdv1.5: guidance 1.75, TTUR 10, lr 1e-5, batch 32 per GPU (64 GPUs),
             # bf16, no GAN, activation checkpointing; the second stage: lr 5e-7 with the GAN head, from CKPT_ONLY
    if [ "$RECIPE" = dmd2-sd15 ]; then STAGE=(--generator_lr 1e-5 --guidance_lr 1e-5)
    else STAGE=(--generator_lr 5e-7 --guidance_lr 5e-7 --cls_on_clean_image --gen_cls_loss --gen_cls_loss_weight 1e-3
                --guidance_cls_loss_weight 1e-2 --diffusion_gan --diffusion_gan_max_timestep 1000
                --ckpt_only_path "${CKPT_ONLY:?set CKPT_ONLY to the first stage checkpoint (checkpoint_model_NNNNNN/)}"); fi
    exec "${ACCELERATE[@]}" train_dmd2.py \
      --teacher "${TEACHER:-runwayml/stable-diffusion-v1-5}" \
      --train_prompt_path "${PROMPTS:?set PROMPTS to the training prompts}" --real_image_path "$DATA_DIR" \
      "${STAGE[@]}" --train_iters "${MAX_STEPS:-100000000}" --batch_size "$PER_PROCESS" --log_iters 1000 \
      --seed 10 --real_guidance_scale 1.75 --max_grad_norm 10 --wandb_iters 50 --use_fp16 \
      --dfake_gen_update_ratio 10 --resolution 512 --latent_resolution 64 --grid_size 2 --log_loss \
      --gradient_checkpointing --report_to "$REPORT_TO" --output_path "$OUTPUT_DIR" \
      --exp_name "${EXP_NAME:-laion6.25_sd_baseline_guidance1.75_seed10_dfake10_${RECIPE#dmd2-}}" "$@" ;;
  dmd2-sdxl|dmd2-sdxl-lora|dmd2-sdxl-1step) # DMD2 experiments/sdxl: guidance 8, TTUR 5, batch 2 per GPU (64 GPUs),
             # bf16, sharded (--fsdp), GAN head 5e-3 / 1e-2 with diffusion GAN; four steps with backward simulation
             # (lr 5e-7; LoRA: 5e-5), or one step at timestep 399 from the ODE-pair pretraining's generator
    case "$RECIPE" in
      dmd2-sdxl) STAGE=(--generator_lr 5e-7 --guidance_lr 5e-7 --denoising --num_denoising_step 4
                        --denoising_timestep 1000 --backward_simulation) ;;
      dmd2-sdxl-lora) STAGE=(--generator_lr 5e-5 --guidance_lr 5e-5 --denoising --num_denoising_step 4
                             --denoising_timestep 1000 --backward_simulation --generator_lora) ;;
      *) STAGE=(--generator_lr 5e-7 --guidance_lr 5e-7 --conditioning_timestep 399 --generator_ckpt_path
                "${GENERATOR_CKPT:?set GENERATOR_CKPT to the generator of the ODE-pair pretraining}") ;;
    esac
    exec "${ACCELERATE[@]}" train_dmd2.py \
      --teacher "${TEACHER:-stabilityai/stable-diffusion-xl-base-1.0}" --sdxl \
      --train_prompt_path "${PROMPTS:?set PROMPTS to the training prompts}" --real_image_path "$DATA_DIR" \
      "${STAGE[@]}" --train_iters "${MAX_STEPS:-100000000}" --batch_size "$PER_PROCESS" --log_iters 1000 \
      --seed 10 --real_guidance_scale 8 --max_grad_norm 10 --wandb_iters 100 --use_fp16 --fsdp \
      --dfake_gen_update_ratio 5 --max_step_percent 0.98 --cls_on_clean_image --gen_cls_loss --gen_cls_loss_weight 5e-3 \
      --guidance_cls_loss_weight 1e-2 --diffusion_gan --diffusion_gan_max_timestep 1000 --resolution 1024 \
      --latent_resolution 128 --grid_size 2 --log_loss --report_to "$REPORT_TO" --output_path "$OUTPUT_DIR" \
      --exp_name "${EXP_NAME:-${RECIPE//-/_}_guidance8}" "$@" ;;
  dmd2-sdxl-ode) # DMD2 experiments/sdxl/sdxl_lr1e-5_8node_ode_pretraining_10k_cond399.sh: 10k pairs, 4 per GPU
    exec "${TORCHRUN[@]}" train_sd_ode.py \
      --model_id "${TEACHER:-stabilityai/stable-diffusion-xl-base-1.0}" --sdxl --tiny_vae --ode_pair_path "$DATA_DIR" \
      --num_ode_pairs 10000 --ode_batch_size "$PER_PROCESS" --conditioning_timestep 399 --generator_lr 1e-5 \
      --train_iters "${MAX_STEPS:-100000000}" --grid_size 1 --log_iters 1000 --resolution 1024 --seed 10 \
      --max_grad_norm 10.0 --wandb_iters 250 --use_fp16 --report_to "$REPORT_TO" --output_path "$OUTPUT_DIR" \
      --exp_name "${EXP_NAME:-sdxl_lr1e-5_ode_pretraining_10k_cond399}" --checkpoint_layout dmd2 "$@" ;;
  *) echo "error: RECIPE must be reg, repa, dit, repae, repae-ldm, dmd2-imagenet, dmd2-sd15, dmd2-sd15-gan, dmd2-sdxl," \
          "dmd2-sdxl-lora, dmd2-sdxl-1step or dmd2-sdxl-ode, not '$RECIPE'" >&2; exit 2 ;;
esac
