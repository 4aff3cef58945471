"""The store's bound as a table: which templates go, whether a new shape gets one."""

from __future__ import annotations

import pytest

from cocoon.factory.bound import Admission, Bound, Entry, admit, trim

MIB = 1 << 20


def entries(*spec: tuple[str, int, float]) -> list[Entry]:
    return [Entry(name, mib * MIB, used) for name, mib, used in spec]


@pytest.mark.parametrize(
    ("what", "store", "bound", "keep", "evicted"),
    [
        ("under both bounds", [("a", 100, 1), ("b", 100, 2)], Bound(3, 1000 * MIB), "", []),
        (
            "over the count: LRU first",
            [("a", 1, 5), ("b", 1, 1), ("c", 1, 3)],
            Bound(2, MIB << 10),
            "",
            ["b"],
        ),
        (
            "over the bytes",
            [("a", 300, 1), ("b", 300, 2), ("c", 300, 3)],
            Bound(9, 700 * MIB),
            "",
            ["a"],
        ),
        ("the new one stays", [("new", 300, 0), ("b", 300, 2)], Bound(1, 10**12), "new", ["b"]),
        ("the new one alone too big", [("new", 900, 9)], Bound(5, 500 * MIB), "new", []),
    ],
)
def test_trim(
    what: str,
    store: list[tuple[str, int, float]],
    bound: Bound,
    keep: str,
    evicted: list[str],
) -> None:
    assert trim(entries(*store), bound, keep) == evicted, what


def test_admit_while_there_is_room() -> None:
    assert admit(entries(("a", 100, 1)), Bound(2, 1000 * MIB), seen_before=False) == Admission(True)


def test_a_one_off_shape_in_a_full_store_gets_a_cold_boot() -> None:
    got = admit(entries(("a", 100, 1), ("b", 100, 2)), Bound(2, 1000 * MIB), seen_before=False)
    assert not got.make and not got.evict
    assert "full (2 templates, 200 MiB" in got.reason and "second use" in got.reason


def test_a_second_use_evicts_the_least_recently_used() -> None:
    store = entries(("a", 100, 5), ("b", 100, 2), ("c", 100, 9))
    assert admit(store, Bound(3, 1000 * MIB), seen_before=True) == Admission(True, ["b"])
    # Full by bytes: evict until there is room under the byte bound.
    assert admit(store, Bound(9, 200 * MIB), seen_before=True) == Admission(True, ["b", "a"])
