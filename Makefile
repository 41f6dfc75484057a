# make run    install requirements.txt into .venv, start the app
# make test   install requirements-test.txt into .venv, run the tests
# make bench  install requirements-test.txt into .venv (transformers is the peer), run the benchmarks
# make train-default  retrain the bundled default model from seed 0 on the CPU (recipes/train; training and
#             held-out evaluation about 95 min on 2 cores, plus generating the clips the first time): data in
#             .cache/train-data, weights, log, curves and metrics in assets/default-model
#
# .venv is created with `python3 -m venv` when missing.  A stamp file per requirement set records
# the last install, so pip only runs again when a requirements file changes.
# PIP_FLAGS passes extra options to pip (e.g. an --extra-index-url for CPU torch wheels).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP_FLAGS ?=

RUN_STAMP := $(VENV)/.make-run
TEST_STAMP := $(VENV)/.make-test

.PHONY: run test bench train-default

$(PY):
	$(PYTHON) -m venv $(VENV)

# The C++ decode kernels (kernels/cpu) are compiled here, with the install, so that the first
# question after the first start does not wait for the compiler (about 20 s; the server would
# otherwise start it in the background).
$(RUN_STAMP): requirements.txt | $(PY)
	$(PY) -m pip install $(PIP_FLAGS) -r requirements.txt
	$(PY) -c "from kernels import cpu; cpu.ops()"
	touch $@

# transformers' image/video processors (the oracle) import torchvision; its PyPI wheel is a CUDA
# build, so only its pure-Python part is used, installed without dependencies beside the venv
# (tests/hf_oracle.py shims the two C++ op schemas its import registers).

$(TEST_STAMP): requirements.txt requirements-test.txt | $(PY)
	$(PY) -m pip install $(PIP_FLAGS) -r requirements-test.txt
	$(PY) -m pip install $(PIP_FLAGS) --no-deps --upgrade --target .cache/pylib torchvision==0.28.0
	touch $@

run: $(RUN_STAMP)
	$(PY) -m app

test: $(TEST_STAMP)
	$(PY) -m pytest -q tests

bench: $(TEST_STAMP)
	$(PY) bench/decoder.py
	$(PY) bench/speculative.py

train-default: $(RUN_STAMP)
	OMP_WAIT_POLICY=PASSIVE $(PY) -m recipes.train run --out assets/default-model --seed 0
