"""The initramfs ``/init`` script (busybox sh).

It is constant text (runtime choices come from the kernel command line), so it
is part of the cache key as is. What it does, in order:

1. mount ``/proc``, ``/sys`` and ``/dev`` (devtmpfs);
2. ``insmod`` every module named in ``/etc/modorder`` (dependencies first);
3. wait 10 s at most for the root disk, polling every 10 ms: ``cocoon.root=`` on
   the kernel command line, default ``/dev/vda`` (on ``pc`` PCI probing is
   asynchronous, so the disk appears some time after ``virtio_blk`` loads);
4. mount it read-only as erofs on ``/newroot``, put tmpfs on ``/newroot/run``
   and ``/newroot/tmp`` (the root is read-only) and move ``/dev``, ``/proc``,
   ``/sys`` into it;
5. print ``cocoon-init: starting agent`` and ``switch_root`` into
   ``/usr/bin/python3 -I -S /opt/cocoon/agent.py`` (PID 1 from then on).

Any failure prints one line ``cocoon-init: <what failed>`` on the console and
powers off (``poweroff -f``). Should that return, the script exits, PID 1 dies,
the kernel panics and ``panic=-1`` plus QEMU's ``-no-reboot`` end the VM: a
broken guest never hangs.
"""

from __future__ import annotations

#: Busybox applets /init uses; each gets a ``/bin/<name>`` symlink.
APPLETS: tuple[str, ...] = (
    "sh",
    "mount",
    "insmod",
    "usleep",
    "switch_root",
    "poweroff",
    "reboot",
    "cat",
    "ls",
    "dmesg",
)

#: The agent launcher, installed as ``/opt/cocoon/agent.py`` in the root image.
AGENT_LAUNCHER = """\
import sys; sys.path.insert(0, "/opt/cocoon/lib")
from cocoon.guest.main import main
main()
"""

INIT_SCRIPT = r"""#!/bin/sh
# /init of the Cocoon guest initramfs, written by cocoon.assets.
# Loads the modules in /etc/modorder, mounts the read-only erofs root image
# (kernel parameter cocoon.root=, default /dev/vda) and switch_roots into the
# agent. Any failure prints one "cocoon-init: ..." line and powers off.
PATH=/bin
export PATH
set -f

say() {
    echo "cocoon-init: $*" >/dev/console 2>/dev/null || echo "cocoon-init: $*" >/dev/ttyS0
}

fail() {
    say "$*"
    poweroff -f
    exit 1
}

mount -t proc -o nosuid,nodev,noexec proc /proc || fail "cannot mount /proc"
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys || fail "cannot mount /sys"
mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev || fail "cannot mount /dev"

while read -r m; do
    [ -n "$m" ] || continue
    insmod "/lib/modules/$m.ko" || fail "cannot load kernel module $m"
done </etc/modorder

root=/dev/vda
read -r cmdline </proc/cmdline
for arg in $cmdline; do
    case "$arg" in
        cocoon.root=*) root="${arg#cocoon.root=}" ;;
    esac
done

# Poll every 10 ms for at least 10 s of guest uptime (whole seconds: no float in sh;
# counting iterations would stretch, as each usleep fork costs ~8 ms under TCG).
read -r up _ </proc/uptime
deadline=$((${up%.*} + 11))
while [ ! -b "$root" ]; do
    read -r up _ </proc/uptime
    [ "${up%.*}" -ge "$deadline" ] && fail "root disk $root did not appear within 10 s"
    usleep 10000
done

mount -t erofs -o ro "$root" /newroot || fail "cannot mount root disk $root (erofs)"
mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs /newroot/run || fail "cannot mount /run"
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /newroot/tmp || fail "cannot mount /tmp"
for d in dev proc sys; do
    mount --move "/$d" "/newroot/$d" || fail "cannot move /$d into the root image"
done
[ -x /newroot/usr/bin/python3 ] || fail "root image has no /usr/bin/python3"
[ -f /newroot/opt/cocoon/agent.py ] || fail "root image has no /opt/cocoon/agent.py"

say "starting agent"
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
exec /bin/switch_root /newroot /usr/bin/python3 -I -S /opt/cocoon/agent.py
fail "cannot switch_root to the agent"
"""
