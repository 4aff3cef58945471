"""containerd-shim-cocoon-v2: not implemented yet (see the shim issue)."""

from __future__ import annotations

import sys


def main() -> int:
    print("containerd-shim-cocoon-v2: not implemented yet", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
