"""Per-pod configuration overrides from OCI annotations.

``io.cocoon.config.<section>.<key>`` with section ``hypervisor`` (the
``[hypervisor.qemu]`` table), ``agent`` or ``runtime``; Kata's
``io.katacontainers.config.<section>.<key>`` are aliases, so Kata users' pod
specs keep working for the options Cocoon has (under the same name, plus
Kata's ``hypervisor.default_max_vcpus``).

Two security rules, as in Kata:

1. a hypervisor (or agent) key is refused unless its name fully matches one
   regex of that section's ``enable_annotations`` (the Kata alias name is tried
   too); ``[agent] debug_console`` is not in the default list;
2. a key whose value is a host path to execute (``path``,
   ``virtio_fs_daemon``) must also match one glob of its ``valid_*_paths``
   list; an empty list refuses them all. The path must be absolute and
   normal (no ``.``/``..``/``//``) and ``*`` does not match ``/``.

The allowlists themselves and host-side limits cannot be annotated. An
annotation that is refused, unknown under these prefixes, or has a bad value
is an InvalidArgument naming it: never silently ignored. Annotations with
other prefixes are none of this module's business.

``kernel_params`` from an annotation is appended to the configured ones (as
Kata does), every other key replaces its value.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from collections.abc import Mapping
from typing import Any

from cocoon.config.schema import (
    SCHEMA,
    Config,
    Key,
    check_consistency,
    get,
    parse_string,
    toml_value,
    with_values,
)
from cocoon.errors import InvalidArgument

COCOON_PREFIX = "io.cocoon.config."
KATA_PREFIX = "io.katacontainers.config."
PREFIXES = (COCOON_PREFIX, KATA_PREFIX)

# Annotation section -> configuration section.
SECTIONS = {"hypervisor": "hypervisor.qemu", "agent": "agent", "runtime": "runtime"}
# Kata annotation names that differ from our key names: (section, kata name) -> our name.
KATA_ALIASES = {("hypervisor", "default_max_vcpus"): "default_maxvcpus"}


def config_annotations(annotations: Mapping[str, str]) -> dict[str, str]:
    """The annotations this module handles (either prefix), others dropped."""
    return {k: v for k, v in annotations.items() if k.startswith(PREFIXES)}


def _resolve(annotation: str) -> tuple[Key, str]:
    """The schema key an annotation sets, and the name it used (for rule 1)."""
    kata = annotation.startswith(KATA_PREFIX)
    rest = annotation[len(KATA_PREFIX if kata else COCOON_PREFIX) :]
    section, _, name = rest.partition(".")
    if section not in SECTIONS or not name:
        known = ", ".join(SECTIONS)
        raise InvalidArgument(f"annotation {annotation}: unknown section (expected one of {known})")
    table = SCHEMA[SECTIONS[section]]
    canonical = KATA_ALIASES.get((section, name), name) if kata else name
    if canonical not in table:
        raise InvalidArgument(
            f"annotation {annotation}: Cocoon has no option {name} in [{SECTIONS[section]}]"
        )
    key = table[canonical]
    if not key.annotatable:
        raise InvalidArgument(f"annotation {annotation}: {key.where} cannot be set by annotation")
    return key, name


def _rule1(config: Config, annotation: str, key: Key, used: str) -> None:
    if key.section == "hypervisor.qemu":
        patterns = config.hypervisor.enable_annotations
    elif key.section == "agent":
        patterns = config.agent.enable_annotations
    else:
        return
    for pattern in patterns:
        if re.fullmatch(pattern, key.name) or re.fullmatch(pattern, used):
            return
    raise InvalidArgument(
        f"annotation {annotation}: not allowed: {key.name} matches no regex in "
        f"[{key.section}] enable_annotations {toml_value(patterns)}"
    )


def path_allowed(path: str, globs: tuple[str, ...] | list[str]) -> bool:
    """Whether ``path`` (absolute, normal) matches one glob, ``*`` not crossing ``/``."""
    if not path.startswith("/") or posixpath.normpath(path) != path:
        return False
    parts = path.split("/")
    for glob in globs:
        pattern = glob.split("/")
        if len(pattern) == len(parts) and all(
            fnmatch.fnmatchcase(p, g) for p, g in zip(parts, pattern, strict=True)
        ):
            return True
    return False


def _rule2(config: Config, annotation: str, key: Key, value: str) -> None:
    if not key.allowed_by:
        return
    globs: tuple[str, ...] = get(config, key.section, key.allowed_by)
    if not globs:
        raise InvalidArgument(
            f"annotation {annotation}: not allowed: [{key.section}] {key.allowed_by} is empty"
        )
    if not path_allowed(value, globs):
        raise InvalidArgument(
            f"annotation {annotation}={toml_value(value)}: not allowed: the path matches no glob "
            f"in [{key.section}] {key.allowed_by} {toml_value(globs)}"
        )


def parse_annotations(config: Config, annotations: Mapping[str, str]) -> dict[tuple[str, str], Any]:
    """The overrides ``{(section, key): value}`` the annotations ask for, checked.

    Raises InvalidArgument naming the first bad annotation (in sorted order).
    """
    values: dict[tuple[str, str], Any] = {}
    origin: dict[tuple[str, str], str] = {}
    for annotation in sorted(config_annotations(annotations)):
        text = annotations[annotation]
        key, used = _resolve(annotation)
        _rule1(config, annotation, key, used)
        value = parse_string(key, text, f"annotation {annotation}: ")
        _rule2(config, annotation, key, value)
        if key.name == "kernel_params":
            value = " ".join(p for p in (config.hypervisor.kernel_params, value) if p)
            value = parse_string(key, value, f"annotation {annotation}: ")
        slot = (key.section, key.name)
        if slot in values and values[slot] != value:
            raise InvalidArgument(
                f"annotation {annotation}: conflicts with {origin[slot]} (both set {key.where})"
            )
        values[slot] = value
        origin[slot] = annotation
    return values


def apply_annotations(config: Config, annotations: Mapping[str, str]) -> Config:
    """``config`` with the pod's annotation overrides applied (see the module doc)."""
    values = parse_annotations(config, annotations)
    if not values:
        return config
    return check_consistency(with_values(config, values), "annotations: ")
