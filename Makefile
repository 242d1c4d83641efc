# The two commands: `make demo` and `make test`. Each makes .venv when it is missing.
VENV   := .venv
PY     := $(VENV)/bin/python
# The CPU build, installed first: a bare torch requirement makes pip pick a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
SHARED_TIKTOKEN := $(abspath ../shared/tiktoken-cache)
ifneq ($(wildcard $(SHARED_TIKTOKEN)),)
export TIKTOKEN_CACHE_DIR ?= $(SHARED_TIKTOKEN)
endif

.PHONY: demo test bench

demo: $(VENV)/.installed
	$(VENV)/bin/windowloader --max-length 256 --stride 128 --batch-size 4

test: $(VENV)/.installed
	$(PY) -m pytest -q -rs $(PYTEST_ARGS)

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[all]"
	touch $@
