"""The /init script text."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from cocoon.assets.initscript import AGENT_LAUNCHER, APPLETS, INIT_SCRIPT


def test_loads_modules_in_modorder() -> None:
    assert "done </etc/modorder" in INIT_SCRIPT
    assert 'insmod "/lib/modules/$m.ko" || fail' in INIT_SCRIPT


def test_mounts_the_root_image_and_switches_to_the_agent() -> None:
    assert "root=/dev/vda" in INIT_SCRIPT
    assert "cocoon.root=*)" in INIT_SCRIPT
    assert 'mount -t erofs -o ro "$root" /newroot' in INIT_SCRIPT
    for d in ("dev", "proc", "sys"):
        assert d in re.search(r"for d in ([a-z ]+); do", INIT_SCRIPT).group(1)  # type: ignore[union-attr]
    assert 'mount --move "/$d" "/newroot/$d"' in INIT_SCRIPT
    assert (
        "exec /bin/switch_root /newroot /usr/bin/python3 -I -S /opt/cocoon/agent.py" in INIT_SCRIPT
    )


def test_marker_precedes_switch_root_and_failures_power_off() -> None:
    assert 'echo "cocoon-init: $*"' in INIT_SCRIPT
    assert INIT_SCRIPT.index('say "starting agent"') < INIT_SCRIPT.index("switch_root /newroot")
    assert "poweroff -f" in INIT_SCRIPT
    # every mount and module load is checked
    for line in INIT_SCRIPT.splitlines():
        stripped = line.strip()
        if stripped.startswith(("mount ", "insmod ")):
            assert "|| fail" in stripped, stripped


def test_polls_for_the_disk_for_at_most_ten_seconds() -> None:
    assert "usleep 10000" in INIT_SCRIPT
    assert "deadline=$((${up%.*} + 11))" in INIT_SCRIPT
    assert '[ "${up%.*}" -ge "$deadline" ] && fail' in INIT_SCRIPT
    assert re.search(r"(^|\s)sleep ", INIT_SCRIPT) is None


def test_every_command_used_is_an_applet() -> None:
    builtins = set("echo exec export read set case esac for do done while if then fi".split())
    builtins |= {"exit", "continue", "[", "in"}
    builtins |= {"fail", "say"}  # the script's functions
    used = set()
    for line in INIT_SCRIPT.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "()" in line or line == "}":
            continue
        for part in re.split(r"\|\||&&|;|\bdo\b|\bthen\b", line):
            words = part.split()
            if words and re.fullmatch(r"[a-z_/\[]+", words[0]):
                used.add(words[0].removeprefix("/bin/"))
    assert used - builtins <= set(APPLETS), used - builtins - set(APPLETS)


@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox not installed")
def test_script_parses_with_busybox_sh() -> None:
    proc = subprocess.run(["busybox", "sh", "-n"], input=INIT_SCRIPT, text=True, check=False)
    assert proc.returncode == 0


def test_launcher() -> None:
    assert 'sys.path.insert(0, "/opt/cocoon/lib")' in AGENT_LAUNCHER
    assert "from cocoon.guest.main import main" in AGENT_LAUNCHER
    compile(AGENT_LAUNCHER, "agent.py", "exec")
