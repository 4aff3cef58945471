"""The configuration schema: every key of configuration.toml in one table.

Each option is a field of a frozen dataclass whose metadata holds its check and
its one-line doc; ``SCHEMA`` is the table built from those fields, so the
defaults, the types, the validators, the shipped commented file and ``cocoon
env`` all come from one place. Values are checked the same way whether they
come from the TOML file, an annotation (a string) or the environment.

Stdlib only and cheap to import: this module is on the CLI path.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from cocoon.errors import InvalidArgument

# The guest needs this much RAM to boot its kernel, Python and crun.
MIN_MEMORY_MIB = 128
# Linux's x86 COMMAND_LINE_SIZE.
MAX_KERNEL_PARAMS = 2048


# --- checks -----------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """A value type and its constraint.

    ``type`` is one of str, int, float, bool, tuple (a list of strings);
    ``expect`` completes "expected ..."; ``ok`` is the constraint on a value
    of the right type; ``sep`` splits a list given as one string (annotations,
    environment).
    """

    type: type
    expect: str
    ok: Callable[[Any], bool] = lambda _value: True
    choices: tuple[str, ...] = ()
    sep: str = ","


def _text_ok(value: str) -> bool:
    return not any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)


def _abs_path_ok(value: str) -> bool:
    return value.startswith("/") and _text_ok(value)


def _regex_ok(value: str) -> bool:
    try:
        re.compile(value)
    except re.error:
        return False
    return True


def _int(minimum: int, note: str = "") -> Check:
    return Check(int, f"an integer >= {minimum}{note}", lambda v: v >= minimum)


def _choice(*values: str) -> Check:
    shown = ", ".join(f'"{v}"' for v in values)
    return Check(str, f"one of {shown}", lambda v: v in values, choices=values)


BOOL = Check(bool, "true or false")
TEXT = Check(str, "a string without control characters", _text_ok)
ABS_PATH = Check(str, "an absolute path", _abs_path_ok)
ASSET_PATH = Check(
    str,
    'an absolute path, or "" for the asset cache',
    lambda v: v == "" or _abs_path_ok(v),
)
OPT_PATH = Check(str, 'an absolute path, or ""', lambda v: v == "" or _abs_path_ok(v))
KERNEL_PARAMS = Check(
    str,
    f"kernel parameters on one line (at most {MAX_KERNEL_PARAMS} characters)",
    lambda v: _text_ok(v) and len(v) <= MAX_KERNEL_PARAMS,
)
SECONDS = Check(float, "a number of seconds > 0", lambda v: math.isfinite(v) and v > 0)
SECONDS_OR_OFF = Check(
    float, "a number of seconds >= 0 (0 = off)", lambda v: math.isfinite(v) and v >= 0
)
REGEX_LIST = Check(
    tuple, "a list of regular expressions", lambda v: all(_text_ok(x) and _regex_ok(x) for x in v)
)
GLOB_LIST = Check(tuple, "a list of absolute path globs", lambda v: all(_abs_path_ok(x) for x in v))
# Kata separates kernel modules with ";" because module parameters can hold commas.
# The guest agent applies the same rule (cocoon.guest.system.module_argv).
_MODULE_SPEC = re.compile(
    r"^\s*[A-Za-z0-9_-]{1,64}(\s+[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}(=\S*)?)*\s*$"
)
MODULE_LIST = Check(
    tuple,
    'a list of "module [param=value ...]" strings',
    lambda v: all(_text_ok(x) and _MODULE_SPEC.match(x) for x in v),
    sep=";",
)


# --- the table --------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """One option: where it lives, its default, its check and its doc."""

    section: str
    name: str
    default: Any
    check: Check
    doc: str
    # False for options a pod must never set for itself (the allowlists, host limits).
    annotatable: bool = True
    # Rule 2: the key naming the globs an annotated value must match (a host path to execute).
    allowed_by: str = ""

    @property
    def where(self) -> str:
        return f"[{self.section}] {self.name}"


def _meta(
    check: Check, doc: str, *, annotatable: bool = True, allowed_by: str = ""
) -> dict[str, Any]:
    """A field's metadata: what ``Key`` holds besides the name and the default."""
    return {"check": check, "doc": doc, "annotatable": annotatable, "allowed_by": allowed_by}


DEFAULT_ENABLE_ANNOTATIONS = (
    "kernel_params",
    "default_vcpus",
    "default_memory",
    "default_maxvcpus",
    "default_maxmemory",
)

# debug_console is not among them: a pod cannot open a shell into its VM unless allowed.
DEFAULT_AGENT_ANNOTATIONS = ("dial_timeout", "kernel_modules")


@dataclass(frozen=True)
class HypervisorConfig:
    """``[hypervisor.qemu]``."""

    path: str = field(
        default="/usr/bin/qemu-system-x86_64",
        metadata=_meta(
            ABS_PATH, "QEMU system emulator to run.", allowed_by="valid_hypervisor_paths"
        ),
    )
    kernel: str = field(
        default="", metadata=_meta(ASSET_PATH, 'Guest kernel; "" = from the asset cache.')
    )
    image: str = field(
        default="", metadata=_meta(ASSET_PATH, 'Guest root image; "" = from the asset cache.')
    )
    initrd: str = field(
        default="", metadata=_meta(ASSET_PATH, 'Guest initramfs; "" = from the asset cache.')
    )
    machine_type: str = field(
        default="pc",
        metadata=_meta(
            _choice("pc", "microvm"), "QEMU machine; only pc can hot-plug vCPUs and memory."
        ),
    )
    kernel_params: str = field(
        default="",
        metadata=_meta(
            KERNEL_PARAMS, "Extra guest kernel parameters (annotations append to them)."
        ),
    )
    default_vcpus: int = field(
        default=1,
        metadata=_meta(_int(1), "vCPUs the VM boots with (plus the workload in static mode)."),
    )
    default_maxvcpus: int = field(
        default=0,
        metadata=_meta(
            _int(0, " (0 = host CPUs)"), "Ceiling for hot-plugged vCPUs; 0 = the host's CPUs."
        ),
    )
    default_memory: int = field(
        default=256,
        metadata=_meta(
            _int(MIN_MEMORY_MIB, " (MiB)"),
            f"MiB of RAM the VM boots with; at least {MIN_MEMORY_MIB} to boot Python and crun.",
        ),
    )
    default_maxmemory: int = field(
        default=0,
        metadata=_meta(
            _int(0, " (MiB, 0 = host RAM)"), "Ceiling in MiB for hot-plugged memory; 0 = host RAM."
        ),
    )
    memory_slots: int = field(default=10, metadata=_meta(_int(1), "DIMM slots for memory hotplug."))
    reclaim_guest_freed_memory: bool = field(
        default=False,
        metadata=_meta(
            BOOL,
            "Free page reporting: memory the guest frees returns to the host (cold boots only).",
        ),
    )
    tcg_tb_size: int = field(
        default=0,
        metadata=_meta(
            _int(0, " (MiB, 0 = QEMU's default)"),
            "TCG translation cache per VM (software emulation): memory against re-translation.",
        ),
    )
    shared_fs: str = field(
        default="virtio-9p",
        metadata=_meta(
            _choice("virtio-9p", "virtio-fs"),
            "How the container rootfs reaches the guest (VM templates need virtio-9p).",
        ),
    )
    virtio_fs_daemon: str = field(
        default="/usr/lib/qemu/virtiofsd",
        metadata=_meta(
            ABS_PATH,
            "virtiofsd binary, used with shared_fs = virtio-fs.",
            allowed_by="valid_virtio_fs_daemon_paths",
        ),
    )
    enable_annotations: tuple[str, ...] = field(
        default=DEFAULT_ENABLE_ANNOTATIONS,
        metadata=_meta(
            REGEX_LIST,
            "Regexes of [hypervisor.qemu] keys that pod annotations may set (full match).",
            annotatable=False,
        ),
    )
    valid_hypervisor_paths: tuple[str, ...] = field(
        default=("/usr/bin/qemu-system-*",),
        metadata=_meta(
            GLOB_LIST,
            "Globs an annotated hypervisor path must match; [] refuses every such annotation.",
            annotatable=False,
        ),
    )
    valid_virtio_fs_daemon_paths: tuple[str, ...] = field(
        default=("/usr/lib/qemu/virtiofsd",),
        metadata=_meta(
            GLOB_LIST,
            "Globs an annotated virtio_fs_daemon must match; [] refuses every such annotation.",
            annotatable=False,
        ),
    )


@dataclass(frozen=True)
class AgentConfig:
    """``[agent]``."""

    dial_timeout: float = field(
        default=60.0, metadata=_meta(SECONDS, "Seconds to wait for the guest agent after boot.")
    )
    kernel_modules: tuple[str, ...] = field(
        default=(),
        metadata=_meta(MODULE_LIST, 'Guest kernel modules to load: "name param=value ...".'),
    )
    debug_console: bool = field(
        default=False,
        metadata=_meta(
            BOOL, "A root shell in the guest, outside the containers: `cocoon debug-console ID`."
        ),
    )
    clock_sync_interval: float = field(
        default=30.0,
        metadata=_meta(
            SECONDS_OR_OFF,
            "Seconds between corrections of the guest's clock to the host's; 0 = never.",
            annotatable=False,
        ),
    )
    enable_annotations: tuple[str, ...] = field(
        default=DEFAULT_AGENT_ANNOTATIONS,
        metadata=_meta(
            REGEX_LIST,
            "Regexes of [agent] keys that pod annotations may set (full match).",
            annotatable=False,
        ),
    )


@dataclass(frozen=True)
class RuntimeConfig:
    """``[runtime]``."""

    static_sandbox_resource_mgmt: bool = field(
        default=False,
        metadata=_meta(BOOL, "Size the VM once at creation (no hotplug) instead of resizing it."),
    )
    sandbox_cgroup_only: bool = field(
        default=False,
        metadata=_meta(BOOL, "Put all host processes of a sandbox in one host cgroup."),
    )
    internetworking_model: str = field(
        default="tcfilter",
        metadata=_meta(
            _choice("tcfilter", "none"), "How the VM's tap is joined to the pod network."
        ),
    )
    rootfs_mode: str = field(
        default="share",
        metadata=_meta(
            _choice("share", "block"),
            "How a container's rootfs reaches the guest: the host-dir share, or a read-only "
            "image on virtio-blk with the writes on a guest-formatted scratch disk.",
        ),
    )
    enable_debug: bool = field(default=False, metadata=_meta(BOOL, "Debug logging in the runtime."))
    host_overhead_memory: int = field(
        default=384,
        metadata=_meta(
            _int(0, " (MiB)"),
            "MiB added to the host cgroup's limit for QEMU and TCG beyond guest RAM.",
            annotatable=False,
        ),
    )


@dataclass(frozen=True)
class FactoryConfig:
    """``[factory]``."""

    enable_template: bool = field(
        default=True,
        metadata=_meta(
            BOOL, "Start VMs as clones of a saved template VM (needs virtio-9p); else cold boot."
        ),
    )
    template_path: str = field(
        default="",
        metadata=_meta(
            OPT_PATH,
            'Directory of the templates (root only); "" = /var/lib/cocoon/templates.',
            annotatable=False,
        ),
    )
    max_templates: int = field(
        default=8,
        metadata=_meta(
            _int(1),
            "Templates kept at most (least recently used evicted; when full, a new shape "
            "gets one on its second use).",
            annotatable=False,
        ),
    )
    max_template_mib: int = field(
        default=2048,
        metadata=_meta(
            _int(1, " (MiB)"),
            "MiB of disk the templates may use at most (each is ~100+ MiB).",
            annotatable=False,
        ),
    )


@dataclass(frozen=True)
class Config:
    """The effective configuration."""

    hypervisor: HypervisorConfig = field(default_factory=HypervisorConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    factory: FactoryConfig = field(default_factory=FactoryConfig)


# Section name in the TOML file -> Config attribute and dataclass.
SECTIONS: dict[str, tuple[str, type[Any]]] = {
    "hypervisor.qemu": ("hypervisor", HypervisorConfig),
    "agent": ("agent", AgentConfig),
    "runtime": ("runtime", RuntimeConfig),
    "factory": ("factory", FactoryConfig),
}


def _build_schema() -> dict[str, dict[str, Key]]:
    table: dict[str, dict[str, Key]] = {}
    for section, (_attr, cls) in SECTIONS.items():
        table[section] = {
            f.name: Key(
                section,
                f.name,
                f.default,
                f.metadata["check"],
                f.metadata["doc"],
                f.metadata["annotatable"],
                f.metadata["allowed_by"],
            )
            for f in fields(cls)
        }
    return table


SCHEMA: dict[str, dict[str, Key]] = _build_schema()
DEFAULTS = Config()


def keys() -> Iterator[Key]:
    """Every option, in file order."""
    for section in SCHEMA.values():
        yield from section.values()


# --- values -----------------------------------------------------------------


def _toml_string(value: str) -> str:
    out = ['"']
    for c in value:
        if c == '"':
            out.append('\\"')
        elif c == "\\":
            out.append("\\\\")
        elif c in "\b\t\n\f\r":
            out.append({"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}[c])
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def toml_value(value: Any) -> str:
    """A value as TOML (also how errors show the offending value)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return _toml_string(str(value))


def _bad(key: Key, value: Any, prefix: str) -> InvalidArgument:
    return InvalidArgument(
        f"{prefix}{key.where}: expected {key.check.expect}, got {toml_value(value)}"
    )


def coerce(key: Key, value: Any, prefix: str = "") -> Any:
    """A TOML (or JSON) value checked against ``key``; lists become tuples.

    ``prefix`` goes in front of the error ("<file>: ").
    """
    want = key.check.type
    if want is bool:
        ok_type = isinstance(value, bool)
    elif want is int:
        ok_type = isinstance(value, int) and not isinstance(value, bool)
    elif want is float:
        ok_type = isinstance(value, int | float) and not isinstance(value, bool)
        if ok_type:
            value = float(value)
    elif want is tuple:
        ok_type = isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
        if ok_type:
            value = tuple(value)
    else:
        ok_type = isinstance(value, str)
    if not ok_type or not key.check.ok(value):
        raise _bad(key, value, prefix)
    return value


def parse_string(key: Key, text: str, prefix: str = "") -> Any:
    """A value given as a string (annotation, environment) parsed per ``key``'s type.

    Booleans are "true"/"false" (any case), lists are ``sep``-separated with
    blanks dropped; the result is then checked like a TOML value.
    """
    want = key.check.type
    value: Any = text
    try:
        if want is bool:
            lowered = text.strip().lower()
            if lowered not in ("true", "false"):
                raise ValueError(text)
            value = lowered == "true"
        elif want is int:
            value = int(text.strip(), 10)
        elif want is float:
            value = float(text.strip())
        elif want is tuple:
            value = tuple(p.strip() for p in text.split(key.check.sep) if p.strip())
    except ValueError:
        raise _bad(key, text, prefix) from None
    return coerce(key, value, prefix)


def get(config: Config, section: str, name: str) -> Any:
    """The value of ``[section] name``."""
    return getattr(getattr(config, SECTIONS[section][0]), name)


def with_values(config: Config, values: Mapping[tuple[str, str], Any]) -> Config:
    """``config`` with ``{(section, name): value}`` replaced; values must be coerced already."""
    by_section: dict[str, dict[str, Any]] = {}
    for (section, name), value in values.items():
        by_section.setdefault(section, {})[name] = value
    changes = {
        SECTIONS[section][0]: replace(getattr(config, SECTIONS[section][0]), **kw)
        for section, kw in by_section.items()
    }
    return replace(config, **changes)


def check_consistency(config: Config, prefix: str = "") -> Config:
    """Rules between keys; returns ``config`` or raises InvalidArgument naming the key."""
    hv = config.hypervisor
    if hv.default_maxvcpus and hv.default_vcpus > hv.default_maxvcpus:
        raise InvalidArgument(
            f"{prefix}[hypervisor.qemu] default_vcpus: {hv.default_vcpus} is more than "
            f"default_maxvcpus {hv.default_maxvcpus}"
        )
    if hv.default_maxmemory and hv.default_memory > hv.default_maxmemory:
        raise InvalidArgument(
            f"{prefix}[hypervisor.qemu] default_memory: {hv.default_memory} MiB is more than "
            f"default_maxmemory {hv.default_maxmemory} MiB"
        )
    return config
