"""Errors of the guest assets builder."""

from __future__ import annotations

from cocoon.errors import CocoonError


class BuildError(CocoonError):
    """A step of ``cocoon assets build`` failed (a missing tool, module, or a failed command)."""
