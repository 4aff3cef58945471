from __future__ import annotations

from pathlib import Path

from cocoon.hypervisor.uids import UID_BASE, UID_COUNT, lease


def test_leases_are_distinct_until_released(tmp_path: Path) -> None:
    a = lease("sandbox-a", tmp_path)
    b = lease("sandbox-a", tmp_path)  # same preferred uid: the next free one
    assert a.uid != b.uid and all(UID_BASE <= x.uid < UID_BASE + UID_COUNT for x in (a, b))
    first = a.uid
    a.release()
    assert not (tmp_path / str(first)).exists()  # nothing piles up
    c = lease("sandbox-a", tmp_path)
    assert c.uid == first
    b.release()
    c.release()
    assert list(tmp_path.iterdir()) == []
