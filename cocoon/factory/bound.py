"""How many templates the store keeps, as plain data: which to evict, whether to make one.

Every distinct shape (vCPUs, memory, kernel parameters: annotations can set
them) is a template of 100+ MB on disk, so the store is bounded by a count and
by bytes (``[factory] max_templates``, ``max_template_mib``), least recently
used first. The policy for a shape with no template:

- while the store has room, make it on first use (the common case: a few
  shapes, each started many times, pay for a boot once);
- when it is full, a shape seen for the first time gets a cold boot and is
  remembered; on its second use its template is made and the least recently
  used templates are evicted to make room. A stream of one-off shapes (a pod
  author varying an annotation) thus never evicts the templates in use, and
  never writes a template it will not use again.

No I/O here: :mod:`cocoon.factory.store` gathers the entries and applies the plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Bound:
    max_count: int  # templates kept at most (>= 1)
    max_bytes: int  # their bytes on disk at most

    def describe(self) -> str:
        return f"at most {self.max_count} templates, {self.max_bytes >> 20} MiB"


@dataclass(frozen=True)
class Entry:
    name: str
    bytes: int  # on disk (allocated blocks: the RAM file is sparse)
    last_used: float  # epoch seconds


@dataclass(frozen=True)
class Admission:
    make: bool
    evict: list[str] = field(default_factory=list)  # least recently used first
    reason: str = ""  # why not (when make is False), one line


def usage(entries: list[Entry]) -> tuple[int, int]:
    """(count, bytes) of the store."""
    return len(entries), sum(e.bytes for e in entries)


def _lru(entries: list[Entry]) -> list[Entry]:
    return sorted(entries, key=lambda e: (e.last_used, e.name))


def trim(entries: list[Entry], bound: Bound, keep: str = "") -> list[str]:
    """The least recently used templates to remove so that ``entries`` fit ``bound``
    (``keep``, the one just made, is never chosen)."""
    count, size = usage(entries)
    out: list[str] = []
    for e in _lru(entries):
        if count <= bound.max_count and size <= bound.max_bytes:
            break
        if e.name == keep:
            continue
        out.append(e.name)
        count, size = count - 1, size - e.bytes
    return out


def admit(entries: list[Entry], bound: Bound, seen_before: bool) -> Admission:
    """Whether to make a template for a new shape now, and what to evict first."""
    count, size = usage(entries)
    if count < bound.max_count and size < bound.max_bytes:
        return Admission(True)
    full = f"the template store is full ({count} templates, {size >> 20} MiB; {bound.describe()})"
    if not seen_before:
        return Admission(False, reason=f"{full}: a new shape gets a template on its second use")
    # Room for one more: one fewer than the count bound, and under the byte bound.
    evict = trim(entries, Bound(bound.max_count - 1, bound.max_bytes - 1))
    return Admission(True, evict)
