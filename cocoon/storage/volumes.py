"""What a bind source is, from the path shape the kubelet gives it: plain data.

The CRI carries no volume types, only host paths; the kubelet's are
``<root>/pods/<uid>/volumes/<plugin>/<name>`` (``<plugin>`` is
``kubernetes.io~empty-dir``, ``kubernetes.io~configmap``, ...) and, for a
``subPath``, ``<root>/pods/<uid>/volume-subpaths/<name>/<container>/<index>``
(a bind the kubelet made itself, after checking the subPath). From that shape:

- an emptyDir (the volume itself, not below it) lives in the guest, one
  directory per pod and volume name (:func:`guest_emptydir`);
- a source *below* a kubelet volume root (``<volume>/a/b``) is resolved on the
  host beneath that root, never following a symlink out of it
  (``openat2(RESOLVE_BENEATH)``, :mod:`cocoon.storage.hostmount`); so is a
  source below ``volume-subpaths/``;
- anything else (the CLI's, podman's, docker's ``-v``) is opened as runc opens
  it: symlinks in the source are followed.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

EMPTY_DIR_PLUGIN = "kubernetes.io~empty-dir"
# Where the guest keeps emptyDirs (a tmpfs each, cocoon.guest.volumes).
GUEST_EMPTYDIR_ROOT = "/run/cocoon/emptydir"
# The size of an emptyDir's guest tmpfs: the kubelet does not pass sizeLimit in
# the CRI, so it comes from this annotation on the container's spec:
# ``emptydir.cocoon.io/<volume name>: <bytes, or k/m/g/Ki/Mi/Gi suffixed>`` (containerd
# copies pod annotations listed in its runtime's ``pod_annotations`` into the spec).
SIZE_ANNOTATION_PREFIX = "emptydir.cocoon.io/"

_VOLUME = re.compile(
    r"^(?P<root>/.+/pods/[^/]+/volumes/(?P<plugin>[^/]+)/(?P<name>[^/]+))(?P<rest>/.*)?$"
)
_SUBPATH = re.compile(r"^(?P<root>/.+/pods/[^/]+/volume-subpaths)(?P<rest>/.+)$")
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "ki": 2**10, "mi": 2**20, "gi": 2**30}


@dataclass(frozen=True)
class Source:
    """A bind source, classified. ``beneath``: the root it must be resolved under ("" =
    resolve as runc does); ``rest``: the path below that root."""

    path: str
    kind: str  # "plain" | "emptydir" | "volume" (below a kubelet root) | "subpath"
    beneath: str = ""
    rest: str = ""
    volume: str = ""  # the kubelet volume name (emptydir, volume)


def _normal(path: str) -> bool:
    parts = path.split("/")[1:]
    return path.startswith("/") and all(p not in ("", ".", "..") for p in parts)


def classify(path: str) -> Source:
    """Classify a bind source path (absolute; a path that is not normal is "plain")."""
    if not _normal(path):
        return Source(path, "plain")
    m = _VOLUME.match(path)
    if m:
        rest = (m["rest"] or "").lstrip("/")
        if m["plugin"] == EMPTY_DIR_PLUGIN and not rest:
            return Source(path, "emptydir", volume=m["name"])
        if rest:
            return Source(path, "volume", m["root"], rest, m["name"])
        return Source(path, "plain", volume=m["name"])
    m = _SUBPATH.match(path)
    if m:
        return Source(path, "subpath", m["root"], m["rest"].lstrip("/"))
    return Source(path, "plain")


def emptydir_of_subpath(path: str) -> tuple[str, str] | None:
    """For a ``volume-subpaths/<name>/<container>/<i>`` source: the host path of the
    pod's emptyDir of that name, were the volume one, and the name (else None)."""
    s = classify(path)
    parts = s.rest.split("/")
    if s.kind != "subpath" or len(parts) != 3:
        return None
    pod = s.beneath[: -len("/volume-subpaths")]
    return f"{pod}/volumes/{EMPTY_DIR_PLUGIN}/{parts[0]}", parts[0]


def guest_emptydir(source: str, name: str) -> str:
    """The guest directory of the emptyDir at host ``source``: the same for every
    container of the pod that mounts it (keyed by the host path, which names the pod)."""
    key = hashlib.sha256(source.encode()).hexdigest()[:16]
    return f"{GUEST_EMPTYDIR_ROOT}/{key}-{name}"[:200]


def parse_size(value: str) -> int:
    """Bytes from a Kubernetes-style quantity (``512Mi``, ``1G``, ``1048576``)."""
    m = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]i?)?\s*", value)
    if not m or int(m[1]) <= 0:
        raise ValueError(f"bad size {value!r}")
    return int(m[1]) * _UNITS[(m[2] or "").lower()]


def emptydir_size(annotations: dict[str, Any], name: str) -> int:
    """The emptyDir's sizeLimit from the annotations (0: the guest tmpfs default)."""
    value = annotations.get(SIZE_ANNOTATION_PREFIX + name)
    return parse_size(str(value)) if value is not None else 0
