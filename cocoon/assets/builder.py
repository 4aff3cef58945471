"""``cocoon assets build``: build a guest asset set into the cache, atomically.

Layout of the cache (``<assets_dir>``)::

    <key>/vmlinux  initrd.img  root.erofs  manifest.json    one complete set per key
    base/<base key>.tar                    mmdebstrap result, trimmed and compiled
    base/<base key>/                       the same, unpacked (hard-link copied per build)
    base/vmlinux-<version>-<stamp>         the extracted kernel (hard-linked into sets)
    .lock                                  serialises builds
    .tmp-<key>-<pid>/                      a build in progress
    build.log                              output of the last build's tools

A set is built in a temporary directory and renamed into place, so a reader
never sees a partial set; ``manifest.json`` is written last. The newest
:data:`KEEP` sets (the current one among them) are kept, older ones pruned.
Changing only the agent (or the init script, or the module list) reuses the
base tree and the kernel: such a rebuild takes about a second.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from cocoon.assets import GuestAssets, complete, set_for_key
from cocoon.assets import inputs as inp
from cocoon.assets.errors import BuildError
from cocoon.assets.guestmodules import install_modules
from cocoon.assets.initramfs import build_initramfs
from cocoon.assets.kernel import write_vmlinux
from cocoon.assets.rootfs import (
    build_base,
    compile_bytecode,
    extract_base,
    install_agent,
    link_copy,
    make_image,
    save_base,
)

Progress = Callable[[str], None]

#: Sets kept by pruning (the current one and the newest others).
KEEP = 3
#: Base tarballs kept (the current one and the newest others).
KEEP_BASES = 2


@contextlib.contextmanager
def _locked(assets_dir: Path, notify: Progress) -> Iterator[None]:
    fd = os.open(assets_dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            notify("waiting for another build to finish")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _uuid_from_key(key: str) -> str:
    return f"{key[0:8]}-{key[8:12]}-{key[12:16]}-{key[16:20]}-{key[20:32]}"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _clean_stale(assets_dir: Path) -> None:
    """Remove temporary dirs of builds that died (we hold the lock: none is running)."""
    for entry in assets_dir.iterdir():
        if entry.name.startswith((".tmp-", ".old-")):
            if entry.is_dir() and not entry.is_symlink():
                _rmtree(entry)
            else:
                entry.unlink(missing_ok=True)


def prune(assets_dir: Path, current: str, keep: int = KEEP) -> list[str]:
    """Keep ``current`` and the ``keep - 1`` newest other sets; return the removed keys."""
    sets = []
    for entry in assets_dir.iterdir():
        if inp.KEY_RE.match(entry.name) and entry.is_dir() and entry.name != current:
            try:
                mtime = (entry / inp.MANIFEST_NAME).stat().st_mtime
            except OSError:
                mtime = 0.0  # incomplete: oldest
            sets.append((mtime, entry))
    sets.sort(reverse=True)
    removed = []
    for _mtime, entry in sets[max(keep - 1, 0) :]:
        _rmtree(entry)
        removed.append(entry.name)
    return removed


def prune_bases(base_dir: Path, current: str, keep: int = KEEP_BASES) -> None:
    """Remove base tarballs (and their trees) but ``current`` and the newest others."""
    others = sorted(
        (p for p in base_dir.glob("*.tar") if p.stem != current),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for path in others[max(keep - 1, 0) :]:
        path.unlink(missing_ok=True)
        _rmtree(path.with_suffix(""))
    for tree in base_dir.iterdir():  # a tree whose tarball went
        if (
            tree.is_dir()
            and not tree.name.startswith(".")
            and not tree.with_suffix(".tar").exists()
        ):
            _rmtree(tree)


def prune_kernels(base_dir: Path, current: str, keep: int = KEEP_BASES) -> None:
    """Remove cached vmlinux files but ``current`` and the newest others."""
    others = sorted(
        (p for p in base_dir.glob("vmlinux-*") if p.name != current),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for path in others[max(keep - 1, 0) :]:
        path.unlink(missing_ok=True)


def build(
    assets_dir: Path, *, force: bool = False, progress: Progress | None = None
) -> GuestAssets:
    """Build the guest assets for this host and this copy of Cocoon (see the package docs).

    A no-op when the set for the current key is complete, unless ``force``;
    ``force`` also rebuilds the cached base tree (a fresh mmdebstrap).

    Raises:
        BuildError: not root, a tool or kernel module missing, or a step failed.
    """
    notify: Progress = progress if progress is not None else (lambda _msg: None)
    try:
        kernel = inp.find_kernel()
    except FileNotFoundError as exc:
        raise BuildError(str(exc)) from exc
    files = [(rel, path.read_bytes()) for rel, path in inp.agent_sources()]
    _kernel, inputs = inp.current_inputs(kernel)
    inputs = dataclasses.replace(inputs, agent_digest=inp.digest_files(files))
    key = inp.compute_key(inputs)
    final = assets_dir / key
    if not force and complete(final):
        return set_for_key(assets_dir, key, kernel.version)
    if os.geteuid() != 0:
        raise BuildError("building guest assets needs root (mmdebstrap and chroot run as root)")
    if "cocoon/guest/main.py" not in dict(files):
        notify("warning: cocoon/guest/main.py does not exist: the image has no agent entry point")

    assets_dir.mkdir(parents=True, exist_ok=True)
    with _locked(assets_dir, notify):
        if not force and complete(final):
            return set_for_key(assets_dir, key, kernel.version)
        _clean_stale(assets_dir)
        log = assets_dir / "build.log"
        log.write_text(f"cocoon assets build {key} at {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
        tmp = assets_dir / f".tmp-{key[:16]}-{os.getpid()}"
        tmp.mkdir()
        try:
            manifest = _build_into(tmp, assets_dir, kernel, inputs, key, files, force, log, notify)
            (tmp / inp.MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
            _swap_in(tmp, final)
        except BaseException:
            _rmtree(tmp)
            raise
        for gone in prune(assets_dir, key):
            notify(f"note: pruned the old set {gone[:12]}")
    return set_for_key(assets_dir, key, kernel.version)


def _kernel_cache_name(inputs: inp.KeyInputs, version: str) -> str:
    stamp = f"{inputs.kernel_path}:{inputs.kernel_size}:{inputs.kernel_mtime_ns}"
    return f"vmlinux-{version}-{hashlib.sha256(stamp.encode()).hexdigest()[:16]}"


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
        os.chmod(dst, 0o644)


def _kernel(
    base_dir: Path,
    kernel: inp.HostKernel,
    inputs: inp.KeyInputs,
    force: bool,
    out: Path,
    notify: Progress,
) -> None:
    """``out`` = the vmlinux, extracted once per kernel file and kept in ``base/``."""
    cached = base_dir / _kernel_cache_name(inputs, kernel.version)
    if not force and cached.is_file():
        notify(f"reusing the extracted kernel {kernel.version}")
    else:
        notify(f"extracting the kernel from {kernel.image}")
        tmp = base_dir / f".tmp-{cached.name}-{os.getpid()}"
        try:
            write_vmlinux(kernel.image, tmp)
            os.replace(tmp, cached)
        finally:
            tmp.unlink(missing_ok=True)
        prune_kernels(base_dir, cached.name)
    _link_or_copy(cached, out)


def _swap_in(new: Path, final: Path) -> None:
    """Rename the directory ``new`` to ``final``, replacing (then deleting) what was there."""
    if final.exists():
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.rename(final, old)
        os.rename(new, final)
        _rmtree(old)
    else:
        os.rename(new, final)


def _base_tree(base_dir: Path, force: bool, log: Path, notify: Progress) -> Path:
    """The unpacked base tree ``base/<base key>/``: built, unpacked from its tarball, or cached."""
    bkey = inp.base_key()
    tarball = base_dir / f"{bkey}.tar"
    tree = base_dir / bkey
    if not force and tree.is_dir() and tarball.is_file():
        return tree
    work = base_dir / f".tmp-{bkey}-{os.getpid()}"
    _rmtree(work)
    try:
        if force or not tarball.is_file():
            notify(f"building the base root tree: mmdebstrap {inp.SUITE} {' '.join(inp.PACKAGES)}")
            build_base(work, inp.SUITE, inp.PACKAGES, log)
            notify("saving the base root tree")
            save_base(work, tarball, log)
        else:
            notify("unpacking the cached base root tree")
            extract_base(tarball, work, log)
        _swap_in(work, tree)
    finally:
        _rmtree(work)
    prune_bases(base_dir, bkey)
    return tree


def _build_into(
    tmp: Path,
    assets_dir: Path,
    kernel: inp.HostKernel,
    inputs: inp.KeyInputs,
    key: str,
    files: list[tuple[str, bytes]],
    force: bool,
    log: Path,
    notify: Progress,
) -> dict[str, object]:
    started = time.monotonic()
    base_dir = assets_dir / "base"
    base_dir.mkdir(exist_ok=True)
    _clean_stale(base_dir)

    _kernel(base_dir, kernel, inputs, force, tmp / inp.KERNEL_NAME, notify)

    notify("building the initramfs (busybox + kernel modules)")
    initrd = build_initramfs(
        kernel.version,
        kernel.modules_dir,
        inp.MODULES,
        inp.BUSYBOX,
        tmp / inp.INITRD_NAME,
        inp.INITRD_COMPRESSION,
    )

    tree = _base_tree(base_dir, force, log, notify)
    bkey = tree.name
    notify("copying the base root tree (hard links)")
    root = tmp / "rootfs"
    link_copy(tree, root, log)

    notify(f"installing the guest kernel modules ({kernel.version})")
    n_modules = install_modules(root, kernel.modules_dir, kernel.version, log)

    notify(f"installing the guest agent ({len(files)} files)")
    install_agent(root, files)
    if not compile_bytecode(root, ["/opt/cocoon/lib"], log, strict=False):
        notify(f"warning: some agent files do not compile (syntax errors; see {log})")

    notify("writing the erofs root image")
    packages = (root / "opt/cocoon/packages.txt").read_text().split("\n")
    make_image(root, tmp / inp.IMAGE_NAME, _uuid_from_key(key), log)
    _rmtree(root)

    notify("writing the manifest")
    sizes = {name: (tmp / name).stat().st_size for name in inp.ASSET_NAMES[:3]}
    return {
        "key": key,
        "builder_version": inp.BUILDER_VERSION,
        "built_at": time.time(),
        "build_seconds": round(time.monotonic() - started, 2),
        "kernel": {
            "version": kernel.version,
            "source": str(kernel.image),
            "size": sizes[inp.KERNEL_NAME],
            "sha256": _sha256_file(tmp / inp.KERNEL_NAME),
        },
        "initrd": {
            "compression": inp.INITRD_COMPRESSION,
            "size": initrd.size,
            "uncompressed_size": initrd.uncompressed_size,
            "modules": list(initrd.modules),
            "sha256": _sha256_file(tmp / inp.INITRD_NAME),
        },
        "image": {
            "format": "erofs",
            "size": sizes[inp.IMAGE_NAME],
            "sha256": _sha256_file(tmp / inp.IMAGE_NAME),
            "base": bkey,
            "suite": inp.SUITE,
            "include": list(inp.PACKAGES),
            "packages": [p for p in packages if p],
            "agent_files": [rel for rel, _ in files],
            "agent_digest": inputs.agent_digest,
            "kernel_modules": n_modules,
        },
        "inputs": {k: v for k, v in dataclasses.asdict(inputs).items() if k != "init_script"},
    }
