"""What the host parses from users: the configuration TOML, pod annotations, the
bundle's config.json (and what the CLI reads from it before booting anything).
Bad input is an InvalidArgument (one line), never another exception."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cocoon.config.annotations import COCOON_PREFIX, KATA_PREFIX, apply_annotations
from cocoon.config.loader import DEFAULTS, from_dict, parse
from cocoon.config.schema import SCHEMA
from cocoon.errors import CocoonError, InvalidArgument
from cocoon.network.netns import choose as netns_choose
from cocoon.oci.hooks import hooks_of
from cocoon.oci.spec import validate_spec, vm_compatibility
from cocoon.resources.sizing import boot_workload, container_workload
from cocoon.service.hostcg import plan_for
from tests.unit.fuzz.strategies import FUZZ, JSON, SCALARS

KEYS = [(section, name) for section, table in SCHEMA.items() for name in table]
TOML_VALUES = st.one_of(
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.floats(allow_nan=False),
    st.text(max_size=30),
    st.lists(st.text(max_size=10), max_size=3),
    st.lists(st.integers(), max_size=3),
)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value) if value == value and abs(value) != float("inf") else "0.0"
    return str(value)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(KEYS), TOML_VALUES), max_size=6))
def test_configuration_values(pairs: list[tuple[tuple[str, str], Any]]) -> None:
    tables: dict[str, list[str]] = {}
    for (section, name), value in pairs:
        tables.setdefault(section, []).append(f"{name} = {_toml(value)}")
    text = "\n".join(
        f"[{section}]\n" + "\n".join(dict.fromkeys(lines)) for section, lines in tables.items()
    )
    try:
        parse(text, "fuzz.toml")
    except InvalidArgument as exc:
        assert str(exc).startswith("fuzz.toml") and "\n" not in str(exc).strip("\n")


@FUZZ
@given(st.text(max_size=200))
def test_configuration_text(text: str) -> None:
    with contextlib.suppress(InvalidArgument):
        parse(text, "fuzz.toml")


@FUZZ
@given(st.dictionaries(st.text(max_size=10), JSON, max_size=4))
def test_configuration_shapes(data: dict[str, Any]) -> None:
    with contextlib.suppress(InvalidArgument):
        from_dict(data, "fuzz")


ANNOTATION_NAMES = st.one_of(
    st.sampled_from(
        [
            f"{prefix}{ann}.{name}"
            for prefix in (COCOON_PREFIX, KATA_PREFIX)
            for ann, section in (
                ("hypervisor", "hypervisor.qemu"),
                ("agent", "agent"),
                ("runtime", "runtime"),
                ("factory", "factory"),
            )
            for name in SCHEMA.get(section, {})
        ]
    ),
    st.text(max_size=12).map(lambda t: COCOON_PREFIX + t),
    st.text(max_size=12).map(lambda t: KATA_PREFIX + "hypervisor." + t),
    st.text(max_size=20),
)


@FUZZ
@given(st.dictionaries(ANNOTATION_NAMES, st.text(max_size=40), max_size=5))
def test_annotations(annotations: dict[str, str]) -> None:
    with contextlib.suppress(InvalidArgument):
        apply_annotations(DEFAULTS, annotations)


SPEC_PARTS = {
    "ociVersion": st.one_of(st.just("1.0.2"), JSON),
    "root": st.one_of(st.fixed_dictionaries({"path": st.just("rootfs")}), JSON),
    "process": st.one_of(
        st.fixed_dictionaries(
            {"args": st.one_of(st.just(["sh"]), JSON)},
            optional={"cwd": JSON, "env": JSON, "terminal": JSON, "user": JSON},
        ),
        JSON,
    ),
    "mounts": st.one_of(
        st.lists(
            st.dictionaries(st.sampled_from(["destination", "type", "source", "options"]), JSON)
        ),
        JSON,
    ),
    "annotations": st.one_of(st.dictionaries(st.text(max_size=30), st.text(max_size=10)), JSON),
    "linux": st.one_of(
        st.fixed_dictionaries(
            {},
            optional={
                "resources": st.one_of(
                    st.fixed_dictionaries(
                        {},
                        optional={
                            "cpu": st.dictionaries(
                                st.sampled_from(["quota", "period", "shares", "cpus"]), JSON
                            ),
                            "memory": st.dictionaries(st.sampled_from(["limit", "swap"]), JSON),
                        },
                    ),
                    JSON,
                ),
                "namespaces": st.one_of(
                    st.lists(
                        st.dictionaries(st.sampled_from(["type", "path"]), JSON) | SCALARS,
                        max_size=3,
                    ),
                    JSON,
                ),
                "cgroupsPath": JSON,
            },
        ),
        JSON,
    ),
    "hooks": JSON,
    "vm": JSON,
}
VALID = {"ociVersion": st.just("1.0.2"), "root": st.just({"path": "rootfs"})}
# Mostly specs that pass the top-level checks, so the parsers behind them are reached.
OTHERS = {k: v for k, v in SPEC_PARTS.items() if k not in VALID}
SPECS = st.fixed_dictionaries(VALID, optional=OTHERS) | st.fixed_dictionaries(
    {}, optional=SPEC_PARTS
)


@settings(parent=FUZZ, max_examples=300)
@given(SPECS)
def test_config_json(spec: Any) -> None:
    """validate_spec, then what the CLI computes from the spec before booting."""
    try:
        validate_spec(spec, Path("/b/config.json"))
    except InvalidArgument:
        return
    steps = (
        vm_compatibility,
        container_workload,
        boot_workload,
        netns_choose,
        lambda sp: plan_for(sp, "c1", 256, 384),
        lambda sp: [hooks_of(sp, k) for k in ("createRuntime", "poststop")],
    )
    for step in steps:
        with contextlib.suppress(CocoonError):
            step(spec)
