"""A busybox OCI image built locally, without any registry (host.md §10a).

``build_images(dest)`` writes, deterministically (same bytes on every run):

- ``dest/oci``                 an OCI image layout (``oci:<dest>/oci:latest``)
- ``dest/busybox-oci.tar``     that layout as a tar (for ``ctr image import``)
- ``dest/busybox-docker.tar``  a docker-archive made by skopeo (for podman/docker ``load``)

The image is ``localhost/busybox:latest`` with ``Cmd ["/bin/sh"]``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.fixtures.bundle import make_rootfs

IMAGE_REF = "localhost/busybox:latest"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TIMEOUT = 180

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


@dataclass(frozen=True)
class Images:
    ref: str
    oci_layout: Path
    oci_archive: Path
    docker_archive: Path
    manifest_digest: str


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, capture_output=True, stdin=subprocess.DEVNULL, timeout=TIMEOUT)


def _blob(blobs: Path, data: bytes) -> tuple[str, int]:
    hexd = hashlib.sha256(data).hexdigest()
    (blobs / hexd).write_bytes(data)
    return f"sha256:{hexd}", len(data)


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def build_images(dest: Path) -> Images:
    """Build the layout and both archives under ``dest`` (idempotent: reuses a finished build)."""
    done = dest / ".done"
    oci = dest / "oci"
    images_paths = {
        "oci_layout": oci,
        "oci_archive": dest / "busybox-oci.tar",
        "docker_archive": dest / "busybox-docker.tar",
    }
    if done.exists():
        return Images(IMAGE_REF, manifest_digest=done.read_text().strip(), **images_paths)

    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    work = dest / "work"
    rootfs = make_rootfs(work / "rootfs")
    # Fixed permissions, whatever the umask was.
    for dirpath, dirnames, _ in os.walk(rootfs):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o755)
    os.chmod(rootfs, 0o755)
    os.chmod(rootfs / "tmp", 0o1777)
    for f in ("etc/passwd", "etc/group"):
        os.chmod(rootfs / f, 0o644)

    # 1. The layer: a sorted, owner-0, fixed-mtime tar; diff_id = sha256(tar).
    layer_tar = work / "layer.tar"
    _run(
        [
            "tar",
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--mtime=2020-01-01 00:00:00Z",
            "-C",
            str(rootfs),
            "-cf",
            str(layer_tar),
            ".",
        ]
    )
    diff_id = "sha256:" + _sha256(layer_tar)
    _run(["gzip", "-n", "-9", str(layer_tar)])
    layer_gz = work / "layer.tar.gz"

    blobs = oci / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    layer_hex = _sha256(layer_gz)
    layer_size = layer_gz.stat().st_size
    shutil.move(layer_gz, blobs / layer_hex)

    # 2. Config and manifest blobs.
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": [PATH_ENV], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }
    cfg_digest, cfg_size = _blob(blobs, _canonical(config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": cfg_digest, "size": cfg_size},
        "layers": [{"mediaType": MT_LAYER, "digest": f"sha256:{layer_hex}", "size": layer_size}],
    }
    man_digest, man_size = _blob(blobs, _canonical(manifest))

    # 3. Layout files.
    (oci / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": MT_MANIFEST,
                "digest": man_digest,
                "size": man_size,
                "annotations": {
                    "org.opencontainers.image.ref.name": "latest",
                    "io.containerd.image.name": IMAGE_REF,
                },
            }
        ],
    }
    (oci / "index.json").write_text(json.dumps(index, sort_keys=True))

    # 4. Archives: the layout as a tar (ctr), and a docker-archive (podman/docker).
    _run(
        [
            "tar",
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--mtime=2020-01-01 00:00:00Z",
            "-C",
            str(oci),
            "-cf",
            str(images_paths["oci_archive"]),
            ".",
        ]
    )
    _run(
        [
            "skopeo",
            "copy",
            "--quiet",
            f"oci:{oci}:latest",
            f"docker-archive:{images_paths['docker_archive']}:{IMAGE_REF}",
        ]
    )
    shutil.rmtree(work)
    done.write_text(man_digest + "\n")
    return Images(IMAGE_REF, manifest_digest=man_digest, **images_paths)


PAUSE_REF = "localhost/pause:3.6"


def build_pause_image(images: Images, dest: Path) -> Path:
    """The CRI sandbox image: the busybox layer with ``sleep`` as its command, as an OCI
    archive named ``localhost/pause:3.6`` (containerd's CRI finds it locally, never pulls)."""
    archive = dest / "pause-oci.tar"
    if archive.exists():
        return archive
    oci = dest / "oci"
    shutil.copytree(images.oci_layout, oci)
    blobs = oci / "blobs" / "sha256"
    index = json.loads((oci / "index.json").read_text())
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_bytes())
    config["config"]["Cmd"] = ["/bin/sleep", "2147483647"]
    cfg_digest, cfg_size = _blob(blobs, _canonical(config))
    manifest["config"] = {"mediaType": MT_CONFIG, "digest": cfg_digest, "size": cfg_size}
    man_digest, man_size = _blob(blobs, _canonical(manifest))
    index["manifests"] = [
        {
            "mediaType": MT_MANIFEST,
            "digest": man_digest,
            "size": man_size,
            "annotations": {
                "org.opencontainers.image.ref.name": "3.6",
                "io.containerd.image.name": PAUSE_REF,
            },
        }
    ]
    (oci / "index.json").write_text(json.dumps(index, sort_keys=True))
    _run(["tar", "--sort=name", "-C", str(oci), "-cf", str(archive), "."])
    return archive
