"""The guest's clock keeps the host's time: its rate (the host's TSC) and its offset
(the periodic correction), end to end.

The container prints the guest's CLOCK_REALTIME (busybox ``adjtimex``: no ``%N``
in busybox ``date``) and the test stamps each line with the host's time as it
arrives, so an offset is measured to within the output's latency.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

from tests.e2e.conftest import Env

# One line "T <guest seconds.microseconds>" per call.
STAMP = "stamp() { adjtimex | awk '/tv_sec/ {s=$2} /tv_usec/ {printf \"T %d.%06d\\n\", s, $2}'; }; "


class Stamps:
    """Reads "T <guest time>" lines from a process; keeps (host, guest) pairs."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.pairs: list[tuple[float, float]] = []
        self.other: list[str] = []
        self._proc = proc
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for raw in self._proc.stdout:
            host = time.time()
            line = raw.decode(errors="replace").strip()
            if line.startswith("T "):
                self.pairs.append((host, float(line[2:])))
            else:
                self.other.append(line)

    def offsets(self) -> list[float]:
        return [g - h for h, g in self.pairs]

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def _config(env: Env, text: str) -> Path:
    conf = env.work / "clock.toml"
    conf.write_text(text)
    return conf


def _bundle(env: Env, script: str, caps: tuple[str, ...] = ()) -> Path:
    b = env.bundle(["/bin/sh", "-c", STAMP + script])
    if caps:
        spec = json.loads((b / "config.json").read_text())
        for kind in ("bounding", "effective", "permitted"):
            spec["process"]["capabilities"][kind] += list(caps)
        (b / "config.json").write_text(json.dumps(spec))
    return b


def test_a_guest_sleep_takes_host_time_and_ends_on_host_time(env: Env) -> None:
    # No correction: this is the guest kernel's own clock, at the host's TSC rate.
    conf = _config(env, "[agent]\nclock_sync_interval = 0\n")
    b = _bundle(env, "stamp; sleep 30; stamp")
    proc = subprocess.Popen(
        env.argv("--config", str(conf), "run", "--bundle", str(b), "ck"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stamps = Stamps(proc)
    try:
        assert proc.wait(300) == 0, proc.stderr.read().decode() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stamps.join(10)
    assert len(stamps.pairs) == 2, (stamps.pairs, stamps.other)
    (h1, g1), (h2, g2) = stamps.pairs
    print(f"host {h2 - h1:.3f}s guest {g2 - g1:.3f}s offset {g1 - h1:+.3f}s -> {g2 - h2:+.3f}s")
    # 30 s of guest sleep are 30 s of host time (plus one stamp's fork, under TCG).
    assert 29.5 <= h2 - h1 <= 32.0, f"sleep 30 took {h2 - h1:.2f}s of host time"
    assert abs(g2 - h2) < 0.5, f"guest clock off the host's by {g2 - h2:+.3f}s after 30 s"


def test_a_long_lived_sandbox_is_kept_on_host_time(env: Env) -> None:
    """Several minutes, and a guest clock set 5 s wrong (CAP_SYS_TIME) is brought back."""
    interval = 5.0
    conf = _config(env, f"[agent]\nclock_sync_interval = {interval}\n")
    b = _bundle(env, "while :; do stamp; sleep 1; done", caps=("CAP_SYS_TIME",))
    proc = subprocess.Popen(
        env.argv("--config", str(conf), "run", "--bundle", str(b), "cl"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stamps = Stamps(proc)
    try:
        deadline = time.monotonic() + 240
        while len(stamps.pairs) < 3:
            assert proc.poll() is None and time.monotonic() < deadline, stamps.other
            time.sleep(0.5)
        assert all(abs(o) < 0.5 for o in stamps.offsets()), stamps.offsets()
        # Set the guest's clock 5 s behind, from inside the container.
        skew = env.run("exec", "cl", "/bin/sh", "-c", 'date -s "@$(($(date +%s) - 5))"')
        assert skew.returncode == 0, skew.stderr.decode()
        skewed_at = len(stamps.pairs)
        deadline = time.monotonic() + 30
        while not any(o < -4 for o in stamps.offsets()[skewed_at:]):
            assert time.monotonic() < deadline, f"the skew never showed: {stamps.offsets()}"
            time.sleep(0.5)
        # Brought back by the next correction (stepped: it is more than 0.1 s).
        deadline = time.monotonic() + 3 * interval + 20
        while True:
            recent = stamps.offsets()[-1]
            if abs(recent) < 0.5:
                break
            assert time.monotonic() < deadline, f"not corrected: {stamps.offsets()[-10:]}"
            time.sleep(0.5)
        back_at = len(stamps.pairs)
        # And kept there while the sandbox lives on (three minutes in all).
        started = stamps.pairs[0][0]
        while time.time() - started < 180:
            assert proc.poll() is None, stamps.other
            time.sleep(1)
        later = stamps.offsets()[back_at:]
        assert len(later) > 60
        assert max(abs(o) for o in later) < 0.5, later
    finally:
        env.run("kill", "cl", "KILL")
        proc.wait(60)
        env.run("delete", "--force", "cl")
    stamps.join(10)
