# The two commands: `make demo` and `make test`. Each makes .venv when it is missing.
VENV   := .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
# PyTorch is installed first, and which build depends on the machine. Without an NVIDIA GPU
# (`nvidia-smi -L` lists none): the CPU-only build, from PyTorch's CPU wheel index
# (https://download.pytorch.org/whl/cpu), because on Linux the build pip finds by default
# bundles CUDA (gigabytes); if that index cannot be reached, whatever `pip install torch` finds
# (a local wheel, a configured mirror). With an NVIDIA GPU: the default build, with CUDA.
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
HAVE_GPU := $(shell nvidia-smi -L 2>/dev/null | grep -q GPU && echo yes)

.PHONY: demo test

demo: $(VENV)/.installed
	$(VENV)/bin/windowloader --max-length 256 --stride 128 --batch-size 4

test: $(VENV)/.installed
	$(PY) -m pytest -q -rs $(PYTEST_ARGS)

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
ifeq ($(HAVE_GPU),yes)
	$(PY) -m pip install -q "$(TORCH)"
else
	$(PY) -m pip install -q --retries 1 --timeout 20 --index-url $(TORCH_CPU_INDEX) "$(TORCH)" \
		|| $(PY) -m pip install -q "$(TORCH)"
endif
	$(PY) -m pip install -q -e ".[all]"
	touch $@
