# Two set-up commands do everything on a fresh machine:
#   make demo   -> virtual environment, install, run `slimdiff demo` on the toy world
#   make test   -> virtual environment, install, run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.slimdiff-installed

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: the CPU build that lies on these machines' disk
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/slimdiff demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q -n auto --durations=25 tests

.PHONY: install demo test
