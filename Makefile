# Two commands do all the set-up: `make demo` and `make test` create .venv when missing,
# install the project (torch pinned by constraints.txt) and the Fashion-MNIST data, then run.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FASHION_DIR := /usr/share/datasets/fashion-mnist

.PHONY: demo test test-all lint data test-tools venv modelopt-venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Debian's dataset-fashion-mnist holds the four IDX files; skipped when they (or $AUTOPRUNE_FASHION_MNIST) exist.
data:
	@if [ -z "$$AUTOPRUNE_FASHION_MNIST" ] && [ ! -e $(FASHION_DIR)/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then \
		$(SUDO) apt-get install -y -q dataset-fashion-mnist >/dev/null || \
		($(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q dataset-fashion-mnist >/dev/null); \
	fi

# Tests use headless Chromium (renders the HTML report) and a PostgreSQL server (a shared ledger).
# Best effort: where apt cannot install them, those tests say why they skip.
test-tools:
	@for pkg in chromium:chromium postgresql:/usr/lib/postgresql; do \
		name=$${pkg%%:*}; probe=$${pkg#*:}; \
		if ! command -v $$probe >/dev/null && [ ! -e $$probe ] && command -v apt-get >/dev/null; then \
			$(SUDO) apt-get install -y -q $$name >/dev/null 2>&1 || \
			($(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q $$name >/dev/null 2>&1) || \
			echo "$$name not installed: the tests that need it will be skipped"; \
		fi; \
	done

demo: $(STAMP) data
	$(VENV)/bin/autoprune demo

# Tests run one torch thread each: two pytest-xdist workers use both cores. Tests that start Ray run
# after them, alone (a Ray worker starved of CPU is declared dead and fails a test that is not about that).
test: $(STAMP) data test-tools
	$(PY) -m pytest -q -n 2 -m "not slow and not ray"
	$(PY) -m pytest -q -m "not slow and ray"

test-all: $(STAMP) data test-tools
	$(PY) -m pytest -q -n 2 -m "not ray"
	$(PY) -m pytest -q -m ray

# Only for benchmarks/modelopt_fastnas.py (the peer a user would pick instead): a venv of its own, since
# nvidia-modelopt pulls a torchvision that cannot load beside the pinned CPU torch (it imports without it).
modelopt-venv:
	test -x .venv-modelopt/bin/python || python3 -m venv .venv-modelopt
	.venv-modelopt/bin/python -m pip install -q -c constraints.txt -e . nvidia-modelopt==0.47.0 torchprofile==0.0.4 huggingface_hub
	.venv-modelopt/bin/python -m pip uninstall -y -q torchvision

lint: $(STAMP)
	$(VENV)/bin/ruff check autoprune tests benchmarks
	$(VENV)/bin/mypy autoprune
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) runs .pytest_cache
