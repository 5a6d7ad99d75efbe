# The two commands a new user needs (see README): `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export RAGAS_DO_NOT_TRACK := true
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup run run-cli test test-fast lint services bench

setup:
	bash scripts/setup.sh

services:
	bash scripts/services.sh

## Set up, then run the whole pipeline end to end on the embedded default (no key, no GPU):
## the knowledge_distillation DAG through `airflow dags test`, then print the report's tables.
run: setup
	bash scripts/run-dag.sh

## The same pipeline without Airflow (the library's own runner).
run-cli: setup
	$(PY) -m kdflow run

## Set up, then run every test (the slow end-to-end ones included), as CI does. Two pytest workers: the
## Celery-topology tests in one (their daemons mostly wait), the other modules wherever a worker is free
## (tests/conftest.py makes the work units); TEST_WORKERS=0 runs them all in one process.
TEST_WORKERS ?= 2
test: setup services
	bash scripts/setup-browser.sh
	$(PY) -m pytest -v --timeout=1800 --durations=25 -n $(TEST_WORKERS) $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" -q $(PYTEST_ARGS)

## Benchmark the pipeline and each stage (about 90 min on 2 CPU cores, 70 of them the throughput section); writes
## docs/benchmarks/results.{json,md}.
## One section alone: make bench BENCH_ARGS="--sections generation".
bench: setup
	$(PY) -m kdflow.bench $(BENCH_ARGS)

lint: setup
	$(VENV)/bin/ruff check include dags plugins tests
