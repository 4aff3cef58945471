"""Pick the template one sandbox starts from, make it on first use, or say why not.

In order: the template of exactly this VM; else the largest smaller one this
VM can hot-plug up from (pc, same ceilings and assets); else, when allowed and
the store's bound admits it (:mod:`cocoon.factory.bound`: room left, or the
shape's second use, evicting the least recently used), a new template made now
under the store's lock (so concurrent first starts make it once). A missing,
stale or corrupt template, one that cannot be made or a full store means a
cold boot and never a failed start: the choice says why, in one line. Every
template chosen is marked used (its directory's mtime), for the eviction order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from cocoon.errors import CocoonError
from cocoon.factory.bound import admit
from cocoon.factory.build import build_template, check_buildable
from cocoon.factory.key import Shape, can_grow, fingerprints, template_key
from cocoon.factory.store import Store, Template, disk_bytes
from cocoon.hypervisor.cmdline import VMPlan

log = logging.getLogger("cocoon.factory")
LOCK_SLACK = 60.0  # beyond one boot: how long to wait for another process's build


@dataclass(frozen=True)
class Choice:
    template: Template | None
    reason: str  # one line: which template and why, or why a cold boot
    warning: bool = False  # a broken template was skipped: tell the user


def _describe(tmpl: Template) -> str:
    m = tmpl.meta
    return f"template {m.key[:12]} ({m.vcpus} vCPU, {m.memory_mib} MiB)"


async def choose(store: Store, plan: VMPlan, *, create: bool, boot_timeout: float) -> Choice:
    why_not = check_buildable(plan)
    if why_not:
        return Choice(None, f"cold boot: {why_not}")
    try:
        files = fingerprints(plan)
    except OSError as exc:
        return Choice(None, f"cold boot: {exc.filename}: {exc.strerror}")
    key = template_key(plan, files)
    want = Shape(plan.vcpus, plan.memory_mib)
    try:
        exact = store.find(key)
    except CocoonError as exc:
        await _discard(store, store.dir_for(key), boot_timeout, str(exc))
        return Choice(None, f"cold boot: {exc}", warning=True)
    if exact is not None:
        problem = store.problem(exact)
        if not problem:
            store.touch(exact.dir)
            return Choice(exact, f"clone of {_describe(exact)}")
        await _discard(store, exact.dir, boot_timeout, problem)
        return Choice(None, f"{_describe(exact)} is {problem}: cold boot", warning=True)
    smaller = _smaller(store, plan, files, want)
    if smaller is not None:
        store.touch(smaller.dir)
        return Choice(
            smaller,
            f"clone of {_describe(smaller)}, hot-plugged up to {want.vcpus} vCPU, "
            f"{want.memory_mib} MiB",
        )
    if not create:
        return Choice(None, "cold boot: no template fits and making one is not allowed here")
    try:
        async with store.locked(boot_timeout + LOCK_SLACK):
            exact = store.find(key)  # made by whoever held the lock before us
            if exact is not None and not store.problem(exact):
                store.touch(exact.dir)
                return Choice(exact, f"clone of {_describe(exact)} (made by another start)")
            second = store.seen(key)
            admission = admit(store.entries(), store.bound, second)
            if not admission.make:
                store.remember(key)
                return Choice(None, f"cold boot: {admission.reason}")
            store.evict(admission.evict, f"least recently used, to make room for {key[:12]}")
            tmpl = await build_template(store, plan, boot_timeout)
            store.forget(key)
            store.enforce(keep=tmpl.dir.name)
            if disk_bytes(tmpl.dir) > store.bound.max_bytes:  # even alone
                store.evict([tmpl.dir.name], f"larger than the bound ({store.bound.describe()})")
                why = f"the template is larger than the store's bound ({store.bound.describe()})"
                return Choice(None, f"cold boot: {why}")
    except CocoonError as exc:
        return Choice(None, f"cold boot: could not make a template: {exc}", warning=True)
    when = "on its second use" if second else "on first use"
    return Choice(tmpl, f"clone of {_describe(tmpl)}, made {when}")


def _smaller(store: Store, plan: VMPlan, files: list[list[object]], want: Shape) -> Template | None:
    best: Template | None = None
    for tdir in store.all():
        try:
            tmpl = store.load(tdir)
        except CocoonError:
            continue
        shape = tmpl.meta.shape
        if shape == want or not shape.fits_in(want) or tmpl.meta.machine != plan.machine:
            continue
        start = replace(plan, vcpus=shape.vcpus, memory_mib=shape.memory_mib)
        if template_key(start, files) != tmpl.meta.key or not can_grow(plan, shape, want):
            continue
        if best is not None and (shape.vcpus, shape.memory_mib) <= (
            best.meta.vcpus,
            best.meta.memory_mib,
        ):
            continue
        if store.problem(tmpl):
            continue
        best = tmpl
    return best


async def _discard(store: Store, tdir: Path, timeout: float, why: str) -> None:
    """Remove a broken template so that the next start makes a sound one."""
    try:
        async with store.locked(timeout):
            store.remove(tdir)
            store.record(f"removed template {tdir.name[:12]}: {why}")
    except CocoonError as exc:
        log.warning("could not remove the broken template %s: %s", tdir, exc)
