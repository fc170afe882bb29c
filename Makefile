# Shortcuts for development; CI runs .ci/run (the README's test command plus the linters).
PYTHON ?= python

.PHONY: test test-all lint format bench-cpu

test:  ## the quick tier: everything but end-to-end runs and builds (< 2 min on 2 cores)
	$(PYTHON) -m pytest -m "not slow and not build"

test-all:  ## every test, as CI runs them
	$(PYTHON) -m pytest

lint:
	ruff check . && ruff format --check .

format:
	ruff check --fix . && ruff format .

bench-cpu:  ## the CPU benchmarks; results go to bench/results/ (see bench/README.md)
	$(PYTHON) bench/bench_blend_regions.py --device cpu
	$(PYTHON) bench/bench_rmix.py --device cpu
	$(PYTHON) bench/bench_step.py --device cpu
