"""Real container engines (podman, containerd + ctr, dockerd) driving a runc-compatible runtime.

Every daemon runs with PRIVATE config/root/state/sockets under one short temp dir
(``/tmp/ce-XXXXXXXX``: unix socket paths must stay under 108 bytes), is stopped at the
end of the session by the PID recorded when it was started, and has its mounts
unmounted before its directory is removed.

Fixtures
--------
``runtime``      the runtime under test, an absolute path; parametrised over
                 ``runc`` (/usr/bin/runc) and ``cocoon`` (.venv/bin/cocoon, marked e2e).
``engine_images`` the busybox image (:class:`tests.engines.images.Images`), built once.
``podman``       :class:`Podman`, with the image loaded.
``containerd``   :class:`Containerd`, with the image imported into a unique namespace.
``dockerd``      :class:`Dockerd` (uses the private containerd), with the image loaded;
                 experimental (checkpoint/restore), runtimes ``runcx``, ``cocoon`` and
                 ``cocoon-block`` (Cocoon with a block rootfs: checkpointable).
``cname``        a factory of unique container names; whatever a test leaves behind is
                 force-removed after the test (and reported as a leak).
``spawn_pty``    a factory of :class:`PtySession` (a command under a fresh pty).

After every test an autouse check asks the engines whether any container is left; for
``cocoon`` it also requires that no new process naming a cocoon state root and no new
container state dir (other than ``.locks``) is left behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import tempfile
import termios
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.engines.images import Images, build_images

REPO = Path(__file__).resolve().parents[2]
RUNC = "/usr/bin/runc"
COCOON = str(REPO / ".venv" / "bin" / "cocoon")
RUNTIMES = {"runc": RUNC, "cocoon": COCOON}
COCOON_DEFAULT_ROOT = Path("/run/cocoon")

CONTAINERD = "/usr/bin/containerd"
CTR = "/usr/bin/ctr"
PODMAN = "/usr/bin/podman"
DOCKERD = "/usr/sbin/dockerd"
DOCKER = "/usr/bin/docker"  # Debian's 20.10 client, not /usr/local/bin/docker

TIMEOUT = 180.0  # every engine call; cocoon boots a VM under TCG (~10 s each)
START_TIMEOUT = 90.0
STOP_TIMEOUT = 60.0
LEAK_WAIT = 60.0

# Session-fixture start-up times, printed in the terminal summary.
START_TIMES: dict[str, float] = {}


# --------------------------------------------------------------------------- helpers


def run(
    argv: list[str],
    *,
    timeout: float = TIMEOUT,
    env: dict[str, str] | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run with captured text output and a bounded timeout (the child is killed on expiry)."""
    try:
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"timed out after {timeout}s: {argv}\nstdout: {exc.stdout!r}\nstderr: {exc.stderr!r}"
        ) from None


def describe(p: subprocess.CompletedProcess[str]) -> str:
    return f"argv={p.args}\nrc={p.returncode}\nstdout={p.stdout!r}\nstderr={p.stderr!r}"


def check(p: subprocess.CompletedProcess[str], rc: int = 0) -> subprocess.CompletedProcess[str]:
    assert p.returncode == rc, describe(p)
    return p


def wait_for(
    what: str, cond: Callable[[], bool], timeout: float = TIMEOUT, interval: float = 0.2
) -> None:
    """Poll ``cond`` until true; a bounded wait, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting ({timeout}s) for: {what}")
        time.sleep(interval)


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts_under(path: Path) -> list[str]:
    prefix = str(path).rstrip("/") + "/"
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        for line in fh:
            mp = _unescape(line.split()[4])
            if mp == str(path) or mp.startswith(prefix):
                found.append(mp)
    return found


def unmount_under(path: Path) -> list[str]:
    """Unmount everything at or below ``path``, deepest first; return what is left."""
    for _ in range(5):
        mps = mounts_under(path)
        if not mps:
            return []
        for mp in sorted(set(mps), key=len, reverse=True):
            if run(["umount", mp], timeout=30).returncode != 0:
                run(["umount", "-l", mp], timeout=30)
    return mounts_under(path)


def safe_rmtree(path: Path) -> None:
    """rm -rf, but never through a mount."""
    if not path.exists():
        return
    left = unmount_under(path)
    if left:
        raise RuntimeError(f"not removing {path}: still mounted: {left}")
    shutil.rmtree(path, ignore_errors=True)


def processes_matching(markers: list[str]) -> dict[int, str]:
    """PID -> cmdline of every process whose cmdline contains one of ``markers``."""
    found: dict[int, str] = {}
    needles = [m.encode() for m in markers]
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmd = fh.read()
        except OSError:
            continue
        if any(n in cmd for n in needles):
            found[int(entry)] = cmd.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


def state_entries(root: Path) -> set[str]:
    """Container state dirs under a runtime root (cocoon's ``.locks`` does not count)."""
    try:
        return {p.name for p in root.iterdir() if p.name != ".locks"}
    except FileNotFoundError:
        return set()


def spawn_daemon(argv: list[str], log: Path, env: dict[str, str] | None) -> subprocess.Popen[bytes]:
    """Start a daemon in its own session, its output into ``log``; stop it with stop_daemon."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )


def stop_daemon(proc: subprocess.Popen[bytes], name: str) -> None:
    """SIGTERM the recorded PID, wait, SIGKILL if it does not go."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        print(f"{name} (pid {proc.pid}) ignored SIGTERM for {STOP_TIMEOUT}s: SIGKILL")
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT)


def kill_pids(pids: list[int]) -> None:
    """SIGKILL processes this session started (identified by our private paths)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in pids):
        time.sleep(0.1)


def log_tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "<no log>"


# --------------------------------------------------------------------------- engines


class Engine:
    """What the leak check needs from an engine."""

    name = "engine"

    def leftovers(self) -> list[str]:
        raise NotImplementedError

    def force_remove(self, ident: str) -> None:
        raise NotImplementedError

    def runtime_roots(self, runtime: str) -> list[Path]:
        """Where ``runtime`` keeps its state when driven by this engine."""
        raise NotImplementedError


class Containerd(Engine):
    name = "containerd"

    def __init__(self, base: Path, namespace: str) -> None:
        self.base = base
        self.root = base / "root"
        self.state = base / "state"
        self.address = str(base / "c.sock")
        self.config = base / "config.toml"
        self.log = base / "containerd.log"
        self.namespace = namespace
        self.proc: subprocess.Popen[bytes] | None = None
        # containerd 1.6 makes its checkpoint dirs (ctd-checkpoint*, ctrd-checkpoint*) in
        # $XDG_RUNTIME_DIR, else /tmp, and never removes the restore one: keep them private.
        self.xdg = base / "xdg"
        self.env: dict[str, str] | None = {**os.environ, "XDG_RUNTIME_DIR": str(self.xdg)}

    def write_config(self) -> None:
        b = self.base
        self.config.write_text(
            f"""version = 2
root = "{self.root}"
state = "{self.state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{self.address}"
[ttrpc]
  address = "{self.address}.ttrpc"
[debug]
  level = "debug"
[plugins."io.containerd.internal.v1.opt"]
  path = "{b}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
"""
        )

    def start(self) -> None:
        self.base.mkdir(parents=True)
        self.xdg.mkdir(mode=0o700)
        self.write_config()
        self.proc = spawn_daemon([CONTAINERD, "--config", str(self.config)], self.log, self.env)

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"containerd exited: {log_tail(self.log)}")
            return os.path.exists(self.address) and self.ctr("version", timeout=10).returncode == 0

        wait_for("containerd to serve", ready, START_TIMEOUT)

    def ctr_argv(self, *args: str, namespace: str | None = None) -> list[str]:
        return [CTR, "--address", self.address, "--namespace", namespace or self.namespace, *args]

    def ctr(
        self, *args: str, timeout: float = TIMEOUT, namespace: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run(self.ctr_argv(*args, namespace=namespace), timeout=timeout)

    def tasks(self) -> dict[str, tuple[int, str]]:
        """container id -> (pid, status) from ``ctr task ls``."""
        out = check(self.ctr("task", "ls")).stdout.splitlines()[1:]
        result = {}
        for line in out:
            parts = line.split()
            if len(parts) >= 3:
                result[parts[0]] = (int(parts[1]), parts[2])
        return result

    def containers(self) -> list[str]:
        return check(self.ctr("container", "ls", "-q")).stdout.split()

    def leftovers(self) -> list[str]:
        return sorted(set(self.containers()) | set(self.tasks()))

    def force_remove(self, ident: str) -> None:
        self.ctr("task", "kill", "-s", "SIGKILL", ident, timeout=60)
        self.ctr("task", "delete", "--force", ident)
        self.ctr("container", "rm", ident, timeout=60)

    def runtime_roots(self, runtime: str) -> list[Path]:
        # The runc v2 shim hard-codes --root /run/containerd/runc/<namespace>.
        return [Path("/run/containerd/runc") / self.namespace]

    def shims(self) -> dict[int, str]:
        # Raw cmdlines: NUL between arguments.
        return processes_matching([f"-address\0{self.address}\0"])

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(AssertionError):
                for ident in self.leftovers():
                    self.force_remove(ident)
            stop_daemon(self.proc, "containerd")
        # Shims outlive containerd by design; any still here belong to our socket.
        leaked = self.shims()
        if leaked:
            print(f"containerd: killing leftover shims {leaked}")
            kill_pids(list(leaked))
        for ns_root in self.runtime_roots(RUNC):
            if ns_root.is_dir() and not state_entries(ns_root):
                shutil.rmtree(ns_root, ignore_errors=True)


class ShimContainerd(Containerd):
    """containerd that finds ``containerd-shim-cocoon-v2`` (.venv/bin on its PATH), with the
    CRI plugin on: runtime handler ``cocoon`` = ``io.containerd.cocoon.v2``, the local pause
    image, and a CNI network that never touches the host's interfaces: each pod's
    ``eth0`` is a veth whose peer is in a test "node" namespace (``tests/engines/cni``),
    where the tests reach the pods from."""

    name = "containerd-shim"
    RUNTIME = "io.containerd.cocoon.v2"
    CRI_NAMESPACE = "k8s.io"

    POD_PREFIX = "10.99.0"  # pods get .2, .3, ...; the node side is .1

    def __init__(self, base: Path, namespace: str) -> None:
        super().__init__(base, namespace)
        assert self.env is not None
        self.env["PATH"] = f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}"
        self.node = f"cocoon-node-{uuid.uuid4().hex[:6]}"

    def start(self) -> None:
        check(run(["ip", "netns", "add", self.node]))
        check(run(["ip", "-n", self.node, "link", "set", "lo", "up"]))
        super().start()

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            run(["ip", "netns", "del", self.node])

    def write_config(self) -> None:
        b = self.base
        for d in ("cni/bin", "cni/conf"):
            (b / d).mkdir(parents=True, exist_ok=True)
        plugin = b / "cni/bin/cocoon-test-veth"
        shutil.copy2(REPO / "tests/engines/cni/node_veth.py", plugin)
        os.symlink("/usr/lib/cni/loopback", b / "cni/bin/loopback")  # containerd adds lo
        net = {
            "cniVersion": "0.4.0",
            "name": "cocoon-test",
            "plugins": [
                {
                    "type": "cocoon-test-veth",
                    "node": self.node,
                    "prefix": self.POD_PREFIX,
                    "state_dir": str(b / "cni/state"),
                }
            ],
        }
        (b / "cni/conf/10-cocoon-test.conflist").write_text(json.dumps(net))
        self.config.write_text(
            f"""version = 2
root = "{self.root}"
state = "{self.state}"
[grpc]
  address = "{self.address}"
[ttrpc]
  address = "{self.address}.ttrpc"
[debug]
  level = "debug"
[plugins."io.containerd.internal.v1.opt"]
  path = "{b}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
  sandbox_image = "localhost/pause:3.6"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "{b}/cni/bin"
  conf_dir = "{b}/cni/conf"
[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "cocoon"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.cocoon]
  runtime_type = "{self.RUNTIME}"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
"""
        )

    def leftovers(self) -> list[str]:
        own = super().leftovers()
        cri = check(self.ctr("container", "ls", "-q", namespace=self.CRI_NAMESPACE)).stdout
        return own + [f"{self.CRI_NAMESPACE}/{c}" for c in cri.split()]

    def force_remove(self, ident: str) -> None:
        ns, _, cid = ident.rpartition("/")
        ns = ns or self.namespace
        self.ctr("task", "kill", "-s", "SIGKILL", cid, timeout=60, namespace=ns)
        self.ctr("task", "delete", "--force", cid, namespace=ns)
        self.ctr("container", "rm", cid, timeout=60, namespace=ns)


class Podman(Engine):
    name = "podman"

    def __init__(self, base: Path) -> None:
        self.base = base
        self.conf = base / "containers.conf"
        self.storage_conf = base / "storage.conf"
        self.env = {
            **os.environ,
            "CONTAINERS_CONF": str(self.conf),
            "CONTAINERS_STORAGE_CONF": str(self.storage_conf),
        }
        self.globals = [
            "--root",
            str(base / "root"),
            "--runroot",
            str(base / "run"),
            "--storage-driver",
            "vfs",
            "--tmpdir",
            str(base / "tmp"),
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
            "--network-config-dir",
            str(base / "net"),
            "--volumepath",
            str(base / "volumes"),
        ]

    def setup(self, images: Images) -> None:
        self.base.mkdir(parents=True)
        for d in ("root", "run", "tmp", "net", "volumes"):
            (self.base / d).mkdir()
        self.conf.write_text(
            """[containers]
# root here lacks CAP_SYS_RESOURCE: the default RLIMIT_NOFILE 1048576 cannot be set
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
"""
        )
        self.storage_conf.write_text(
            f"""[storage]
driver = "vfs"
graphroot = "{self.base / "root"}"
runroot = "{self.base / "run"}"
"""
        )
        p = check(self("load", "-i", str(images.docker_archive)))
        assert images.ref in p.stdout + p.stderr, describe(p)

    def argv(self, *args: str, runtime: str | None = None) -> list[str]:
        rt = ["--runtime", runtime] if runtime else []
        return [PODMAN, *self.globals, *rt, *args]

    def __call__(
        self, *args: str, runtime: str | None = None, timeout: float = TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        return run(self.argv(*args, runtime=runtime), timeout=timeout, env=self.env)

    def status(self, name: str) -> str:
        return check(self("inspect", "--format", "{{.State.Status}}", name)).stdout.strip()

    def leftovers(self) -> list[str]:
        return check(self("ps", "-a", "--format", "{{.Names}}")).stdout.split()

    def force_remove(self, ident: str) -> None:
        self("rm", "-f", "-t", "0", ident)

    def runtime_roots(self, runtime: str) -> list[Path]:
        # conmon passes no --root: the runtime's default state dir.
        return [COCOON_DEFAULT_ROOT] if runtime == COCOON else [Path("/run/runc")]

    def teardown(self) -> None:
        for name in self.leftovers():
            self.force_remove(name)


class Dockerd(Engine):
    name = "docker"

    RUNTIME_NAMES = {COCOON: "cocoon", RUNC: "runcx"}
    COCOON_BLOCK = "cocoon-block"  # Cocoon with [runtime] rootfs_mode = "block"

    def __init__(self, base: Path, ctrd: Containerd, namespace: str) -> None:
        self.base = base
        self.ctrd = ctrd
        self.namespace = namespace
        self.data = base / "data"
        self.exec_root = base / "x"
        self.sock = base / "d.sock"
        self.config = base / "daemon.json"
        self.log = base / "dockerd.log"
        self.client_config = base / "client"
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = {**os.environ, "DOCKER_CONFIG": str(self.client_config)}

    def start(self, images: Images) -> None:
        self.base.mkdir(parents=True)
        self.client_config.mkdir()
        block = self.base / "cocoon-block.toml"
        block.write_text('[runtime]\nrootfs_mode = "block"\n')
        cfg = {
            "data-root": str(self.data),
            "exec-root": str(self.exec_root),
            "pidfile": str(self.base / "docker.pid"),
            "deprecated-key-path": str(self.base / "key.json"),  # else /etc/docker/key.json
            "hosts": [f"unix://{self.sock}"],
            "containerd": self.ctrd.address,
            "containerd-namespace": self.namespace,
            "containerd-plugins-namespace": self.namespace + "-plugins",
            "iptables": False,
            "ip-forward": False,
            "ip-masq": False,
            "bridge": "none",
            "storage-driver": "overlay2",
            # `docker checkpoint create` and `docker start --checkpoint` (20.10: experimental).
            "experimental": True,
            "runtimes": {
                self.RUNTIME_NAMES[COCOON]: {"path": COCOON},
                self.RUNTIME_NAMES[RUNC]: {"path": RUNC},
                # docker 20.10 has no --annotation: a checkpointable (block rootfs) Cocoon is
                # a runtime of its own, with a config file (dockerd wraps runtimeArgs in a
                # script under <data-root>/runtimes/).
                self.COCOON_BLOCK: {"path": COCOON, "runtimeArgs": ["--config", str(block)]},
            },
        }
        self.config.write_text(json.dumps(cfg, indent=2))
        self.proc = spawn_daemon([DOCKERD, "--config-file", str(self.config)], self.log, self.env)

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"dockerd exited: {log_tail(self.log)}")
            return self.sock.exists() and self("version", timeout=10).returncode == 0

        wait_for("dockerd to serve", ready, START_TIMEOUT)
        p = check(self("load", "-i", str(images.docker_archive)))
        assert images.ref in p.stdout, describe(p)

    def __call__(self, *args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
        return run([DOCKER, "-H", f"unix://{self.sock}", *args], timeout=timeout, env=self.env)

    def runtime_name(self, runtime: str) -> str:
        return self.RUNTIME_NAMES[runtime]

    def inspect(self, name: str, fmt: str) -> str:
        return check(self("inspect", "--format", fmt, name)).stdout.strip()

    def leftovers(self) -> list[str]:
        return check(self("ps", "-a", "--format", "{{.Names}}")).stdout.split()

    def force_remove(self, ident: str) -> None:
        self("rm", "-f", ident)

    def runtime_roots(self, runtime: str) -> list[Path]:
        # dockerd sets the shim's Root to <exec-root>/runtime-runc (for every runtime name);
        # the shim appends the containerd namespace.
        return [self.exec_root / "runtime-runc" / self.namespace]

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(AssertionError):
            for name in self.leftovers():
                self.force_remove(name)
        stop_daemon(self.proc, "dockerd")


# --------------------------------------------------------------------------- pty


class PtySession:
    """A command whose stdin/stdout/stderr is a fresh pty (its controlling terminal)."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.argv = argv
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        self.master = master
        self.output = b""
        self._mark = 0

        def ctty() -> None:  # runs after setsid() in the child
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
            preexec_fn=ctty,
        )
        os.close(slave)
        self.eof = False

    def _read(self, timeout: float) -> None:
        if self.eof:
            return
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return
        try:
            data = os.read(self.master, 65536)
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            data = b""
        if data:
            self.output += data
        else:
            self.eof = True

    def expect(self, needle: str, timeout: float = TIMEOUT) -> None:
        """Wait until ``needle`` appears in the output after the previous match."""
        want = needle.encode()
        deadline = time.monotonic() + timeout
        while True:
            idx = self.output.find(want, self._mark)
            if idx >= 0:
                self._mark = idx + len(want)
                return
            if self.eof:
                raise AssertionError(f"EOF before {needle!r}; output: {self.output!r}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {needle!r} within {timeout}s; output: {self.output!r}")
            self._read(min(left, 0.5))

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def wait(self, timeout: float = TIMEOUT) -> int:
        """Drain output until EOF and return the exit code."""
        deadline = time.monotonic() + timeout
        while not self.eof and time.monotonic() < deadline:
            self._read(0.5)
            if self.proc.poll() is not None:
                # Whatever is buffered has been read once select() reports nothing.
                self._read(0.1)
                break
        try:
            return self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.argv} did not exit within {timeout}s; output: {self.output!r}"
            ) from None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        with contextlib.suppress(OSError):
            os.close(self.master)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session", autouse=True)
def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("engine tests need root (run scripts/setup-engines.sh first)")
    missing = [b for b in (CONTAINERD, CTR, PODMAN, DOCKERD, DOCKER) if not os.access(b, os.X_OK)]
    if missing:
        pytest.fail(f"missing engines {missing}: run scripts/setup-engines.sh")


@pytest.fixture(
    scope="session",
    params=[
        pytest.param("runc", id="runc"),
        pytest.param("cocoon", id="cocoon", marks=pytest.mark.e2e),
    ],
)
def runtime(request: pytest.FixtureRequest) -> str:
    """Absolute path of the runc-compatible runtime under test."""
    path: str = RUNTIMES[request.param]
    if path == COCOON:
        _require_cocoon_assets()
    return path


def _require_cocoon_assets() -> None:
    from cocoon.assets import locate
    from cocoon.config.paths import assets_dir
    from cocoon.errors import CocoonError

    if not os.access(COCOON, os.X_OK):
        pytest.fail(f"{COCOON} missing: run `make setup`")
    try:
        locate(assets_dir())
    except CocoonError as exc:
        pytest.fail(f"cocoon guest assets are not built ({exc}): run `make setup`")


@pytest.fixture(scope="session")
def engines_dir() -> Iterator[Path]:
    """One short private dir for all daemons (unix socket paths <= 108 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="ce-", dir="/tmp"))
    yield d
    safe_rmtree(d)


@pytest.fixture(scope="session")
def engine_images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    t = time.monotonic()
    images = build_images(tmp_path_factory.mktemp("engine-images") / "busybox")
    START_TIMES["images"] = time.monotonic() - t
    return images


@pytest.fixture(scope="session")
def containerd(engines_dir: Path, engine_images: Images) -> Iterator[Containerd]:
    ns = f"cetest-{uuid.uuid4().hex[:8]}"
    ctrd = Containerd(engines_dir / "ctrd", ns)
    t = time.monotonic()
    try:
        ctrd.start()
        check(
            ctrd.ctr(
                "image",
                "import",
                "--base-name",
                "localhost/busybox",
                str(engine_images.oci_archive),
            )
        )
        START_TIMES["containerd"] = time.monotonic() - t
        yield ctrd
    finally:
        ctrd.stop()
        safe_rmtree(ctrd.base)


@pytest.fixture(scope="session")
def shim_containerd(engines_dir: Path, engine_images: Images) -> Iterator[ShimContainerd]:
    """A private containerd that runs Cocoon's shim v2, for ctr and for the CRI."""
    from tests.engines.images import build_pause_image

    _require_cocoon_assets()
    ctrd = ShimContainerd(engines_dir / "shim", f"shimtest-{uuid.uuid4().hex[:8]}")
    t = time.monotonic()
    try:
        ctrd.start()
        archive = str(engine_images.oci_archive)
        check(ctrd.ctr("image", "import", "--base-name", "localhost/busybox", archive))
        k8s = ctrd.CRI_NAMESPACE
        check(
            ctrd.ctr("image", "import", "--base-name", "localhost/busybox", archive, namespace=k8s)
        )
        pause = build_pause_image(engine_images, engines_dir / "pause")
        check(ctrd.ctr("image", "import", str(pause), namespace=k8s))
        START_TIMES["containerd-shim"] = time.monotonic() - t
        yield ctrd
    finally:
        ctrd.stop()
        safe_rmtree(ctrd.base)


@pytest.fixture(scope="session")
def dockerd(engines_dir: Path, containerd: Containerd, engine_images: Images) -> Iterator[Dockerd]:
    d = Dockerd(engines_dir / "dk", containerd, f"cetest-dk-{uuid.uuid4().hex[:6]}")
    t = time.monotonic()
    try:
        d.start(engine_images)
        START_TIMES["dockerd"] = time.monotonic() - t
        yield d
    finally:
        d.stop()
        safe_rmtree(d.base)


@pytest.fixture(scope="session")
def podman(engines_dir: Path, engine_images: Images) -> Iterator[Podman]:
    p = Podman(engines_dir / "pm")
    t = time.monotonic()
    try:
        p.setup(engine_images)
        START_TIMES["podman"] = time.monotonic() - t
        yield p
    finally:
        with contextlib.suppress(AssertionError):
            p.teardown()
        safe_rmtree(p.base)


@pytest.fixture
def cname() -> Callable[[], str]:
    """Unique container names/ids for this test."""
    prefix = f"ce{uuid.uuid4().hex[:6]}"
    n = iter(range(1000))
    return lambda: f"{prefix}-{next(n)}"


@pytest.fixture
def spawn_pty() -> Iterator[Callable[..., PtySession]]:
    sessions: list[PtySession] = []

    def spawn(argv: list[str], env: dict[str, str] | None = None) -> PtySession:
        s = PtySession(argv, env)
        sessions.append(s)
        return s

    yield spawn
    for s in sessions:
        s.close()


_ENGINE_FIXTURES = ("podman", "containerd", "dockerd", "shim_containerd")


@pytest.fixture(autouse=True)
def _leak_check(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test: the engines hold no container; for cocoon, nothing of it is left."""
    callspec = getattr(request.node, "callspec", None)
    rt_name = callspec.params.get("runtime") if callspec else None
    engines: list[Engine] = [
        request.getfixturevalue(n) for n in _ENGINE_FIXTURES if n in request.fixturenames
    ]
    rt = RUNTIMES.get(rt_name or "")
    roots: list[Path] = []
    if rt == COCOON:
        roots = [COCOON_DEFAULT_ROOT]
        for e in engines:
            roots += [r for r in e.runtime_roots(rt) if r not in roots]
    markers = [str(r) + "/" for r in roots]
    # Baseline: what already exists (someone else may be using /run/cocoon right now).
    procs_before = set(processes_matching(markers)) if markers else set()
    state_before = {r: state_entries(r) for r in roots}

    yield

    problems: list[str] = []
    call = getattr(request.node, "rep_call", None)
    test_failed = call is not None and call.failed
    for e in engines:
        left = e.leftovers()
        if left:
            # After a failed test, leftovers are expected (e.g. docker keeps a container whose
            # start failed): remove them without a second report.
            if not test_failed:
                problems.append(f"{e.name} still has containers: {left}")
            for ident in left:
                e.force_remove(ident)
    if rt == COCOON:

        def new_procs() -> dict[int, str]:
            return {
                pid: cmd
                for pid, cmd in processes_matching(markers).items()
                if pid not in procs_before
            }

        def new_state() -> dict[str, set[str]]:
            return {
                str(r): new for r in roots if (new := state_entries(r) - state_before.get(r, set()))
            }

        with contextlib.suppress(AssertionError):
            wait_for(
                "cocoon processes/state to go",
                lambda: not new_procs() and not new_state(),
                LEAK_WAIT,
                0.5,
            )
        for pid, cmd in new_procs().items():
            problems.append(f"process {pid} left: {cmd}")
        for root, names in new_state().items():
            problems.append(f"state left in {root}: {sorted(names)}")
    assert not problems, "leaks after test:\n" + "\n".join(problems)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Expose each phase's report as ``item.rep_<phase>`` (for the leak check)."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if START_TIMES:
        terminalreporter.write_sep("-", "engine fixture start-up times")
        for name, secs in START_TIMES.items():
            terminalreporter.write_line(f"{name:12s} {secs:6.2f} s")
