"""What the agent passes to modprobe for ``[agent] kernel_modules``."""

from __future__ import annotations

import pytest

from cocoon.guest.system import module_argv


def test_module_and_parameters_become_modprobe_arguments() -> None:
    assert module_argv("bridge") == ["/usr/sbin/modprobe", "--", "bridge"]
    assert module_argv("  dummy numdummies=2 ") == [
        "/usr/sbin/modprobe",
        "--",
        "dummy",
        "numdummies=2",
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("--config=/tmp/x", "not a module name"),
        ("../../tmp/evil", "not a module name"),
        ("bridge -v", "bad parameter '-v'"),
        ("bridge --dry-run", "bad parameter"),
    ],
)
def test_nothing_reaches_modprobe_as_an_option(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        module_argv(spec)
