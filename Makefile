# Quick start: `make demo` then `make test`. Everything runs inside .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
BENCH_STAMP := $(VENV)/.installed-bench
JOBS ?= 2

.PHONY: demo test test-models lint conformance bench bench-zoo bench-wasm clean cross-tools

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

# Test dependencies; torch is pinned to the CPU wheel (an unpinned torch pulls CUDA).
$(TEST_STAMP): $(STAMP) examples/sim_npu/pyproject.toml
	$(PIP) install -q -e '.[test]'
	$(PIP) install -q torch==2.13.0 || echo "torch not installed: torch frontend tests will skip"
	$(PIP) install -q --no-deps -e examples/sim_npu
	touch $@

demo: $(TEST_STAMP)
	$(PY) examples/demo.py

test: $(TEST_STAMP)
	$(PY) -m ruff check src tests bench examples
	$(PY) -m pytest -q -n $(JOBS) tests
	$(PY) -m pytest -q examples/sim_npu

# qemu-user and Debian's cross gcc for tests/unit/test_cross_targets.py, lld's wasm-ld for
# tests/unit/test_wasm.py (root, apt); without them those tests skip. .ci/run calls this
# before `make test`.
CROSS_PACKAGES = qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross \
	gcc-riscv64-linux-gnu libc6-dev-riscv64-cross lld
cross-tools:
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    $(CROSS_PACKAGES) >/dev/null || (apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    $(CROSS_PACKAGES) >/dev/null)

# Every end-to-end model, the slow ones included (compile, ONNX Runtime check, reload).
test-models: $(TEST_STAMP)
	$(PY) -m pytest -q -n $(JOBS) tests/models

lint: $(TEST_STAMP)
	$(PY) -m ruff check src tests bench examples
	$(PY) -m mypy

conformance: $(TEST_STAMP)
	$(PY) tests/conformance/run_conformance.py

bench: $(TEST_STAMP)
	$(PY) bench/models.py

# The zoo's extra; torchvision --no-deps: its wheel is a CUDA build that would pull CUDA torch
# (bench/zoo.py imports only its pure-Python model code). ZOO_ARGS="--models bert,gpt2" etc.
$(BENCH_STAMP): $(TEST_STAMP)
	$(PIP) install -q -e '.[bench]'
	$(PIP) install -q --no-deps 'torchvision==0.29.*'
	touch $@

bench-zoo: $(BENCH_STAMP)
	$(PY) bench/zoo.py $(ZOO_ARGS)

# strataml's wasm32 build under Node vs onnxruntime-web (npm, pinned as in bench/wasm.py, into
# build/ort-web), one thread. Needs node 20+ and wasm-ld (make cross-tools); torch builds the
# CNNs. WASM_ARGS="--models resnet18 --rounds 7 --runs 20" etc.
ORT_WEB := build/ort-web/node_modules/onnxruntime-web/package.json
$(ORT_WEB):
	mkdir -p build/ort-web
	npm install --prefix build/ort-web --no-audit --no-fund --silent onnxruntime-web@1.30.0

bench-wasm: $(TEST_STAMP) $(ORT_WEB)
	$(PY) bench/wasm.py $(WASM_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
