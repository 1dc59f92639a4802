# Quantgate: `make demo` and `make test` work on a fresh machine (Python 3.11, PyPI reachable).
PYTHON ?= python3
VENV := .venv
VLLM_VENV := .venv-vllm
QUANT_VENV := .venv-quant
LOAD_VENV := .venv-load
PIP := --disable-pip-version-check --quiet --no-deps
MODEL := .quantgate/models/tiny
TRAIN_STEPS ?= 300
export QUANTGATE_VLLM_PYTHON := $(CURDIR)/$(VLLM_VENV)/bin/python
export QUANTGATE_QUANTIZER_PYTHON := $(CURDIR)/$(QUANT_VENV)/bin/python

.PHONY: install install-load model demo test unit lint typecheck check loadtest saturation clean

## install: the gateway's environment, the vLLM environment and the quantizer environment
install: $(VENV)/.done $(VLLM_VENV)/.done $(QUANT_VENV)/.done

$(VENV)/.done: requirements/main.txt pyproject.toml
	rm -rf $(VENV) && $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP) -r requirements/main.txt
	$(VENV)/bin/pip install $(PIP) -e .
	touch $@

# vLLM and llm-compressor pin different compressed-tensors: one environment each.
$(VLLM_VENV)/.done: requirements/vllm.txt
	rm -rf $(VLLM_VENV) && $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install $(PIP) -r requirements/vllm.txt
	touch $@

$(QUANT_VENV)/.done: requirements/quantizer.txt
	rm -rf $(QUANT_VENV) && $(PYTHON) -m venv $(QUANT_VENV)
	$(QUANT_VENV)/bin/pip install $(PIP) -r requirements/quantizer.txt
	touch $@

## install-load: Locust (and matplotlib) for load tests, apart from the gateway's environment
install-load: $(LOAD_VENV)/.done

$(LOAD_VENV)/.done: requirements/loadtest.txt
	rm -rf $(LOAD_VENV) && $(PYTHON) -m venv $(LOAD_VENV)
	$(LOAD_VENV)/bin/pip install $(PIP) -r requirements/loadtest.txt
	touch $@

## model: build the demo's small model (local tokenizer, brief training on built-in text)
model: $(MODEL)/config.json

$(MODEL)/config.json: $(VENV)/.done $(QUANT_VENV)/.done serving/worker/make_model.py serving/data/corpus.txt.gz
	$(VENV)/bin/quantgate make-model $(MODEL) --train-steps $(TRAIN_STEPS)

## demo: serve manifests/demo.yaml; one chat completion through the gateway with the openai SDK
demo: install model
	$(VENV)/bin/quantgate demo manifests/demo.yaml --model auto

## test: lint, type-check, then every test, the real end-to-end ones included
test: install install-load model lint typecheck
	$(VENV)/bin/pytest

## unit: the fast tests only
unit: $(VENV)/.done $(LOAD_VENV)/.done
	$(VENV)/bin/pytest -m "not slow"

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

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(QUANT_VENV) $(LOAD_VENV) .quantgate loadtests/reports
