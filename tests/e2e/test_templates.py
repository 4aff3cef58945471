"""VM templates end to end: clones are unique, isolated and fast; broken templates fall back.

Each test uses a private template store (``COCOON_TEMPLATE_PATH``), so what it
makes, corrupts or counts is its own.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import re
import socket
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Env

pytestmark = pytest.mark.e2e


def store_env(store: Path) -> dict[str, str]:
    return {"COCOON_TEMPLATE_PATH": str(store)}


def templates(store: Path) -> list[Path]:
    return sorted(p for p in store.iterdir() if p.is_dir() and not p.name.startswith("."))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def factory(env: Env, store: Path, *args: str) -> str:
    p = env.run("factory", *args, env=store_env(store), timeout=300)
    assert p.returncode == 0, p.stderr.decode()
    return p.stdout.decode()


def vm_hostname_bundle(env: Env, script: str) -> Path:
    """A bundle whose container shares the VM's UTS namespace (sees the VM's hostname)."""
    bundle = env.bundle(["/bin/sh", "-c", script])
    spec = json.loads((bundle / "config.json").read_text())
    spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "uts"]
    spec.pop("hostname", None)
    (bundle / "config.json").write_text(json.dumps(spec))
    return bundle


def qemu_cmdline_for(sandbox_dir: Path) -> str:
    """The command line of the QEMU serving the sandbox in ``sandbox_dir``."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "qemu-system" in cmd and f"{sandbox_dir}/qmp.sock" in cmd:
            return cmd
    return ""


def test_three_clones_at_once_are_unique_and_leave_the_template_alone(env: Env) -> None:
    store = env.work / "templates"
    out = factory(env, store, "init")
    assert "made" in out
    assert "already up to date" in factory(env, store, "init")
    [tmpl] = templates(store)
    before = digest(tmpl / "memory"), digest(tmpl / "state")
    script = (
        "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo;"
        " date +%s; hostname; cat /proc/sys/kernel/random/boot_id;"
        " head -c 4194304 /dev/urandom > /dev/shm/fill; md5sum < /dev/shm/fill | cut -c1-32;"
        " sleep 2; md5sum < /dev/shm/fill | cut -c1-32; ls /dev/shm"
    )
    ids = ["clone-a", "clone-b", "clone-c"]
    bundles = {cid: vm_hostname_bundle(env, script) for cid in ids}

    def watch(cid: str) -> str:
        """The QEMU command line, read while the sandbox runs."""
        for _ in range(1200):
            cmd = qemu_cmdline_for(env.root / cid)
            if cmd:
                return cmd
            time.sleep(0.05)
        return ""

    def start(cid: str) -> tuple[float, bytes, bytes, int, float]:
        t0 = time.time()
        p = env.run("run", "--bundle", str(bundles[cid]), cid, env=store_env(store))
        return t0, p.stdout, p.stderr, p.returncode, time.time()

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        runs = {cid: pool.submit(start, cid) for cid in ids}
        cmds = {cid: pool.submit(watch, cid) for cid in ids}
        results = {cid: f.result() for cid, f in runs.items()}
        cmdlines = {cid: f.result() for cid, f in cmds.items()}

    randoms, boot_ids = set(), set()
    for cid, (t0, out_b, err, rc, t1) in results.items():
        assert rc == 0, err.decode()
        assert b"warning: template" not in err and b"cold boot" not in err, err.decode()
        lines = out_b.decode().split()
        rand, guest_time, host, boot_id, md5_1, md5_2, files = lines
        assert re.fullmatch(r"[0-9a-f]{32}", rand)
        randoms.add(rand)
        # date +%s runs after t0 and before t1, on a clock set from the host.
        assert t0 - 1 <= int(guest_time) <= t1 + 1, (t0, guest_time, t1)
        boot_ids.add(boot_id)
        assert host == socket.gethostname()  # set after the restore, as runc's is
        assert md5_1 == md5_2 and files == "fill"
        cmd = cmdlines[cid]
        assert f"mem-path={tmpl}/memory,share=off" in cmd and "-incoming defer" in cmd, cmd
        assert f"path={env.root}/{cid}/shared," in cmd  # its own shared directory
    assert len(randoms) == 3 and len(boot_ids) == 3
    assert (digest(tmpl / "memory"), digest(tmpl / "state")) == before
    assert templates(store) == [tmpl]


def test_concurrent_first_starts_make_the_template_once(env: Env) -> None:
    store = env.work / "templates"
    ids = [f"first-{i}" for i in range(3)]
    bundles = {cid: env.bundle(["/bin/echo", cid]) for cid in ids}

    def start(cid: str) -> tuple[int, bytes, bytes]:
        p = env.run("run", "--bundle", str(bundles[cid]), cid, env=store_env(store))
        return p.returncode, p.stdout, p.stderr

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        results = dict(zip(ids, pool.map(start, ids), strict=True))
    for cid, (rc, out, err) in results.items():
        assert rc == 0 and out == f"{cid}\n".encode(), err.decode()
        assert b"cold boot" not in err, err.decode()
    assert len(templates(store)) == 1
    made = [line for line in (store / "factory.log").read_text().splitlines() if "made" in line]
    assert len(made) == 1, made


def test_a_corrupt_template_means_a_cold_boot_with_a_warning(env: Env) -> None:
    store = env.work / "templates"
    factory(env, store, "init")
    [tmpl] = templates(store)
    os.chmod(tmpl / "memory", 0o600)
    with open(tmpl / "memory", "r+b") as fh:
        fh.seek(1 << 20)
        fh.write(os.urandom(4096))
    p = env.run(
        "run", "--bundle", str(env.bundle(["/bin/echo", "still works"])), "c1", env=store_env(store)
    )
    assert p.returncode == 0, p.stderr.decode()
    assert p.stdout == b"still works\n"
    warnings = [w for w in p.stderr.decode().splitlines() if "template" in w]
    assert len(warnings) == 1 and "corrupt" in warnings[0] and "cold boot" in warnings[0], warnings
    assert templates(store) == []  # removed; the next start makes a sound one
    assert "removed template" in (store / "factory.log").read_text()


def test_a_state_file_that_fails_to_load_means_a_cold_boot(env: Env) -> None:
    """Past the checksums (recomputed here): QEMU itself refuses the state."""
    store = env.work / "templates"
    factory(env, store, "init")
    [tmpl] = templates(store)
    state = tmpl / "state"
    os.chmod(state, 0o600)
    data = state.read_bytes()[:100_000]  # cut short, as by a full disk
    state.write_bytes(data)
    meta = json.loads((tmpl / "meta.json").read_text())
    meta["state_sha256"] = hashlib.sha256(data).hexdigest()
    (tmpl / "meta.json").write_text(json.dumps(meta))
    p = env.run("run", "--bundle", str(env.bundle(["/bin/echo", "ok"])), "c2", env=store_env(store))
    assert p.returncode == 0, p.stderr.decode()
    assert p.stdout == b"ok\n"
    warnings = [w for w in p.stderr.decode().splitlines() if "template" in w]
    assert len(warnings) == 1 and "failed" in warnings[0] and "cold boot" in warnings[0], warnings


def test_a_template_made_stale_by_new_assets_is_not_used(env: Env) -> None:
    from cocoon.assets import locate
    from cocoon.config.paths import assets_dir

    store = env.work / "templates"
    image = env.work / "root.erofs"
    image.write_bytes(locate(assets_dir()).image.read_bytes())
    config = env.work / "cocoon.toml"
    config.write_text(f'[hypervisor.qemu]\nimage = "{image}"\n')
    cfg = {**store_env(store), "COCOON_CONFIG": str(config)}
    assert env.run("factory", "init", env=cfg, timeout=300).returncode == 0
    [old] = templates(store)
    image.write_bytes(image.read_bytes())  # "rebuilt": same bytes, a new file version
    status = env.run("factory", "status", env=cfg).stdout.decode()
    assert "stale" in status
    p = env.run("run", "--bundle", str(env.bundle(["/bin/true"])), "c3", env=cfg)
    assert p.returncode == 0, p.stderr.decode()
    [new] = templates(store)  # made on first use; the stale one never used, then pruned
    assert new != old
    log = (store / "factory.log").read_text()
    assert f"removed template {old.name[:12]}: stale" in log
    assert "removed 1 template " in factory(env, store, "destroy")
    assert templates(store) == []


def test_a_larger_sandbox_grows_from_the_smaller_template(env: Env) -> None:
    store = env.work / "templates"
    factory(env, store, "init")  # the default: 1 vCPU, 256 MiB
    [tmpl] = templates(store)
    bundle = env.bundle(["/bin/sh", "-c", "sleep 1; grep MemTotal /proc/meminfo"])
    spec = json.loads((bundle / "config.json").read_text())
    spec["annotations"] = {"io.cocoon.config.hypervisor.default_memory": "512"}
    (bundle / "config.json").write_text(json.dumps(spec))
    seen: list[str] = []

    def watch() -> None:
        for _ in range(1200):
            cmd = qemu_cmdline_for(env.root / "big")
            if cmd:
                seen.append(cmd)
                return
            time.sleep(0.05)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        watcher = pool.submit(watch)
        p = env.run("run", "--bundle", str(bundle), "big", env=store_env(store))
        watcher.result()
    assert p.returncode == 0, p.stderr.decode()
    mem_total_kib = int(p.stdout.split()[1])
    assert mem_total_kib > 300 * 1024  # 256 MiB booted (~200 MiB usable) + a 256 MiB DIMM
    assert seen and f"mem-path={tmpl}/memory,share=off" in seen[0] and "-m 256M" in seen[0]
    assert templates(store) == [tmpl]  # no second template for the larger size
