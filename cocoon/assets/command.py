"""Running the builder's external tools with their output in the build log."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from cocoon.assets.errors import BuildError

#: Debian package that provides each tool, for the "not installed" error.
TOOL_PACKAGES = {
    "mmdebstrap": "mmdebstrap",
    "mkfs.erofs": "erofs-utils",
    "modinfo": "kmod",
    "depmod": "kmod",
    "tar": "tar",
    "chroot": "coreutils",
    "cp": "coreutils",
    "dpkg-query": "dpkg",
}


def require_tool(name: str) -> str:
    """The path of ``name`` on PATH.

    Raises:
        BuildError: it is not installed.
    """
    path = shutil.which(name)
    if path is None:
        pkg = TOOL_PACKAGES.get(name, name)
        raise BuildError(f"{name} is not installed (apt-get install {pkg})")
    return path


def run(cmd: Sequence[str], log: Path, what: str, cwd: Path | None = None) -> str:
    """Run ``cmd``, append its output to ``log`` and return its stdout.

    Raises:
        BuildError: it exits non-zero; the message is ``what`` with the last
            line of its error output and where the full log is.
    """
    require_tool(cmd[0])
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
    proc = subprocess.run(
        list(cmd),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        check=False,
    )
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(proc.stdout)
        fh.write(proc.stderr)
        fh.write(f"[exit {proc.returncode}]\n")
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit status {proc.returncode}"
        raise BuildError(f"{what} failed: {last} (full log: {log})")
    return proc.stdout
