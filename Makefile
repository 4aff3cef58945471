# The two commands of the README: `make demo` and `make test` (as root, Debian 12).
.PHONY: setup setup-engines demo test test-unit test-e2e test-engines lint bench

setup:
	./scripts/setup.sh

# The engines the end-to-end tests drive (podman, containerd, dockerd); the
# tests start each with private state and stop it by PID.
setup-engines:
	./scripts/setup-engines.sh

demo: setup
	./scripts/demo.sh

# Cheap unit tests first, then the end-to-end tests that boot VMs, then the engines.
test: setup setup-engines
	.venv/bin/pytest -q tests/unit
	.venv/bin/pytest -q tests/e2e
	.venv/bin/pytest -q tests/engines

test-unit:
	.venv/bin/pytest -q tests/unit

test-e2e:
	.venv/bin/pytest -q tests/e2e

test-engines:
	.venv/bin/pytest -q tests/engines

lint:
	.venv/bin/ruff check cocoon tests bench
	.venv/bin/mypy

bench: setup
	.venv/bin/python bench/run.py
	.venv/bin/python bench/templates.py
	.venv/bin/python bench/cli.py
	.venv/bin/python bench/net.py
	.venv/bin/python bench/shim.py
	.venv/bin/python bench/volumes.py
	.venv/bin/python bench/join.py
	.venv/bin/python bench/checkpoint.py
	.venv/bin/python bench/migrate.py
