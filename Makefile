# Two commands do all set-up on a fresh machine with Python 3.11 and pip:
#   make demo   -- the cell of the map where the hierarchy pays (configs/synthetic_m10.py): data, training, report
#   make test   -- runs the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
WORKDIR ?= runs/demo
CONFIG ?= configs/synthetic_m10.py

.PHONY: demo test test-slow install clean reproduce

$(STAMP): requirements.txt pyproject.toml setup.py supersub_jax/data/_jpeg_region.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	@# setup.py's region decoder needs libjpeg-turbo's headers (Debian/Ubuntu: libjpeg62-turbo-dev); where they cannot
	@# be installed the install goes on without it, and JPEGs are decoded whole (supersub_jax.data.pipeline).
	@if [ ! -e /usr/include/jpeglib.h ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -q && apt-get install -y -q libjpeg62-turbo-dev) >/dev/null || echo 'no libjpeg-turbo headers: JPEGs will be decoded whole'; fi
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# On a CPU host, two XLA host devices use both cores of a small machine better than one (docs/benchmarks.md);
# the flag only concerns the CPU platform and is harmless on GPU/TPU hosts.
demo: export XLA_FLAGS ?= --xla_force_host_platform_device_count=2
demo: $(STAMP)
	$(BIN)/python train.py --config=$(CONFIG) --workdir=$(WORKDIR)
	$(BIN)/python evaluate.py --workdir=$(WORKDIR)

# pytest exits 5 when it collects no test: that is not a failure of the suite. One xdist worker per core: the suite
# is bound by XLA's compiles, which are single-threaded (TEST_WORKERS=0 runs it in this process).
TEST_WORKERS ?= $(shell nproc 2>/dev/null || echo 2)
PYTEST = $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal
# `make test` leaves out the slow tier (`@pytest.mark.slow`: the commands run end to end in child processes that
# train, evaluate, get signals, are killed or run beside each other); `make test-slow` runs it, and CI (.ci/run)
# runs both.
test: $(STAMP)
	$(PYTEST) -m 'not slow and not reproduce' tests; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; else exit $$rc; fi

test-slow: $(STAMP)
	$(PYTEST) -m 'slow and not reproduce' tests; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; else exit $$rc; fi

# Retrains the committed artifacts from their commands and compares (minutes; not part of make test).
reproduce: $(STAMP)
	XLA_FLAGS=--xla_force_host_platform_device_count=2 $(BIN)/python -m pytest -q -m reproduce tests

clean:
	rm -rf $(VENV) runs *.egg-info
