"""The guest's own root, end to end: its kernel modules (loaded on demand, from a
privileged container, or at start by ``[agent] kernel_modules``) and the debug
console (a shell in the VM, outside the containers)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.e2e.conftest import Env

PRIVILEGED = ("CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_SYS_MODULE")


def _bundle(
    env: Env, args: list[str], caps: tuple[str, ...] = (), mounts: tuple[dict[str, Any], ...] = ()
) -> Path:
    b = env.bundle(args)
    spec = json.loads((b / "config.json").read_text())
    for kind in ("bounding", "effective", "permitted"):
        spec["process"]["capabilities"][kind] += list(caps)
    spec["mounts"] += list(mounts)
    (b / "config.json").write_text(json.dumps(spec))
    return b


def _config(env: Env, text: str) -> Path:
    conf = env.work / "guest.toml"
    conf.write_text(text)
    return conf


def _one_error_line(r: subprocess.CompletedProcess[bytes], needle: str) -> str:
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.decode().splitlines() if "warning" not in ln]
    assert len(lines) == 1, lines
    assert needle in lines[0], lines[0]
    return lines[0]


# -- kernel modules ----------------------------------------------------------------------


def test_a_privileged_container_makes_a_bridge(env: Env) -> None:
    """The bridge module is not loaded: the kernel's autoload runs the guest's modprobe."""
    b = _bundle(
        env,
        [
            "/bin/sh",
            "-c",
            "cat /proc/sys/kernel/modprobe; ip link add br0 type bridge && ip -o link show br0"
            " && grep -c '^bridge ' /proc/modules",
        ],
        caps=PRIVILEGED,
    )
    r = env.run("run", "--bundle", str(b), "mb")
    assert r.returncode == 0, r.stderr.decode() + r.stdout.decode()
    helper, link, loaded = r.stdout.decode().strip().splitlines()
    assert helper == "/usr/sbin/modprobe"
    assert "br0" in link and loaded == "1"


def test_modprobe_in_a_privileged_container(env: Env) -> None:
    """As with runc: the host's /lib/modules bind-mounted (kube-proxy does this), and the
    guest kernel is the host's installed Debian kernel, so its version is there."""
    modules = {
        "destination": "/lib/modules",
        "type": "bind",
        "source": "/lib/modules",
        "options": ["rbind", "ro"],
    }
    b = _bundle(
        env,
        ["/bin/sh", "-c", "modprobe vxlan && grep -E '^(vxlan|udp_tunnel) ' /proc/modules"],
        caps=PRIVILEGED,
        mounts=(modules,),
    )
    r = env.run("run", "--bundle", str(b), "mp")
    assert r.returncode == 0, r.stderr.decode() + r.stdout.decode()
    names = sorted(line.split()[0] for line in r.stdout.decode().splitlines())
    assert names == ["udp_tunnel", "vxlan"]  # with its dependency


def test_configured_kernel_modules_are_loaded_at_start(env: Env) -> None:
    conf = _config(env, '[agent]\nkernel_modules = ["dummy numdummies=0"]\n')
    b = _bundle(env, ["/bin/sh", "-c", "grep '^dummy ' /proc/modules; ip -o link | grep -c dummy"])
    r = env.run("--config", str(conf), "run", "--bundle", str(b), "mk")
    out = r.stdout.decode().splitlines()
    assert out[0].startswith("dummy "), (out, r.stderr.decode())
    assert out[1] == "0"  # its parameter applied: no dummy0


def test_a_missing_kernel_module_fails_the_create(env: Env) -> None:
    conf = _config(env, '[agent]\nkernel_modules = ["no_such_module"]\n')
    b = _bundle(env, ["true"])
    r = env.run("--config", str(conf), "run", "--bundle", str(b), "mn")
    line = _one_error_line(r, "kernel module no_such_module")
    assert "not found" in line
    assert not (env.root / "mn").exists()


# -- the debug console -------------------------------------------------------------------


def _detached(env: Env, conf: Path | None, cid: str) -> None:
    b = env.bundle(["/bin/sh", "-c", "sleep 600"])
    extra = ["--config", str(conf)] if conf else []
    r = env.run(*extra, "run", "-d", "--bundle", str(b), cid, capture=False)
    assert r.returncode == 0


def _remove(env: Env, cid: str) -> None:
    env.run("delete", "--force", cid)


def test_the_debug_console_is_off_by_default(env: Env) -> None:
    _detached(env, None, "dc0")
    try:
        r = env.run("debug-console", "dc0", input=b"echo hi\n")
        line = _one_error_line(r, "the debug console of dc0 is off")
        assert "[agent] debug_console = true" in line
    finally:
        _remove(env, "dc0")


def test_the_debug_console_is_a_shell_in_the_guest_root(env: Env) -> None:
    conf = _config(env, "[agent]\ndebug_console = true\n")
    _detached(env, conf, "dc1")
    try:
        script = b"test -d /opt/cocoon/lib && echo GUEST-ROOT-$((6*7)); exit 7\n"
        r = env.run("debug-console", "dc1", input=script, timeout=120)
        assert r.returncode == 7, r.stderr.decode() + r.stdout.decode()
        assert b"GUEST-ROOT-42" in r.stdout
        # The container itself has no /opt/cocoon: the console is not in it.
        assert env.run("exec", "dc1", "test", "-d", "/opt/cocoon").returncode == 1
        # The next session gets a fresh shell; end of input ends it (Ctrl-D).
        r = env.run("debug-console", "dc1", input=b"echo again-$((1+1))\n", timeout=120)
        assert r.returncode == 0 and b"again-2" in r.stdout, r.stdout
    finally:
        _remove(env, "dc1")
