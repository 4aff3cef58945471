from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from cocoon.config import loader
from cocoon.config.schema import (
    DEFAULTS,
    SCHEMA,
    AgentConfig,
    Config,
    HypervisorConfig,
    RuntimeConfig,
    get,
    keys,
    toml_value,
)
from cocoon.errors import InvalidArgument

NO_ENV: dict[str, str] = {}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "configuration.toml"
    path.write_text(text)
    return path


def load_text(tmp_path: Path, text: str) -> Config:
    return loader.load(str(write(tmp_path, text)), NO_ENV)


# --- the table and the shipped file -------------------------------------------


def test_schema_covers_every_field_with_doc_and_valid_default() -> None:
    assert list(SCHEMA) == ["hypervisor.qemu", "agent", "runtime", "factory"]
    for key in keys():
        assert key.doc and key.doc.endswith("."), key.where
        assert key.check.ok(key.default), key.where
        assert get(DEFAULTS, key.section, key.name) == key.default


def test_defaults_match_the_brief() -> None:
    hv = DEFAULTS.hypervisor
    assert hv.shared_fs == "virtio-9p"
    assert hv.machine_type == "pc"
    assert hv.default_vcpus == 1 and hv.default_maxvcpus == 0
    assert hv.default_memory >= 128 and hv.default_maxmemory == 0
    assert hv.enable_annotations == (
        "kernel_params",
        "default_vcpus",
        "default_memory",
        "default_maxvcpus",
        "default_maxmemory",
    )
    assert hv.valid_hypervisor_paths == ("/usr/bin/qemu-system-*",)
    assert hv.valid_virtio_fs_daemon_paths == ("/usr/lib/qemu/virtiofsd",)
    assert DEFAULTS.agent.dial_timeout == 60.0
    assert DEFAULTS.runtime.static_sandbox_resource_mgmt is False
    assert DEFAULTS.runtime.host_overhead_memory == 384
    assert DEFAULTS.factory.enable_template is True  # issue 7: templates by default


def test_shipped_file_loads_as_the_defaults() -> None:
    assert loader.load(str(loader.SHIPPED_DEFAULTS), NO_ENV) == DEFAULTS


def test_shipped_file_is_generated_from_the_schema() -> None:
    text = loader.SHIPPED_DEFAULTS.read_text()
    assert text == loader.to_toml(DEFAULTS), (
        "regenerate: python -c 'from cocoon.config import loader; "
        "loader.SHIPPED_DEFAULTS.write_text(loader.to_toml(loader.DEFAULTS))'"
    )
    for key in keys():
        assert f"\n{key.name} = " in text


# --- paths ------------------------------------------------------------------------


def test_missing_default_file_means_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(loader, "DEFAULT_PATH", tmp_path / "absent.toml")
    assert loader.load(None, NO_ENV) == DEFAULTS


def test_default_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write(tmp_path, "[agent]\ndial_timeout = 5\n")
    monkeypatch.setattr(loader, "DEFAULT_PATH", path)
    assert loader.load(None, NO_ENV).agent.dial_timeout == 5.0


@pytest.mark.parametrize("how", ["cli", "env"])
def test_missing_explicit_file_is_an_error(how: str, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.toml")
    with pytest.raises(InvalidArgument, match="nope.toml does not exist"):
        if how == "cli":
            loader.load(missing, NO_ENV)
        else:
            loader.load(None, {"COCOON_CONFIG": missing})


def test_cli_wins_over_env(tmp_path: Path) -> None:
    a = tmp_path / "a.toml"
    a.write_text("[hypervisor.qemu]\ndefault_vcpus = 2\n")
    b = tmp_path / "b.toml"
    b.write_text("[hypervisor.qemu]\ndefault_vcpus = 3\n")
    assert loader.config_path(str(a), {"COCOON_CONFIG": str(b)}) == (a, True)
    assert loader.config_path(None, {"COCOON_CONFIG": str(b)}) == (b, True)
    assert loader.config_path(None, {}) == (loader.DEFAULT_PATH, False)
    assert loader.load(str(a), {"COCOON_CONFIG": str(b)}).hypervisor.default_vcpus == 2
    assert loader.load(None, {"COCOON_CONFIG": str(b)}).hypervisor.default_vcpus == 3


def test_unreadable_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="cannot read config file"):
        loader.load(str(tmp_path), NO_ENV)  # a directory
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b"# \xff\n")
    with pytest.raises(InvalidArgument, match="not UTF-8"):
        loader.load(str(bad), NO_ENV)


# --- values -------------------------------------------------------------------


def test_values_are_read(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        """
[hypervisor.qemu]
path = "/usr/bin/qemu-system-aarch64"
machine_type = "microvm"
default_vcpus = 2
default_maxvcpus = 4
default_memory = 512
shared_fs = "virtio-fs"
enable_annotations = []
kernel_params = "quiet loglevel=3"

[agent]
dial_timeout = 2.5
kernel_modules = ["e1000e InterruptThrottleRate=3000,3000", "i915"]
debug_console = true

[runtime]
static_sandbox_resource_mgmt = true
internetworking_model = "none"
host_overhead_memory = 0

[factory]
enable_template = true
template_path = "/run/cocoon/template"
""",
    )
    assert cfg.hypervisor == HypervisorConfig(
        path="/usr/bin/qemu-system-aarch64",
        machine_type="microvm",
        default_vcpus=2,
        default_maxvcpus=4,
        default_memory=512,
        shared_fs="virtio-fs",
        enable_annotations=(),
        kernel_params="quiet loglevel=3",
    )
    assert cfg.agent == AgentConfig(
        dial_timeout=2.5,
        kernel_modules=("e1000e InterruptThrottleRate=3000,3000", "i915"),
        debug_console=True,
    )
    assert cfg.runtime == RuntimeConfig(
        static_sandbox_resource_mgmt=True, internetworking_model="none", host_overhead_memory=0
    )
    assert cfg.factory.enable_template and cfg.factory.template_path == "/run/cocoon/template"


def test_integer_seconds_become_float(tmp_path: Path) -> None:
    value = load_text(tmp_path, "[agent]\ndial_timeout = 10\n").agent.dial_timeout
    assert value == 10.0 and isinstance(value, float)


BAD_VALUES: list[tuple[str, str, str]] = [
    (
        '[hypervisor.qemu]\ndefault_vcpus = "two"',
        '[hypervisor.qemu] default_vcpus: expected an integer >= 1, got "two"',
        "",
    ),
    ("[hypervisor.qemu]\ndefault_vcpus = 0", "default_vcpus: expected an integer >= 1, got 0", ""),
    ("[hypervisor.qemu]\ndefault_vcpus = true", "default_vcpus: expected an integer", ""),
    ("[hypervisor.qemu]\ndefault_vcpus = 1.5", "default_vcpus: expected an integer", ""),
    ("[hypervisor.qemu]\ndefault_maxvcpus = -1", "default_maxvcpus: expected an integer >= 0", ""),
    ("[hypervisor.qemu]\ndefault_memory = 64", "default_memory: expected an integer >= 128", ""),
    ("[hypervisor.qemu]\ndefault_maxmemory = -5", "default_maxmemory: expected", ""),
    ("[hypervisor.qemu]\nmemory_slots = 0", "memory_slots: expected an integer >= 1", ""),
    (
        '[hypervisor.qemu]\nmachine_type = "q35"',
        'machine_type: expected one of "pc", "microvm"',
        "",
    ),
    (
        '[hypervisor.qemu]\nshared_fs = "9p"',
        'shared_fs: expected one of "virtio-9p", "virtio-fs"',
        "",
    ),
    ('[hypervisor.qemu]\npath = "qemu"', "path: expected an absolute path", ""),
    ('[hypervisor.qemu]\npath = ""', "path: expected an absolute path", ""),
    ('[hypervisor.qemu]\nkernel = "vmlinux"', "kernel: expected an absolute path", ""),
    ('[hypervisor.qemu]\nkernel_params = "a\\nb"', "kernel_params: expected kernel parameters", ""),
    ('[hypervisor.qemu]\nenable_annotations = "kernel_params"', "expected a list of regular", ""),
    ('[hypervisor.qemu]\nenable_annotations = ["("]', "enable_annotations: expected a list of", ""),
    ("[hypervisor.qemu]\nenable_annotations = [1]", "enable_annotations: expected", ""),
    (
        '[hypervisor.qemu]\nvalid_hypervisor_paths = ["qemu*"]',
        "valid_hypervisor_paths: expected",
        "",
    ),
    ("[agent]\ndial_timeout = 0", "[agent] dial_timeout: expected a number of seconds > 0", ""),
    ("[agent]\ndial_timeout = nan", "dial_timeout: expected a number of seconds > 0, got nan", ""),
    ("[agent]\ndial_timeout = inf", "dial_timeout: expected", ""),
    ('[agent]\nkernel_modules = [""]', "kernel_modules: expected", ""),
    (
        '[agent]\ndebug_console = "yes"',
        '[agent] debug_console: expected true or false, got "yes"',
        "",
    ),
    ('[runtime]\ninternetworking_model = "macvtap"', "internetworking_model: expected one of", ""),
    ("[runtime]\nhost_overhead_memory = -1", "host_overhead_memory: expected an integer >= 0", ""),
    ('[factory]\ntemplate_path = "tmpl"', "[factory] template_path: expected an absolute path", ""),
    # unknown sections and keys
    ("[hypervisor.qemu]\ndefault_cpus = 1", "unknown key [hypervisor.qemu] default_cpus", ""),
    ("[hypervisor.firecracker]\npath = '/x'", "unknown section [hypervisor.firecracker]", ""),
    ("[hypervisor]\ndefault_vcpus = 1", "unknown key [hypervisor] default_vcpus", "go in"),
    ("[agent.kata]\ndial_timeout = 1", "unknown section [agent.kata]", ""),
    ("[network]\nx = 1", "unknown section [network]", ""),
    ("debug = true", "unknown key debug", ""),
    # between keys
    (
        "[hypervisor.qemu]\ndefault_vcpus = 4\ndefault_maxvcpus = 2",
        "default_vcpus: 4 is more than default_maxvcpus 2",
        "",
    ),
    (
        "[hypervisor.qemu]\ndefault_memory = 1024\ndefault_maxmemory = 512",
        "default_memory: 1024 MiB is more than default_maxmemory 512 MiB",
        "",
    ),
]


@pytest.mark.parametrize(("text", "message", "also"), BAD_VALUES)
def test_bad_values_name_the_file_and_key(
    tmp_path: Path, text: str, message: str, also: str
) -> None:
    with pytest.raises(InvalidArgument) as err:
        load_text(tmp_path, text + "\n")
    assert str(err.value).startswith(f"{tmp_path / 'configuration.toml'}: ")
    assert message in str(err.value)
    assert also in str(err.value)


@pytest.mark.parametrize(
    "text", ["[hypervisor.qemu\n", "[agent]\ndial_timeout = \n", "\n\n[agent]\nx = = 1\n"]
)
def test_malformed_toml_names_file_and_line(tmp_path: Path, text: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        load_text(tmp_path, text)
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'configuration.toml'}: malformed TOML")
    assert "line" in message


# --- output ----------------------------------------------------------------------

CHANGED = Config(
    hypervisor=HypervisorConfig(
        kernel_params='quote " back\\slash é',
        default_vcpus=3,
        enable_annotations=(r"default_.*", r"kernel_params\d?"),
        valid_hypervisor_paths=(),
    ),
    agent=AgentConfig(dial_timeout=1.5, kernel_modules=("a b=1,2",)),
    runtime=RuntimeConfig(enable_debug=True),
)


@pytest.mark.parametrize("config", [DEFAULTS, CHANGED])
def test_to_toml_round_trips(config: Config) -> None:
    assert loader.parse(loader.to_toml(config), "out") == config


def test_to_toml_marks_changed_values() -> None:
    text = loader.to_toml(CHANGED)
    assert "# default: 1\ndefault_vcpus = 3\n" in text
    assert "valid_hypervisor_paths = []" in text
    assert "# QEMU system emulator to run.\npath = " in text


@pytest.mark.parametrize("value", ["", "plain", 'q"q', "b\\s", "t\tn\nr\r\x00\x7f\x1b", "é✓"])
def test_toml_strings_escape_everything(value: str) -> None:
    assert tomllib.loads(f"x = {toml_value(value)}")["x"] == value


@pytest.mark.parametrize("config", [DEFAULTS, CHANGED])
def test_to_dict_is_json_and_round_trips(config: Config) -> None:
    data = loader.to_dict(config)
    again = json.loads(json.dumps(data))
    assert again["hypervisor"]["qemu"]["default_vcpus"] == config.hypervisor.default_vcpus
    assert isinstance(again["hypervisor"]["qemu"]["enable_annotations"], list)
    assert loader.from_dict(again) == config
    # same shape as the TOML file
    assert tomllib.loads(loader.to_toml(config)) == data


# --- legacy environment -------------------------------------------------------------


def test_legacy_environment_overrides() -> None:
    env = {
        "COCOON_QEMU": "/opt/qemu/bin/qemu-system-x86_64",
        "COCOON_MACHINE": "microvm",
        "COCOON_VCPUS": "2",
        "COCOON_MEMORY_MIB": "512",
        "COCOON_SHARED_FS": "virtiofs",
        "COCOON_AGENT_TIMEOUT": "5",
    }
    cfg = loader.apply_environment(DEFAULTS, env)
    assert cfg.hypervisor.path == "/opt/qemu/bin/qemu-system-x86_64"
    assert cfg.hypervisor.machine_type == "microvm"
    assert (cfg.hypervisor.default_vcpus, cfg.hypervisor.default_memory) == (2, 512)
    assert cfg.hypervisor.shared_fs == "virtio-fs"
    assert cfg.agent.dial_timeout == 5.0
    assert loader.apply_environment(DEFAULTS, {"COCOON_SHARED_FS": "9p"}) == DEFAULTS
    assert loader.apply_environment(DEFAULTS, {}) is DEFAULTS


def test_legacy_qemu_name_is_looked_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: f"/found/{name}")
    cfg = loader.apply_environment(DEFAULTS, {"COCOON_QEMU": "qemu-system-x86_64"})
    assert cfg.hypervisor.path == "/found/qemu-system-x86_64"
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(InvalidArgument, match="COCOON_QEMU"):
        loader.apply_environment(DEFAULTS, {"COCOON_QEMU": "nope"})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"COCOON_VCPUS": "two"},
            'COCOON_VCPUS: [hypervisor.qemu] default_vcpus: expected an integer >= 1, got "two"',
        ),
        ({"COCOON_MEMORY_MIB": "0"}, "default_memory: expected"),
        ({"COCOON_SHARED_FS": "nfs"}, "shared_fs: expected one of"),
        ({"COCOON_MACHINE": "q35"}, "machine_type"),
        ({"COCOON_AGENT_TIMEOUT": "-1"}, "dial_timeout"),
    ],
)
def test_bad_legacy_environment(env: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        loader.apply_environment(DEFAULTS, env)
    assert message in str(err.value)


def test_load_applies_environment_after_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[hypervisor.qemu]\ndefault_vcpus = 2\ndefault_maxvcpus = 2\n")
    assert loader.load(str(path), {"COCOON_MEMORY_MIB": "300"}).hypervisor.default_memory == 300
    with pytest.raises(InvalidArgument, match="environment: .*default_vcpus: 3 is more than"):
        loader.load(str(path), {"COCOON_VCPUS": "3"})


def test_from_dict_rejects_non_tables() -> None:
    data: dict[str, Any] = {"hypervisor": {"qemu": 1}}
    with pytest.raises(InvalidArgument, match="unknown key"):
        loader.from_dict(data)
