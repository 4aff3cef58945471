"""Cocoon: every container (or pod) in its own lightweight VM.

This module must stay importable inside the guest (standard library only).
"""

__version__ = "0.1.0"
