#!/bin/sh
# One-command, idempotent setup on Debian 12 as root: Debian packages, the venv,
# Cocoon itself, and the guest assets (built only when missing).
set -eu
cd "$(dirname "$0")/.."

PACKAGES="qemu-system-x86 qemu-utils linux-image-amd64 busybox-static mmdebstrap erofs-utils
e2fsprogs crun runc cpio kmod zstd iproute2 python3 python3-venv ca-certificates"

# shellcheck disable=SC2086
./scripts/apt-install.sh setup $PACKAGES

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import cocoon, qemu.qmp, rich, pytest" 2>/dev/null \
    || [ pyproject.toml -nt .venv/.installed ]; then
    echo "setup: installing Cocoon into .venv"
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e '.[dev]'
    touch .venv/.installed
fi

# Builds only what is missing (the cache is keyed by the inputs).
.venv/bin/cocoon assets build

# A fast launcher for the CLI (engines call it for every verb): `python -IS`
# skips site processing (.pth files, sitecustomize), which can cost more than
# the verb itself. It replaces the console script pip wrote.
VENV=$(pwd)/.venv
SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cat > .venv/bin/cocoon <<LAUNCHER
#!$VENV/bin/python3 -IS
import sys
sys.path[:0] = ["$(pwd)", "$SITE"]
from cocoon.cli.main import main
sys.exit(main())
LAUNCHER
chmod +x .venv/bin/cocoon
