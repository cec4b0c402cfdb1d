# make install | demo | test | lint | bench | clean
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
DEMO_FLAGS ?= --dataset builtin --model DiT-Demo/4 --image-size 32 --num-classes 10 --vae none \
	--global-batch-size 64 --max-steps 2400 --lr 1e-3 --ema-decay 0.995 --log-every 100 --ckpt-every 1200 \
	--num-workers 1 --results-dir results/demo

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): requirements.txt
	@if [ -z "$(ACTIVE_ENV)" ] && [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
	$(PYTHON) -m pip install -q -r requirements.txt
	@touch $(STAMP)

demo: install
	$(PYTHON) train.py $(DEMO_FLAGS)

test: install
	$(PYTHON) -m pytest -q

lint: install
	$(PYTHON) -m ruff check .

bench: install
	$(PYTHON) benchmarks/train_throughput.py --model DiT-XL/2 --image-size 256 --batch-size 32

clean:
	rm -rf results samples sample.png .pytest_cache
