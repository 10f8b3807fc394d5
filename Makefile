# Two commands on a fresh machine:  `make course`  and  `make test`  (see README).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NBVAL_TIMEOUT ?= 900
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export GRADIO_ANALYTICS_ENABLED := False
export TOKENIZERS_PARALLELISM := false
export PYTHONUTF8 := 1

.PHONY: venv course book test test-helpers test-notebooks rehearse standin lab strip browser bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@echo "installing the pinned packages into $(VENV) (first time ~5-10 min: llama.cpp compiles; log: $(VENV)/install.log)"
	@$(PYTHON) -m venv $(VENV)
	@# torch first: on these machines `torch==2.13.0` is the CPU build on local disk.
	@# Then everything: the light set + [test] + [export] + [lab] + [train] (Colab/AutoDL take the light set: README);
	@# [export]'s llama-cpp-python compiles llama.cpp (the multimodal part is not needed), [train]'s DeepSpeed builds no
	@# ops at install time (DS_BUILD_OPS=0). Last, fastllm's runtime for step 11: its wheel carries a CPU library;
	@# --no-deps skips its CUDA runtime wheels. pip's and setuptools' banners go to the log, shown only on failure.
	@# (&& chains the steps: `set -e` would be ignored inside a subshell on the left of ||)
	@( $(PY) -m pip install --quiet --upgrade pip && \
	  $(PY) -m pip install --quiet torch==2.13.0 && \
	  CMAKE_ARGS="-DLLAVA_BUILD=OFF" DS_BUILD_OPS=0 $(PY) -m pip install --quiet -e ".[test,export,lab,train]" && \
	  $(PY) -m pip install --quiet --no-deps ftllm==1.9.0 ) > $(VENV)/install.log 2>&1 \
	  || { tail -n 40 $(VENV)/install.log; echo "install failed: the whole log is $(VENV)/install.log"; exit 1; }
	@touch $(STAMP)

## Execute every notebook headless (tiny profile); executed copies go to build/executed/.
course: venv
	$(PY) -m helpers.course run --profile tiny --out build/executed

## Static HTML site of the executed notebooks (tiny) + docs/, with navigation; every relative link checked.
## Open build/book/index.html in a browser (no server needed).
book: course
	$(PY) -m helpers.book --executed build/executed --out build/book

## helpers tests (pytest) + every notebook under nbval.
test: venv browser
	$(PY) -m pytest tests notebooks --nbval-lax --nbval-current-env --nbval-cell-timeout=$(NBVAL_TIMEOUT) -p no:cacheprovider

test-helpers: venv
	$(PY) -m pytest tests -p no:cacheprovider

test-notebooks: venv
	$(PY) -m pytest notebooks --nbval-lax --nbval-current-env --nbval-cell-timeout=$(NBVAL_TIMEOUT) -p no:cacheprovider

## The real profile rehearsed: every notebook with PROFILE="real" against the offline stand-in hub (real repo ids,
## real configs and file layouts, real-size 1.3B models with random weights), on CPU; prints time and peak RSS.
rehearse: standin
	$(PY) -m helpers.course rehearse $(REHEARSE_FLAGS)

## Build (or check) the stand-in hub in <workspace>/standin-hub (~10 GB; reused while up to date).
standin: venv
	$(PY) -m helpers.standin build

## Headless Debian chromium for the web UI test (needs root/apt; skipped with a note otherwise).
browser:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	  || echo "warning: could not install chromium; the browser test will be skipped"; \
	else echo "note: chromium not installed (sudo apt-get install chromium); the browser test will be skipped"; fi

## JupyterLab on 127.0.0.1 (as root it needs --allow-root, which we pass only for root).
lab: venv
	$(VENV)/bin/jupyter lab --ip=127.0.0.1 --no-browser --notebook-dir=notebooks $$( [ "$$(id -u)" = "0" ] && echo --allow-root )

## Strip outputs from notebooks (the committed state).
strip: venv
	$(PY) -m helpers.course strip

bench: venv
	@for b in benchmarks/p*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf build workspace
