"""``cocoon assets build [--force]`` and ``cocoon assets list``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cocoon.cli.output import Reporter
from cocoon.config import paths
from cocoon.errors import InvalidArgument

if TYPE_CHECKING:
    from rich.console import Console


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    """Dispatch ``assets build`` / ``assets list``.

    Raises:
        InvalidArgument: no action given.
        cocoon.assets.errors.BuildError: the build failed.
    """
    assets_dir = paths.assets_dir(args.assets_dir)
    verb = getattr(args, "assets_verb", None)
    if verb == "build":
        return _build(assets_dir, bool(args.force), reporter)
    if verb == "list":
        return _list(assets_dir)
    raise InvalidArgument("cocoon assets: choose an action: build or list")


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


class _Steps:
    """Prints each finished build step with its duration."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.step: str | None = None
        self.started = time.monotonic()
        self.any = False

    def start(self, step: str) -> None:
        self.finish()
        self.step, self.started, self.any = step, time.monotonic(), True

    def finish(self) -> None:
        if self.step is not None:
            took = time.monotonic() - self.started
            self.console.print(f"[green]✓[/] {self.step} [dim]({took:.1f} s)[/]")
            self.step = None


def _build(assets_dir: Path, force: bool, reporter: Reporter) -> int:
    from cocoon import assets

    console = _console()
    started = time.monotonic()
    steps = _Steps(console)
    with console.status("checking the guest assets cache", spinner="dots") as status:

        def progress(msg: str) -> None:
            reporter.debug(f"assets build: {msg}")
            if msg.startswith("warning: "):
                console.print(f"[yellow]![/] {msg.removeprefix('warning: ')}")
                return
            if msg.startswith("note: "):
                console.print(f"[dim]  {msg.removeprefix('note: ')}[/]")
                return
            steps.start(msg)
            status.update(msg)

        built = assets.build(assets_dir, force=force, progress=progress)
        steps.finish()

    elapsed = time.monotonic() - started
    if not steps.any:
        console.print(
            f"guest assets are up to date: [bold]{built.key[:12]}[/] in {built.directory}"
        )
    else:
        console.print(
            f"built guest assets [bold]{built.key[:12]}[/] in {elapsed:.1f} s: {built.directory}"
        )
    for label, path in (("kernel", built.kernel), ("initrd", built.initrd), ("image", built.image)):
        console.print(f"  {label:<7}{path}  [dim]{_human(path.stat().st_size)}[/]")
    return 0


def _list(assets_dir: Path) -> int:
    from rich.console import Console
    from rich.table import Table

    from cocoon import assets

    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal:
        console.width = 1000  # a pipe or a file: never fold the table
    sets = assets.list_built(assets_dir)
    if not sets:
        console.print(f"no guest assets built in {assets_dir}: run `cocoon assets build`")
        return 0
    table = Table(title=f"guest assets in {assets_dir}", title_justify="left")
    table.add_column("", no_wrap=True)
    table.add_column("key", no_wrap=True)
    table.add_column("kernel", no_wrap=True)
    table.add_column("built", no_wrap=True)
    table.add_column("vmlinux", justify="right", no_wrap=True)
    table.add_column("initrd", justify="right", no_wrap=True)
    table.add_column("image", justify="right", no_wrap=True)
    table.add_column("directory", overflow="fold")
    for s in sets:
        table.add_row(
            "[green]*[/]" if s.current else "",
            s.assets.key[:12],
            s.assets.kernel_version,
            time.strftime("%Y-%m-%d %H:%M", time.localtime(s.built_at)),
            _human(s.kernel_size),
            _human(s.initrd_size),
            _human(s.image_size),
            str(s.assets.directory),
        )
    console.print(table)
    if not any(s.current for s in sets):
        console.print(
            "[yellow]none is current for this version of Cocoon: run `cocoon assets build`[/]"
        )
    else:
        console.print("[dim]* = current (what `cocoon run` uses)[/]")
    return 0
