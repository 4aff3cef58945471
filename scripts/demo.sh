#!/bin/sh
# Boot a VM and run a busybox container in it; show the guest kernel against the host's.
set -eu
cd "$(dirname "$0")/.."
W=$(mktemp -d /tmp/cocoon-demo.XXXXXX)
trap 'rm -rf "$W"' EXIT
.venv/bin/python -c "
import sys; sys.path.insert(0, '.')
from pathlib import Path
from tests.fixtures.bundle import make_bundle
make_bundle(Path('$W/bundle'), ['/bin/sh', '-c', 'echo \"container kernel: \$(uname -r) (\$(uname -n))\"; echo \"container sees \$(ls /proc | grep -c \"^[0-9]\") processes\"'])
"
echo "host kernel:      $(uname -r)"
.venv/bin/cocoon --root "$W/run" run --bundle "$W/bundle" "demo-$$"
