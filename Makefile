# The README's two commands: `make demo` (set up, then run the main job on built-in defaults) and `make test`
# (set up, then lint and run every test). .ci/run calls `make test`. Both build into ./.venv from the project's
# own files; torch is pinned to the CPU build in .ci/constraints.txt so pip never pulls CUDA wheels.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
CONSTRAINTS := -c .ci/constraints.txt
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
PYTEST_ARGS ?=

.PHONY: setup demo test lint bench-cpu bench-gpu clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

setup: $(BIN)/python
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(FIND_LINKS) $(CONSTRAINTS) torch==2.13.0 scikit-build-core pybind11
	$(PIP) install -q $(FIND_LINKS) $(CONSTRAINTS) --no-build-isolation -e ".[test,triton,data,metrics,bench]"
	$(PIP) install -q $(CONSTRAINTS) --no-deps unimol-tools==0.1.6  # Uni-Mol parity tests only (see pyproject)
	$(BIN)/python -c "import molm_fast, json; print(json.dumps(molm_fast.build_info()))"

demo: setup
	$(BIN)/molm-fast demo

lint: setup
	$(BIN)/ruff check .

test: setup
	$(BIN)/ruff check .
	@if command -v nvcc >/dev/null 2>&1; then \
	  $(BIN)/python -c "import molm_fast; i = molm_fast.build_info(); assert i['cuda'], 'nvcc is on PATH but the CUDA sources were not compiled'; print('CUDA sources compiled for', i['cuda_archs'])"; fi
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench-cpu: setup
	$(BIN)/python -m benchmarks.run --suite cpu

# On the GPU machine (no venv, no network, no RDKit): its python3 builds molm_fast for sm_90, runs pytest -m gpu and
# the GPU benchmarks in <= 6 min. Set MOLM_FAST_GIT_COMMIT there (no .git); BENCH_OUT=$$OUT brings the JSON back.
GPU_PY ?= python3
BENCH_OUT ?= benchmarks/results
bench-gpu:
	$(GPU_PY) -m benchmarks.run --suite gpu --out $(BENCH_OUT)

clean:
	rm -rf build dist $(VENV)
