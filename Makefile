# One command each, on a fresh machine: `make serve` (the main job) and `make test`.
# `make serve RERANKER=<checkpoint dir or Hugging Face id>` also exports and serves that FBNL reranker.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYVER := $(shell $(PYTHON) -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')

.PHONY: setup serve test bench lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml bench/loadtest/install_perf_analyzer.sh
	@# The Python backend stub bundled with nvidia-pytriton links the system libpython; the tests run a real
	@# redis-server (the passage store shared by replicas).
	@(ldconfig -p | grep -q "libpython$(PYVER).so.1.0" && command -v redis-server >/dev/null) || \
		(apt-get update -qq && apt-get install -y -qq "libpython$(PYVER)" redis-server)
	$(PYTHON) -m venv $(VENV)
	@# The local CPU build of torch first, so that no resolver pulls CUDA torch.
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[all]"
	@# perf_analyzer, Triton's load tester (docs/load-testing.md), beside the venv; a test drives it.
	bash bench/loadtest/install_perf_analyzer.sh $(VENV)
	touch $@

serve: setup
	$(BIN)/nestrank serve $(if $(RERANKER),--reranker "$(RERANKER)")

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/nestrank bench embed
	$(BIN)/nestrank bench fbnl
	$(BIN)/nestrank bench compare

lint: setup
	$(BIN)/pip install --quiet ruff && $(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) model_repository/*/ bench/out
