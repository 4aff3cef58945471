"""The template store stays bounded when pods vary their shape (issue 11.5).

Real boots under TCG are slow on a shared host, so the bound is 2 and there are
five shapes (differing by a harmless kernel parameter set by annotation); the
unit tests (tests/unit/factory/test_choose_bound.py) run twenty.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Env

KERNEL_PARAMS = "io.katacontainers.config.hypervisor.kernel_params"


@pytest.fixture
def store() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cocoon-tmpl-bound-", dir="/var/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _templates(store: Path) -> list[Path]:
    return [p for p in store.iterdir() if p.is_dir() and not p.name.startswith(".")]


def test_the_store_stays_bounded_under_many_shapes(env: Env, store: Path) -> None:
    env_vars = {"COCOON_TEMPLATE_PATH": str(store), "COCOON_MAX_TEMPLATES": "2"}

    def run(shape: str) -> str:
        b = env.bundle(["/bin/true"], annotations={KERNEL_PARAMS: f"cocoon_test_shape={shape}"})
        r = env.run("--debug", "run", "--bundle", str(b), f"c{shape}", env=env_vars)
        assert r.returncode == 0, r.stderr.decode()
        return r.stderr.decode()

    for shape in "abcde":
        run(shape)
        assert len(_templates(store)) <= 2
    assert len(_templates(store)) == 2
    log = (store / "factory.log").read_text()
    assert log.count("made template") == 2
    run("c")  # its second use: its template is made, the least recently used goes
    assert len(_templates(store)) == 2
    log = (store / "factory.log").read_text()
    assert log.count("made template") == 3 and "least recently used" in log
    status = env.run("factory", "status", env=env_vars)
    assert status.returncode == 0, status.stderr.decode()
    assert "2 of at most 2 templates" in status.stdout.decode()
    assert "last use" in status.stdout.decode()
