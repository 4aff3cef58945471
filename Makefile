# The two commands of the README: `make demo` and `make test` (as root, Debian 12).
.PHONY: setup demo test test-unit test-e2e lint bench

setup:
	./scripts/setup.sh

demo: setup
	./scripts/demo.sh

# Cheap unit tests first, then the end-to-end tests that boot VMs.
test: setup
	.venv/bin/pytest -q tests/unit
	.venv/bin/pytest -q tests/e2e

lint:
	.venv/bin/ruff check cocoon tests bench
	.venv/bin/mypy

bench: setup
	.venv/bin/python bench/run.py
