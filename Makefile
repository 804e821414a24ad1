# The README's two commands. Both create or reuse .venv and install everything.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: this machine's wheel folder has the CPU build of 2.13.0 (PyPI's Linux
	# wheel is the CUDA build, several GB: the README's Install says how to get the CPU one).
	$(BIN)/pip install -q "torch==2.13.0" || $(BIN)/pip install -q "torch>=2.4,<2.15"
	# The Ray the cluster's image ships (the `cluster` extra's pin; tests/test_cluster.py keeps
	# them in step), so a new Ray release cannot change what `make test` runs.
	$(BIN)/pip install -q -e ".[test]" "ray[tune]==2.60.0"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/rvrae demo

test: $(STAMP)
	$(BIN)/python -m pytest tests

clean:
	rm -rf $(VENV) results/demo
