# edgemtl: `make demo` sets up .venv and runs the main job; `make test` runs the test suite.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
EDGEMTL := $(VENV)/bin/edgemtl
DEMO   ?= build/demo
DEMO_STEPS ?= 600

.PHONY: setup demo test test-all clean

setup: $(VENV)/.installed

# torch is pinned and installed first: 2.13.0 comes from the local CPU wheel; anything else pulls CUDA.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	touch $@

demo: setup
	$(EDGEMTL) train --arch mtl-cnn --data scenes --steps $(DEMO_STEPS) -o $(DEMO)/mtl-cnn.pt
	$(EDGEMTL) compile $(DEMO)/mtl-cnn.pt --target host -o $(DEMO)/mtl-cnn-host

test: setup
	$(PY) -m pytest -q

test-all: setup
	$(PY) -m pytest -q -m "not board"

clean:
	rm -rf build
