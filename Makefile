# Two commands set everything up on a fresh machine:
#   make demo   -> installs mmgen and starts the web UI on the shipped demo bundle
#   make test   -> installs mmgen with its test dependencies and runs the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned to the release this project is developed and tested with
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: setup setup-dev demo test test-fast system-deps data clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed
setup-dev: $(VENV)/.installed-dev

demo: setup
	$(BIN)/mmgen webui

test: setup-dev
	$(BIN)/python -m pytest -q

test-fast: setup-dev
	$(BIN)/python -m pytest -q -m "not slow"

# Debian packages used by the emoji dataset and the browser tests (run as root)
system-deps:
	apt-get update -qq
	apt-get install -y -qq fonts-noto-color-emoji unicode-data chromium

data: setup
	$(BIN)/mmgen data text --source shakespeare

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
