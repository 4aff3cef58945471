"""Where Cocoon keeps things on the host, with the environment overrides.

Everything is computed lazily and cheaply: this module is on the CLI hot path.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_ROOT = Path("/run/cocoon")
DEFAULT_ASSETS_DIR = Path("/var/lib/cocoon/assets")
DEFAULT_CACHE_DIR = Path("/var/cache/cocoon")


def runtime_root(cli_value: str | None = None) -> Path:
    """State root: ``--root``, else ``$COCOON_ROOT``, else ``/run/cocoon``."""
    value = cli_value or os.environ.get("COCOON_ROOT")
    return Path(value).absolute() if value else DEFAULT_ROOT


def assets_dir(cli_value: str | None = None) -> Path:
    """Guest asset cache: ``--assets-dir``, ``$COCOON_ASSETS_DIR``, or the default."""
    value = cli_value or os.environ.get("COCOON_ASSETS_DIR")
    return Path(value).absolute() if value else DEFAULT_ASSETS_DIR


def cache_dir() -> Path:
    """Host-side caches (the accelerator probe result, base rootfs tarballs)."""
    value = os.environ.get("COCOON_CACHE_DIR")
    return Path(value).absolute() if value else DEFAULT_CACHE_DIR
