"""podman ``-v`` volumes, runc and Cocoon alike (issue 12, item 1)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from tests.engines.conftest import Podman, check, describe

IMG = "localhost/busybox:latest"
NONET = ("--network", "none")


def test_file_dir_ro_and_symlinked_sources(
    podman: Podman, runtime: str, cname: Callable[[], str], tmp_path: Path
) -> None:
    d = tmp_path / "dir"
    d.mkdir()
    (d / "x").write_text("dir file\n")
    f = tmp_path / "file"
    f.write_text("one file\n")
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "r").write_text("host\n")
    os.symlink(str(d), tmp_path / "link")  # followed, as runc follows it
    script = (
        "cat /d/x /f /l/x; echo w > /d/new; echo w >> /f; "
        "echo g > /ro/r 2>/dev/null || echo ro-refused; cat /ro/r"
    )
    vols = [f"{d}:/d", f"{f}:/f", f"{ro}:/ro:ro", f"{tmp_path / 'link'}:/l"]
    args = [a for v in vols for a in ("-v", v)]
    p = check(
        podman("run", "--rm", *NONET, *args, "--name", cname(), IMG, "sh", "-c", script,
               runtime=runtime)
    )  # fmt: skip
    assert p.stdout == "dir file\none file\ndir file\nro-refused\nhost\n", describe(p)
    assert (d / "new").read_text() == "w\n" and f.read_text() == "one file\nw\n"
    assert (ro / "r").read_text() == "host\n" and sorted(os.listdir(ro)) == ["r"]
    assert not podman.leftovers()
