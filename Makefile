# make install | demo | demo-sit | test | lint | bench | clean
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

# The demo: a tiny DiT trained in pixel space on the built-in dataset (CPU friendly).
# 16x16 pixels, patch 4; a high learning rate and a short EMA horizon because the run is short.
DEMO_FLAGS ?= --dataset builtin --model DiT-Demo/4 --image-size 16 --num-classes 10 --vae none \
	--global-batch-size 32 --max-steps 2400 --lr 2e-3 --ema-decay 0.998 --log-every 200 --ckpt-every 1200 \
	--num-workers 0 --eval-every 2400 --eval-samples 500 --eval-sampling-steps 50 --eval-cfg-scale 4 \
	--results-dir results/demo

# The same budget for a plain SiT (v-prediction, linear interpolant, Euler-Maruyama samples): issue 3's comparison.
DEMO_SIT_FLAGS ?= $(subst DiT-Demo/4,SiT-Demo/4,$(DEMO_FLAGS)) --proj-coeff 0 --cls 0

.PHONY: install demo demo-sit test lint bench clean

install: $(STAMP)

$(STAMP): requirements.txt
	@if [ -z "$(ACTIVE_ENV)" ] && [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
	$(PYTHON) -m pip install -q -r requirements.txt
	@touch $(STAMP)

demo: install
	$(PYTHON) train.py $(DEMO_FLAGS)

demo-sit: install
	$(PYTHON) train.py $(DEMO_SIT_FLAGS)

test: install
	$(PYTHON) -m pytest -q

lint: install
	$(PYTHON) -m ruff check .

bench: install
	$(PYTHON) benchmarks/train_throughput.py --model DiT-XL/2 --image-size 256 --batch-size 32

clean:
	rm -rf results samples sample.png .pytest_cache
