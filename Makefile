# Set-up and everyday commands. `make test` and `make demo` work on a fresh machine: they create .venv,
# install the project (torch pinned to the CPU build on this machine's disk) and run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The CPU wheel that lies on disk; the package itself only asks for a range (GPU users keep their CUDA torch).
TORCH_PIN ?= torch==2.13.0

.PHONY: install test test-slow lint format demo benchmark benchmark-quick image image-test clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH_PIN)
	$(BIN)/python -m pip install --quiet -e '.[train,onnx,masks,weights,pc,test]'
	touch $(STAMP)

test: $(STAMP) lint
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix src tests benchmarks scripts
	$(BIN)/ruff format src tests benchmarks scripts

demo: $(STAMP)
	$(BIN)/dsen2cr demo --out demo-output --overwrite

benchmark: $(STAMP)
	$(BIN)/python -m benchmarks

benchmark-quick: $(STAMP)
	$(BIN)/python -m benchmarks --quick

# The container image (Dockerfile): docker or podman where present, else buildah on a debootstrap Debian base.
IMAGE ?= localhost/dsen2cr:cpu

image:
	scripts/build_image.sh $(IMAGE)

image-test:
	scripts/test_image.sh $(IMAGE)

clean:
	rm -rf $(VENV) demo-output .pytest_cache .ruff_cache
