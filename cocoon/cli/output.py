"""How the CLI reports: one line per error, text or JSON (runc's log format).

Engines pass ``--log FILE --log-format json`` and read the last ``error`` line to
explain a failure, so errors go there as JSON; in text mode they go to stderr.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import TextIO


class Reporter:
    """Writes log lines where the caller asked, in the format it asked for."""

    def __init__(self, log_path: str | None, log_format: str, debug: bool) -> None:
        self.log_path = log_path
        self.json = log_format == "json"
        self.debug_enabled = debug

    def _emit(self, level: str, msg: str) -> None:
        import json
        import time

        # RFC 3339, as containerd's shim parses it (Go's time.RFC3339).
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if self.json:
            line = json.dumps({"level": level, "msg": msg, "time": stamp})
        else:
            line = f'time="{stamp}" level={level} msg="{msg}"' if self.log_path else msg
        if self.log_path:
            with open(self.log_path, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")
        else:
            print(line, file=sys.stderr)

    def error(self, msg: str, exc: BaseException | None = None) -> None:
        if exc is not None and self.debug_enabled:
            import traceback

            self._emit("debug", "".join(traceback.format_exception(exc)).strip())
        if not self.log_path and not self.json:
            msg = f"cocoon: {msg}"
        self._emit("error", msg)
        if (self.log_path and not self.json) or self.log_path:
            print(f"cocoon: {msg}", file=sys.stderr)

    def warn(self, msg: str) -> None:
        self._emit("warning", msg if self.log_path or self.json else f"cocoon: warning: {msg}")

    def debug(self, msg: str) -> None:
        if self.debug_enabled:
            self._emit("debug", msg)

    @property
    def stream(self) -> TextIO:
        return sys.stderr
