#!/bin/sh
# Idempotent, as root on Debian 12: the container engines that tests/engines drives
# (podman, containerd + ctr, dockerd) plus the tools that build the busybox image.
# criu: podman 4.3 refuses `container checkpoint/restore` unless CRIU >= 3.11 is
# installed, whatever the runtime (Cocoon checkpoints the VM and never calls criu);
# runc's checkpoint (the reference the engine tests compare against) does use it.
# Installs only what is missing; never starts a service (there is no systemd here:
# the test fixtures start private daemons themselves and stop them by PID).
set -eu

PACKAGES="containerd podman docker.io conmon catatonit fuse-overlayfs slirp4netns uidmap
iptables skopeo umoci runc crun busybox-static containernetworking-plugins criu"

if [ "$(id -u)" != 0 ]; then
    echo "setup-engines: must run as root" >&2
    exit 1
fi

# shellcheck disable=SC2086
"$(dirname "$0")/apt-install.sh" setup-engines $PACKAGES

# The binaries the tests use, by absolute path (/usr/local/bin/docker may be a newer
# static client; the tests use Debian's /usr/bin/docker explicitly).
for b in /usr/bin/containerd /usr/bin/ctr /usr/bin/podman /usr/sbin/dockerd /usr/bin/docker \
    /usr/bin/conmon /usr/bin/skopeo /usr/bin/umoci /usr/bin/runc /usr/bin/crun /bin/busybox \
    /usr/lib/cni/loopback /usr/sbin/criu; do
    if [ ! -x "$b" ]; then
        echo "setup-engines: missing $b after install" >&2
        exit 1
    fi
done
echo "setup-engines: ok"
