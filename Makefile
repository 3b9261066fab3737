# The two quick-start commands:  `make demo`  (set up + run the built-in demo)  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
OUT    ?= out/demo

.PHONY: setup demo test test-fast clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test,mrml,dicom]"
	touch $@

demo: setup
	$(VENV)/bin/voxmetric demo --out $(OUT) --overwrite

test: setup
	$(VENV)/bin/pyright
	$(PY) -m pytest -m "not gpu" Testing/Python

test-fast: setup
	$(VENV)/bin/pyright
	$(PY) -m pytest -m "not gpu and not slow" Testing/Python

clean:
	rm -rf $(VENV) out .pytest_cache
