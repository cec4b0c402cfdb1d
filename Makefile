# make install | demo | demo-sit | demo-unet | demo-repa | demo-repae | demo-dmd2 | demo-dmd2-t2i | test | test-fast | lint | bench | clean
#      train | overfit | quick-test | generate | status | gpu-status | monitor | clean-all | clean-cuda  (the U-Net)
# `install` makes .venv in the repository root unless a virtual or conda environment is active.
ACTIVE_ENV := $(or $(VIRTUAL_ENV),$(CONDA_PREFIX))
ifeq ($(ACTIVE_ENV),)
  ENV_DIR := .venv
  PYTHON := .venv/bin/python
else
  ENV_DIR := $(ACTIVE_ENV)
  PYTHON := python
endif
STAMP := $(ENV_DIR)/.diffusion-lab-installed

# The demo: a tiny DiT trained in pixel space on the built-in dataset (CPU friendly), then scored by the
# proxy classifier. 16x16 pixels, patch 4; a high learning rate and a short EMA horizon because the run is short.
DEMO_FLAGS ?= --dataset builtin --model DiT-Demo/4 --image-size 16 --num-classes 10 --vae none \
	--global-batch-size 32 --max-steps 2400 --lr 2e-3 --ema-decay 0.998 --log-every 200 --ckpt-every 1200 \
	--num-workers 0 --eval-every 2400 --eval-samples 500 --eval-sampling-steps 50 --eval-cfg-scale 4 \
	--results-dir results/demo

# The same budget for a plain SiT (v-prediction, linear interpolant, Euler-Maruyama samples) and for the
# tiny U-Net (cosine schedule, gradients clipped at 1, learning rate 1e-3): the three side by side.
DEMO_SIT_FLAGS ?= $(subst DiT-Demo/4,SiT-Demo/4,$(DEMO_FLAGS)) --proj-coeff 0 --cls 0
DEMO_UNET_FLAGS ?= $(subst --lr 2e-3,--lr 1e-3,$(subst DiT-Demo/4,UNet-Ti,$(DEMO_FLAGS)))

# REPA and REG against plain SiT at one budget, three seeds each: SiT-Demo/4 on the built-in images as make demo-sit,
# REPA aligning block 2's tokens to simclr-builtin (a SimCLR ViT of the built-in images, trained on first use, about
# 8 minutes), REG also entangling that encoder's class token. 1,000 EMA samples per seed scored at every
# REPA_EVAL_EVERY steps without guidance (REPA's and REG's headline setting; with cfg 4 every model draws what it can,
# which hides how much class structure it learnt: docs/notes/alignment-demo.md); $(REPA_DIR)/report.md and
# curves.png. REPA_JOBS runs at once, one CPU thread each.
REPA_DIR ?= results/demo-repa
REPA_STEPS ?= 1000
REPA_EVAL_EVERY ?= 500
REPA_SEEDS ?= 0 1 2
REPA_JOBS ?= 3
REPA_THREADS ?= 1
REPA_EVAL_SAMPLES ?= 1000
REPA_FLAGS ?= --dataset builtin --model SiT-Demo/4 --image-size 16 --num-classes 10 --vae none \
	--global-batch-size 32 --max-steps $(REPA_STEPS) --lr 2e-3 --ema-decay 0.995 --log-every 100 \
	--ckpt-every $(REPA_STEPS) --num-workers 0 --eval-every $(REPA_EVAL_EVERY) --eval-samples $(REPA_EVAL_SAMPLES) \
	--eval-sampling-steps 20 --eval-cfg-scale 1 --results-dir $(REPA_DIR)
REPA_METHOD_sit ?= --proj-coeff 0 --cls 0
REPA_METHOD_repa ?= --enc-type simclr-builtin --proj-coeff 0.5 --cls 0
REPA_METHOD_reg ?= --enc-type simclr-builtin --proj-coeff 0.5 --cls 0.03
REPA_RUN_DIRS = $(foreach s,$(REPA_SEEDS),$(foreach m,sit repa reg,$(REPA_DIR)/$(m)-seed$(s)))
repa_runs = $(subst $(eval) ,$(comma),$(filter $(REPA_DIR)/$(1)-seed%,$(REPA_RUN_DIRS)))
comma := ,

# REPA-E on the built-in images at 32 px, on REPA-E's footing as far as offline allows: a tiny VAE pretrained with its
# discriminator (both handed on; the discriminator joins at step 300; no LPIPS weights offline, so L1 + KL and the
# discriminator anchor the reconstruction), REPA-E's equal learning rates (1e-4) for the SiT, the VAE and the
# discriminator, alignment to simclr-builtin. Four runs of the same SiT, steps and batch: end to end, end to end with
# the GAN off, the frozen pretrained VAE on its cached latents, and the drop-in test (the end-to-end-tuned VAE, frozen,
# on its own cached latents: REPA-E sec. 4.3). 1,000 samples of each scored; $(REPAE_DIR)/report.md.
REPAE_DIR ?= results/demo-repae
REPAE_STEPS ?= 1000
REPAE_PRETRAIN_STEPS ?= 800
REPAE_JOBS ?= 2
REPAE_THREADS ?= 1
REPAE_IMAGES ?= 20000
REPAE_SAMPLES ?= 1000
REPAE_VAE = $(REPAE_DIR)/pretrained/tiny-vae/tiny-vae.pt
REPAE_TUNED = $(REPAE_DIR)/pretrained/e2e-vae/e2e-vae.pt
REPAE_CKPT = checkpoints/$(shell printf %07d $(REPAE_STEPS)).pt
REPAE_RUNS = e2e e2e-no-gan frozen drop-in
REPAE_COMMON ?= --data-dir $(REPAE_DIR)/data --num-classes 10 --resolution 32 --model SiT-Demo/1 --vae tiny-f4d4 \
	--enc-type simclr-builtin --encoder-depth 2 --batch-size 16 --learning-rate 1e-4 --ema-decay 0.995 \
	--max-train-steps $(REPAE_STEPS) --checkpointing-steps $(REPAE_STEPS) --sampling-steps $(REPAE_STEPS) \
	--no-compile --mixed-precision no --report-to none --num-workers 0 --log-every 100 --output-dir $(REPAE_DIR)
REPAE_E2E ?= --vae-ckpt $(REPAE_VAE) --vae-learning-rate 1e-4 --disc-learning-rate 1e-4 \
	--disc-pretrained-ckpt $(REPAE_DIR)/pretrained/tiny-vae/tiny-vae-discriminator-ckpt.pt
REPAE_GENERATE ?= --train-steps $(REPAE_STEPS) --mode sde --num-steps 25 --cfg-scale 4 --num-fid-samples $(REPAE_SAMPLES) \
	--pproc-batch-size 500 --proxy --sample-dir $(REPAE_DIR)/samples
REPAE_TRAIN = OMP_NUM_THREADS=$(REPAE_THREADS) $(PYTHON)

# DMD2 on the demo DiT (make demo's; trained first when missing): a one-step generator and a four-step one with
# backward simulation, distilled with the teacher's guidance 4 on the built-in images; then 500 class-balanced samples
# of each and of the teacher (DDPM 50, cfg 4, the demo's setting) scored side by side in $(DMD2_DIR)/report.md.
# Learning rates far above DMD2's 2e-6 and ratio 1 (DMD2's default) because the run is short.
DMD2_DIR ?= results/demo-dmd2
DMD2_TEACHER ?= results/demo/000-DiT-Demo-4/checkpoints/0002400.pt
DMD2_STEPS ?= 3000
DMD2_CKPT = checkpoints/$(shell printf %07d $(DMD2_STEPS)).pt
DMD2_COMMON ?= --teacher $(DMD2_TEACHER) --dataset builtin --batch_size 32 --num_workers 0 --real_guidance_scale 4 \
	--generator_lr 1e-4 --guidance_lr 1e-4 --warmup_step 0 --train_iters $(DMD2_STEPS) --log_iters $(DMD2_STEPS) \
	--wandb_iters 250 --output_path $(DMD2_DIR)
DMD2_GENERATE ?= --num-fid-samples 500 --pproc-batch-size 250 --class-balanced --proxy

# DMD2's text-to-image path offline, on a tiny Stable Diffusion model with random weights (models/tiny_sd.py): VAE
# latents of built-in images with their class prompts, four-step DMD2 with backward simulation, the GAN head and LoRA,
# the adapters exported as DMD2's LoRA file, sampled with prompts (sample.py, sample_ddp.py), every checkpoint scored
# (proxy FD: no Inception or CLIP weights offline); $(T2I_DIR)/report.md. The pictures come from random weights.
T2I_DIR ?= results/demo-dmd2-t2i
T2I_STEPS ?= 200
T2I_EVAL ?= 100
T2I_RUN = $(T2I_DIR)/runs/four-step-lora
T2I_TRAIN ?= --model_id $(T2I_DIR)/tiny-sd --train_prompt_path $(T2I_DIR)/prompts.txt \
	--real_image_path $(T2I_DIR)/latents_lmdb --batch_size 4 --num_workers 0 --real_guidance_scale 1.75 --denoising \
	--num_denoising_step 4 --denoising_timestep 1000 --backward_simulation --cls_on_clean_image --gen_cls_loss \
	--gen_cls_loss_weight 5e-3 --guidance_cls_loss_weight 1e-2 --diffusion_gan --diffusion_gan_max_timestep 1000 \
	--generator_lora --lora_rank 4 --generator_lr 1e-4 --guidance_lr 1e-4 --warmup_step 0 --train_iters $(T2I_STEPS) \
	--log_iters $(shell echo $$(($(T2I_STEPS) / 2))) --wandb_iters 50 --grid_size 2 --checkpoint_layout dmd2 \
	--output_path $(T2I_DIR)/runs --exp_name four-step-lora

# The class-conditional U-Net (pixel space, cosine schedule, DDPM). 128 px on a GPU as the original; a CPU
# gets 32 px unless IMAGE_SIZE is given. DATASET=builtin trains offline on the procedural images.
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
MODEL ?= UNet
# Data: train.py picks CIFAR-10 when it is in DATA_PATH (default datasets/cifar10/) or can be downloaded there,
# else the built-in procedural images; DATASET=cifar10 or builtin decides instead.
DATASET ?=
IMAGE_SIZE ?= $(if $(HAS_GPU),128,32)
RESULTS ?= results
SAMPLES ?= 1
OVERFIT_EPOCHS ?= 1500
CFG_SCALE ?= 2
GEN_STEPS ?= $(if $(HAS_GPU),1000,50)
# The U-Net's recipes (full and overfit) live in train_model.py; these flags say where, and TRAIN_FLAGS overrides.
UNET_FLAGS ?= --model $(MODEL) $(if $(DATASET),--dataset $(DATASET)) --image-size $(IMAGE_SIZE) \
	$(if $(DATA_PATH),--data-path $(DATA_PATH)) --results-dir $(RESULTS)
TRAIN_FLAGS ?=
# Targets other than install depend on $(NEEDS); the test suite runs them with NEEDS= (already installed).
NEEDS ?= install

.PHONY: install demo demo-sit demo-unet demo-repa demo-repae demo-dmd2 demo-dmd2-t2i test test-fast lint bench clean train overfit quick-test generate status gpu-status monitor \
	clean-all clean-cuda

install: $(STAMP)

$(STAMP): requirements.txt
	@if [ -z "$(ACTIVE_ENV)" ] && [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
	$(PYTHON) -m pip install -q -r requirements.txt
	@touch $(STAMP)

demo: $(NEEDS)
	$(PYTHON) train.py $(DEMO_FLAGS)

demo-sit: $(NEEDS)
	$(PYTHON) train.py $(DEMO_SIT_FLAGS)

demo-unet: $(NEEDS)
	$(PYTHON) train.py $(DEMO_UNET_FLAGS)

demo-repa: $(NEEDS)
	rm -rf $(REPA_DIR)
	$(PYTHON) -m methods.ssl_encoder --json $(REPA_DIR)/encoder_probe.json
	$(MAKE) --no-print-directory -j$(REPA_JOBS) NEEDS= $(addsuffix /checkpoints/$(shell printf %07d $(REPA_STEPS)).pt,$(REPA_RUN_DIRS))
	$(PYTHON) evaluations/repa_report.py --out $(REPA_DIR) --encoder-probe $(REPA_DIR)/encoder_probe.json \
		--method "SiT=$(call repa_runs,sit)" --method "REPA=$(call repa_runs,repa)" --method "REG=$(call repa_runs,reg)"

$(REPA_DIR)/%/checkpoints/$(shell printf %07d $(REPA_STEPS)).pt:
	OMP_NUM_THREADS=$(REPA_THREADS) $(PYTHON) train.py $(REPA_FLAGS) $(REPA_METHOD_$(firstword $(subst -seed, ,$*))) \
		--global-seed $(lastword $(subst -seed, ,$*)) --exp-name $*

demo-repae: $(NEEDS)
	@test -f $(REPAE_DIR)/data/images_h5.json || $(PYTHON) preprocessing/dataset_tools.py convert --source builtin \
		--max-images $(REPAE_IMAGES) --resolution 32x32 --dest $(REPAE_DIR)/data/images.h5
	$(PYTHON) -m methods.ssl_encoder
	$(PYTHON) preprocessing/pretrain_vae.py --vae-arch tiny-f4d4 --data-dir $(REPAE_DIR)/data \
		--max-train-steps $(REPAE_PRETRAIN_STEPS) --loss-cfg-path configs/demo_pretrain_l1_kl_gan.yaml \
		--save-dir $(REPAE_DIR)/pretrained --vae-name tiny-vae
	rm -rf $(addprefix $(REPAE_DIR)/,$(REPAE_RUNS) samples pretrained/e2e-vae) $(REPAE_DIR)/data/e2e-vae*
	$(PYTHON) cache_latents.py --vae-arch tiny-f4d4 --vae-ckpt-path $(REPAE_VAE) --vae-latents-name tiny-vae \
		--data-dir $(REPAE_DIR)/data --output-dir $(REPAE_DIR)/data --pproc-batch-size 250
	$(MAKE) --no-print-directory -j$(REPAE_JOBS) NEEDS= $(foreach r,$(REPAE_RUNS),$(REPAE_DIR)/$(r)/$(REPAE_CKPT))
	$(foreach r,$(REPAE_RUNS),$(PYTHON) generate.py --exp-path $(REPAE_DIR)/$(r) $(REPAE_GENERATE) &&) true
	$(PYTHON) evaluations/repae_report.py --data-dir $(REPAE_DIR)/data --vae-arch tiny-f4d4 --start-vae $(REPAE_VAE) \
		$(foreach r,$(REPAE_RUNS),--run $(r)=$(REPAE_DIR)/$(r)) --samples-dir $(REPAE_DIR)/samples --out $(REPAE_DIR)

$(REPAE_DIR)/e2e/$(REPAE_CKPT):
	$(REPAE_TRAIN) train_repae.py $(REPAE_COMMON) $(REPAE_E2E) --loss-cfg-path configs/demo_l1_kl_gan.yaml --exp-name e2e

$(REPAE_DIR)/e2e-no-gan/$(REPAE_CKPT):
	$(REPAE_TRAIN) train_repae.py $(REPAE_COMMON) $(REPAE_E2E) --loss-cfg-path configs/demo_l1_kl.yaml --exp-name e2e-no-gan

$(REPAE_DIR)/frozen/$(REPAE_CKPT):
	$(REPAE_TRAIN) train_ldm_only.py $(REPAE_COMMON) --vae-ckpt $(REPAE_VAE) --vae-latents-name tiny-vae --exp-name frozen

$(REPAE_DIR)/drop-in/$(REPAE_CKPT): $(REPAE_DIR)/e2e/$(REPAE_CKPT)
	$(PYTHON) save_vae_weights.py --repae-ckpt $< --vae-name e2e-vae --save-dir $(REPAE_DIR)/pretrained
	$(REPAE_TRAIN) cache_latents.py --vae-arch tiny-f4d4 --vae-ckpt-path $(REPAE_TUNED) --vae-latents-name e2e-vae \
		--data-dir $(REPAE_DIR)/data --output-dir $(REPAE_DIR)/data --pproc-batch-size 250
	$(REPAE_TRAIN) train_ldm_only.py $(REPAE_COMMON) --vae-ckpt $(REPAE_TUNED) --vae-latents-name e2e-vae --exp-name drop-in

demo-dmd2: $(NEEDS)
	@test -f $(DMD2_TEACHER) || $(MAKE) demo
	rm -rf $(DMD2_DIR)/one-step $(DMD2_DIR)/four-step $(DMD2_DIR)/samples
	$(PYTHON) train_dmd2.py $(DMD2_COMMON) --exp_name one-step
	$(PYTHON) train_dmd2.py $(DMD2_COMMON) --exp_name four-step --denoising --num_denoising_step 4 --backward_simulation
	$(PYTHON) generate.py --ckpt $(DMD2_TEACHER) --mode ddpm --num-steps 50 --cfg-scale 4 $(DMD2_GENERATE) \
		--sample-dir $(DMD2_DIR)/samples/teacher
	$(PYTHON) generate.py --ckpt $(DMD2_DIR)/one-step/$(DMD2_CKPT) $(DMD2_GENERATE) --sample-dir $(DMD2_DIR)/samples/one-step
	$(PYTHON) generate.py --ckpt $(DMD2_DIR)/four-step/$(DMD2_CKPT) $(DMD2_GENERATE) --sample-dir $(DMD2_DIR)/samples/four-step
	$(PYTHON) evaluations/dmd2_report.py --out $(DMD2_DIR) --dataset builtin \
		--run "teacher, DDPM 50 steps, cfg 4=$$(ls $(DMD2_DIR)/samples/teacher/*.npz)" \
		--run "one-step generator=$$(ls $(DMD2_DIR)/samples/one-step/*.npz)" \
		--run "four-step generator, backward simulation=$$(ls $(DMD2_DIR)/samples/four-step/*.npz)"

demo-dmd2-t2i: $(NEEDS)
	rm -rf $(T2I_DIR)
	$(PYTHON) -m demo.dmd2_text_to_image prepare --out $(T2I_DIR)
	$(PYTHON) preprocessing/generate_vae_latents.py --folder $(T2I_DIR)/shards --output_folder $(T2I_DIR)/latents \
		--model_name sd --model_id $(T2I_DIR)/tiny-sd
	$(PYTHON) preprocessing/create_lmdb_iterative.py --data_path $(T2I_DIR)/latents --lmdb_path $(T2I_DIR)/latents_lmdb
	$(PYTHON) train_dmd2.py $(T2I_TRAIN)
	$(PYTHON) preprocessing/extract_lora_module.py --original_model_path \
		$(T2I_RUN)/checkpoint_model_$(shell printf %06d $(T2I_STEPS))/pytorch_model.bin \
		--output_model_path $(T2I_DIR)/dmd2_lora.safetensors --lora_rank 4
	$(PYTHON) sample.py --ckpt $(T2I_DIR)/dmd2_lora.safetensors --model_id $(T2I_DIR)/tiny-sd --num_step 4 \
		--prompts $(T2I_DIR)/prompts.txt --output $(T2I_DIR)/samples.png
	$(PYTHON) sample_ddp.py --ckpt $(T2I_RUN)/$(shell printf checkpoints/%07d.pt $(T2I_STEPS)) \
		--prompts $(T2I_DIR)/eval_prompts.txt --num-fid-samples $(T2I_EVAL) --per-proc-batch-size 25 \
		--sample-dir $(T2I_DIR)/samples
	$(PYTHON) -m evaluations.watch_text --folder $(T2I_RUN) --anno_path $(T2I_DIR)/eval_prompts.txt \
		--ref_dir $(T2I_DIR)/refs --total_eval_samples $(T2I_EVAL) --eval_res 64 --eval_batch_size 25 --proxy --once
	$(PYTHON) -m demo.dmd2_text_to_image report --out $(T2I_DIR)

# Two tiers: everything (the README's command, CI's; at most 20 min on a 2-core CPU), and the fast tier for
# iterating (under 3 min): every command parses and refuses bad input, one representative run of each kind.
test: $(NEEDS)
	$(PYTHON) -m pytest -q

test-fast: $(NEEDS)
	$(PYTHON) -m pytest -q -m "not slow and not multiprocess"

lint: $(NEEDS)
	$(PYTHON) -m ruff check .

bench: $(NEEDS)
	$(PYTHON) benchmarks/train_throughput.py --model DiT-XL/2 --image-size 256 --batch-size 32

train: $(NEEDS)
	$(PYTHON) train_model.py --full $(UNET_FLAGS) $(TRAIN_FLAGS)

overfit: $(NEEDS)
	$(PYTHON) train_model.py --overfit --samples $(SAMPLES) --epochs $(OVERFIT_EPOCHS) $(UNET_FLAGS) $(TRAIN_FLAGS)

quick-test: $(NEEDS)
	$(PYTHON) train_model.py --overfit --samples $(SAMPLES) --epochs 2 $(UNET_FLAGS) $(TRAIN_FLAGS)

# Samples of every class from the newest checkpoint of any run, into that run's folder.
generate: $(NEEDS)
	@ckpt=$$($(PYTHON) -m training.results newest $(RESULTS)) && run=$$(dirname $$(dirname $$ckpt)) && \
	echo "newest checkpoint: $$ckpt" && \
	$(PYTHON) generate_samples.py $$ckpt --samples 4 --num-sampling-steps $(GEN_STEPS) --cfg-scale $(CFG_SCALE) \
		--output $$run/generated.png

status: $(NEEDS)
	@$(PYTHON) -m training.results status $(RESULTS)

gpu-status: $(NEEDS)
	@if [ -n "$(HAS_GPU)" ]; then nvidia-smi; else echo "nvidia-smi: no NVIDIA GPU or driver found"; fi
	@$(PYTHON) -c "import torch; n = torch.cuda.device_count(); print(f'torch {torch.__version__}: CUDA available: {torch.cuda.is_available()}, {n} device(s)'); [print(f'  cuda:{i} {torch.cuda.get_device_name(i)}, {torch.cuda.mem_get_info(i)[0] / 2**30:.1f} of {torch.cuda.mem_get_info(i)[1] / 2**30:.1f} GiB free') for i in range(n)]"

# GPU use every 2 s while training runs; without a GPU, the newest run's log as it grows.
monitor: $(NEEDS)
	@if [ -n "$(HAS_GPU)" ]; then nvidia-smi --query-gpu=index,utilization.gpu,memory.used,memory.total,temperature.gpu,power.draw --format=csv -l 2; \
	else echo "no NVIDIA GPU: following the newest run's log (Ctrl-C stops)"; tail -f "$$($(PYTHON) -m training.results log $(RESULTS))"; fi

# Checkpoints and generated images (sample.py's sample.png, sample_ddp.py's samples/).
OUTPUTS ?= samples sample.png
clean:
	rm -rf $(RESULTS) $(OUTPUTS)

clean-all: clean
	find . -path ./.venv -prune -o -name __pycache__ -type d -print -exec rm -rf {} +
	rm -rf .pytest_cache .ruff_cache *.egg-info

# A process frees its own CUDA cache when it exits; what stays allocated belongs to running processes.
clean-cuda:
	@if [ -n "$(HAS_GPU)" ]; then nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv; \
	echo "these processes hold GPU memory; stop the ones you no longer need (kill PID) to free it"; \
	else echo "no NVIDIA GPU: nothing to clear"; fi
