"""The guest root image: Debian minbase + python3 + crun + iproute2, trimmed, plus the agent.

Two stages, so that changing the agent never reruns mmdebstrap:

* **base** (cached as ``<assets_dir>/base/<base key>.tar``, and unpacked next to
  it as ``base/<base key>/`` for fast hard-link copies): ``mmdebstrap``, the
  package list recorded in ``/opt/cocoon/packages.txt``, the trim, and the
  Python standard library compiled to *unchecked-hash* bytecode;
* **image**: the base plus the agent sources (also compiled) and its launcher,
  written as an uncompressed erofs image.

Why unchecked-hash bytecode: the image is read-only and ``mkfs.erofs -T0`` sets
every mtime to 0, so Debian's timestamp-checked ``.pyc`` files would all look
stale and Python would recompile (and fail to cache) every module at each boot.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from cocoon.assets.command import require_tool, run
from cocoon.assets.errors import BuildError
from cocoon.assets.initscript import AGENT_LAUNCHER

#: mmdebstrap's dpkg path excludes (never unpacked at all).
PATH_EXCLUDES: tuple[str, ...] = (
    "/usr/share/doc/*",
    "/usr/share/man/*",
    "/usr/share/locale/*",
    "/usr/share/info/*",
)

#: Removed from the base tree (globs relative to its root). Nothing that
#: python3, crun or iproute2 need at run time: only the package managers
#: (apt, dpkg, debconf, perl), time zones, locales, docs, static libraries,
#: charset converters (Python has its own codecs) and stdlib parts no agent uses.
TRIM: tuple[str, ...] = (
    # perl (only apt/dpkg/debconf scripts use it)
    "usr/bin/perl*",
    "usr/share/perl",
    "usr/share/perl5",
    "usr/lib/x86_64-linux-gnu/perl",
    "usr/lib/x86_64-linux-gnu/perl-base",
    "usr/lib/x86_64-linux-gnu/perl5",
    "usr/lib/x86_64-linux-gnu/libperl.so*",
    # apt
    "etc/apt",
    "etc/cron.daily/apt-compat",
    "etc/logrotate.d/apt",
    "usr/bin/apt*",
    "usr/lib/apt",
    "usr/lib/x86_64-linux-gnu/libapt-*",
    "var/lib/apt",
    "var/cache/apt",
    "var/log/apt",
    # dpkg and debconf (packages.txt keeps the list of what is installed)
    "etc/dpkg",
    "usr/bin/dpkg*",
    "usr/sbin/dpkg-*",
    "usr/lib/dpkg",
    "usr/share/dpkg",
    "var/lib/dpkg",
    "usr/bin/debconf*",
    "usr/share/debconf",
    "var/cache/debconf",
    # data and docs
    "usr/share/zoneinfo",
    "usr/share/locale",
    "usr/share/i18n",
    "usr/lib/locale",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/lintian",
    "usr/share/common-licenses",
    "usr/share/bash-completion",
    "usr/share/bug",
    "usr/share/gdb",
    "usr/share/menu",
    "usr/share/python3",
    "usr/include",
    "usr/lib/x86_64-linux-gnu/gconv",
    "usr/lib/x86_64-linux-gnu/*.a",
    # Python parts an agent does not import
    "usr/lib/python3*/test",
    "usr/lib/python3*/idlelib",
    "usr/lib/python3*/tkinter",
    "usr/lib/python3*/turtledemo",
    "usr/lib/python3*/ensurepip",
    "usr/lib/python3*/lib2to3",
    "usr/lib/python3*/pydoc_data",
    # logs and caches of the build
    "var/log/*",
    "var/cache/ldconfig/aux-cache",
)

#: Directories the guest needs, created empty if missing (mount points and the agent's home).
DIRS: tuple[str, ...] = ("run", "tmp", "mnt", "proc", "sys", "dev", "opt/cocoon", "opt/cocoon/lib")

#: Emptied: tmpfs is mounted over /run and /tmp at boot.
EMPTIED: tuple[str, ...] = ("run", "tmp")


def mmdebstrap_command(
    suite: str, packages: Sequence[str], target: Path, excludes: Sequence[str] = PATH_EXCLUDES
) -> list[str]:
    """The mmdebstrap command line for the base tree."""
    cmd = ["mmdebstrap", "--variant=minbase", f"--include={','.join(packages)}"]
    cmd += [f"--dpkgopt=path-exclude={p}" for p in excludes]
    cmd += [suite, str(target)]
    return cmd


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def trim(root: Path, patterns: Sequence[str] = TRIM) -> int:
    """Delete ``patterns`` (globs relative to ``root``); return how many paths went."""
    count = 0
    for pattern in patterns:
        for path in sorted(root.glob(pattern), reverse=True):
            if path.exists() or path.is_symlink():
                _remove(path)
                count += 1
    return count


def ensure_dirs(root: Path) -> None:
    """Create the mount points and ``/opt/cocoon``; empty ``/run`` and ``/tmp``."""
    for rel in EMPTIED:
        path = root / rel
        if path.is_symlink():
            path.unlink()
        elif path.is_dir():
            for child in path.iterdir():
                _remove(child)
    for rel in DIRS:
        (root / rel).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)


def python_dirs(root: Path) -> list[str]:
    """The guest's standard library directories, as guest paths (``/usr/lib/python3.11``)."""
    found = sorted(p for p in root.glob("usr/lib/python3.*") if p.is_dir())
    if not found:
        raise BuildError("the root tree has no /usr/lib/python3.* (is python3 installed?)")
    return ["/" + p.relative_to(root).as_posix() for p in found]


def compile_bytecode(root: Path, guest_dirs: Sequence[str], log: Path, strict: bool) -> bool:
    """Compile ``guest_dirs`` with the guest's python3 (in a chroot) to unchecked-hash .pyc.

    Returns False if some file did not compile (a syntax error); raises when
    ``strict``.

    Raises:
        BuildError: the compiler could not run, or (``strict``) a file failed.
    """
    cmd = [
        "chroot", str(root), "/usr/bin/python3", "-I", "-m", "compileall",
        "-q", "-f", "-j0", "--invalidation-mode", "unchecked-hash", *guest_dirs,
    ]  # fmt: skip
    try:
        run(cmd, log, "compiling Python bytecode in the guest tree")
    except BuildError:
        if strict:
            raise
        return False
    return True


def write_package_list(root: Path, log: Path) -> None:
    """Record ``package version`` lines in ``/opt/cocoon/packages.txt`` (before dpkg's db goes)."""
    out = run(
        [
            "dpkg-query",
            f"--admindir={root / 'var/lib/dpkg'}",
            "-W",
            "-f",
            "${Package} ${Version}\\n",
        ],
        log,
        "listing the installed packages",
    )
    dest = root / "opt/cocoon"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "packages.txt").write_text("".join(sorted(out.splitlines(keepends=True))))


def build_base(root: Path, suite: str, packages: Sequence[str], log: Path) -> None:
    """mmdebstrap into ``root`` (must not exist), then record, trim and compile.

    Raises:
        BuildError: a step failed.
    """
    run(mmdebstrap_command(suite, packages, root), log, "mmdebstrap")
    write_package_list(root, log)
    trim(root)
    ensure_dirs(root)
    compile_bytecode(root, python_dirs(root), log, strict=True)


def save_base(root: Path, tarball: Path, log: Path) -> None:
    """Store the base tree as an (uncompressed) tarball, atomically."""
    tmp = tarball.with_name(tarball.name + f".tmp{os.getpid()}")
    try:
        run(
            ["tar", "--numeric-owner", "-C", str(root), "-cf", str(tmp), "."],
            log,
            "saving the base tree",
        )
        os.replace(tmp, tarball)
    finally:
        tmp.unlink(missing_ok=True)


def extract_base(tarball: Path, root: Path, log: Path) -> None:
    """Unpack a base tarball into ``root`` (created)."""
    root.mkdir(parents=True)
    run(
        ["tar", "--numeric-owner", "--same-permissions", "-C", str(root), "-xf", str(tarball)],
        log,
        f"unpacking the base tree {tarball}",
    )


def link_copy(src: Path, dst: Path, log: Path) -> None:
    """Copy the tree ``src`` to ``dst`` (must not exist) with hard links (``cp -al``).

    Directories are new; regular files share their inodes with ``src``, so the
    copy must only get new files (``install_agent`` and ``compileall`` create new
    inodes, never write into existing ones).
    """
    run(["cp", "-a", "--link", str(src), str(dst)], log, "copying the base tree")


def install_agent(root: Path, files: Sequence[tuple[str, bytes]]) -> None:
    """Write the agent sources to ``/opt/cocoon/lib/<rel>`` and ``/opt/cocoon/agent.py``.

    ``files`` are ``(relative path, contents)`` pairs, e.g. ``cocoon/guest/main.py``.
    """
    lib = root / "opt/cocoon/lib"
    for rel, data in files:
        dest = lib / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.unlink(missing_ok=True)  # never write through a hard link into the base tree
        dest.write_bytes(data)
        os.chmod(dest, 0o644)
    for dirpath, dirnames, _files in os.walk(lib):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o755)
    launcher = root / "opt/cocoon/agent.py"
    launcher.unlink(missing_ok=True)
    launcher.write_text(AGENT_LAUNCHER)
    os.chmod(launcher, 0o644)


def mkfs_erofs_command(root: Path, image: Path, uuid: str) -> list[str]:
    """``mkfs.erofs`` for an uncompressed, reproducible image (mtime 0, all files root-owned)."""
    return ["mkfs.erofs", "--quiet", "-T0", "--all-root", f"-U{uuid}", str(image), str(root)]


def make_image(root: Path, image: Path, uuid: str, log: Path) -> None:
    """Write ``root`` as an erofs image."""
    require_tool("mkfs.erofs")
    run(mkfs_erofs_command(root, image, uuid), log, "mkfs.erofs")
    os.chmod(image, 0o644)
