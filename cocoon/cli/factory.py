"""``cocoon factory init|status|destroy``: the VM templates sandboxes are cloned from.

Templates are also made automatically by the first sandbox that needs one;
``init`` makes the default sandbox's template ahead of time (so that no
container start pays for it), ``status`` shows what exists and whether it is
usable, ``destroy`` removes them all (running clones are unaffected).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cocoon.cli.output import Reporter
from cocoon.errors import InvalidArgument

if TYPE_CHECKING:
    from cocoon.factory.store import Store, Template
    from cocoon.hypervisor.cmdline import VMPlan


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    verb = getattr(args, "factory_verb", None)
    if verb not in ("init", "status", "destroy"):
        raise InvalidArgument("cocoon factory: choose an action: init, status or destroy")
    store, plan, enabled = _default(args, reporter if verb == "init" else None)
    if verb == "init":
        return _init(store, plan, enabled, reporter)
    if verb == "status":
        return _status(store, plan, enabled)
    return _destroy(store)


def _default(args: argparse.Namespace, reporter: Reporter | None) -> tuple[Store, VMPlan, bool]:
    """The template store and the plan of a default sandbox (no container limits)."""
    from cocoon.assets import locate
    from cocoon.config.paths import assets_dir, cache_dir
    from cocoon.factory.bound import Bound
    from cocoon.factory.key import PLACEHOLDER
    from cocoon.factory.store import Store
    from cocoon.hypervisor.accel import decide
    from cocoon.hypervisor.cmdline import SharePlan
    from cocoon.hypervisor.plan import vm_plan
    from cocoon.service.prepare import effective_config, sandbox_settings, with_configured_files

    config = effective_config(args)
    settings = sandbox_settings(args, {}, {}, config)
    assets = with_configured_files(locate(assets_dir(args.assets_dir)), config)
    decision = decide(
        settings.qemu, assets.kernel, assets.initrd, assets.image, cache_dir() / "accel.json"
    )
    if decision.accel == "tcg" and reporter is not None:
        reporter.warn(f"{decision.reason}: running under software emulation (TCG), slowly")
    share = SharePlan("9p", path=PLACEHOLDER / "share") if settings.shared_fs == "9p" else None
    if share is None:
        share = SharePlan("virtiofs", socket=PLACEHOLDER / "vfs.sock")
    plan = vm_plan(
        settings,
        assets,
        decision.accel,
        qmp_socket=PLACEHOLDER / "qmp.sock",
        agent_socket=PLACEHOLDER / "agent.sock",
        console_log=PLACEHOLDER / "console.log",
        share=share,
    )
    bound = Bound(settings.max_templates, settings.max_template_mib << 20)
    return Store(Path(settings.template_dir), bound), plan, settings.template


def _init(store: Store, plan: VMPlan, enabled: bool, reporter: Reporter) -> int:
    from cocoon.factory.build import build_template, check_buildable
    from cocoon.factory.key import fingerprints, template_key

    why_not = check_buildable(plan)
    if why_not:
        raise InvalidArgument(f"cannot make a template: {why_not}")
    if not enabled:
        reporter.warn("[factory] enable_template = false: sandboxes will not use this template")
    key = template_key(plan, fingerprints(plan))

    async def make() -> tuple[Template, bool]:
        async with store.locked(600):
            tmpl = store.find(key)
            if tmpl is not None and not store.problem(tmpl):
                return tmpl, False
            if tmpl is not None:
                store.remove(tmpl.dir)
            made = await build_template(store, plan, 120)
            store.enforce(keep=made.dir.name)  # an operator's template: others make room
            return made, True

    started = time.monotonic()
    tmpl, made = asyncio.run(make())
    m = tmpl.meta
    what = "made" if made else "already up to date:"
    took = f" in {time.monotonic() - started:.1f} s" if made else ""
    print(f"template {m.key[:12]} {what} {m.vcpus} vCPU, {m.memory_mib} MiB{took}: {tmpl.dir}")
    return 0


def _status(store: Store, plan: VMPlan, enabled: bool) -> int:
    from rich.console import Console
    from rich.table import Table

    from cocoon.errors import CocoonError
    from cocoon.factory.bound import usage
    from cocoon.factory.key import fingerprints, template_key
    from cocoon.factory.store import disk_bytes

    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal:
        console.width = 1000
    try:
        current = template_key(plan, fingerprints(plan))
    except OSError:
        current = ""
    state = "enabled" if enabled else "disabled ([factory] enable_template = false)"
    console.print(f"VM templates: {state}; store {store.root}")
    dirs = store.all()
    count, size = usage(store.entries())
    b = store.bound
    console.print(
        f"store: {count} of at most {b.max_count} templates, "
        f"{size / 2**20:.0f} of at most {b.max_bytes >> 20} MiB "
        "([factory] max_templates, max_template_mib; least recently used evicted first)"
    )
    if not dirs:
        console.print("no templates yet: the first sandbox makes one, or `cocoon factory init`")
        return 0
    table = Table(title_justify="left")
    cols = ("", "key", "machine", "vCPU", "MiB", "made", "last use", "boot", "on disk", "status")
    for col in cols:
        table.add_column(col, no_wrap=True)
    for tdir in reversed(dirs):  # most recently used first
        try:
            tmpl = store.load(tdir)
        except CocoonError as exc:
            table.add_row("", tdir.name[:12], *[""] * 7, f"[red]{exc}[/]")
            continue
        m = tmpl.meta
        problem = store.problem(tmpl)
        table.add_row(
            "[green]*[/]" if m.key == current else "",
            m.key[:12],
            m.machine,
            str(m.vcpus),
            str(m.memory_mib),
            time.strftime("%Y-%m-%d %H:%M", time.localtime(m.created)),
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(tdir.stat().st_mtime)),
            f"{m.boot_seconds:.1f} s",
            f"{disk_bytes(tdir) / 2**20:.0f} MiB",
            f"[red]{problem}[/]" if problem else "[green]ok[/]",
        )
    console.print(table)
    console.print("[dim]* = what a default sandbox is cloned from[/]")
    return 0


def _destroy(store: Store) -> int:
    async def destroy() -> int:
        async with store.locked(600):
            dirs = store.all()
            for tdir in dirs:
                store.remove(tdir)
            return len(dirs)

    if not store.root.exists():
        print(f"no templates in {store.root}")
        return 0
    count = asyncio.run(destroy())
    print(f"removed {count} template{'s' if count != 1 else ''} from {store.root}")
    return 0
