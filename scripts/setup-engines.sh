#!/bin/sh
# Idempotent, as root on Debian 12: the container engines that tests/engines drives
# (podman, containerd + ctr, dockerd) plus the tools that build the busybox image.
# Installs only what is missing; never starts a service (there is no systemd here:
# the test fixtures start private daemons themselves and stop them by PID).
set -eu

PACKAGES="containerd podman docker.io conmon catatonit fuse-overlayfs slirp4netns uidmap
iptables skopeo umoci runc crun busybox-static"

if [ "$(id -u)" != 0 ]; then
    echo "setup-engines: must run as root" >&2
    exit 1
fi

missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done

if [ -n "$missing" ]; then
    echo "setup-engines: installing Debian packages:$missing"
    apt-get update -qq
    # policy-rc.d: keep the postinst scripts from starting containerd/docker.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
    rm -f /usr/sbin/policy-rc.d
    trap - EXIT
else
    echo "setup-engines: all packages present"
fi

# The binaries the tests use, by absolute path (/usr/local/bin/docker may be a newer
# static client; the tests use Debian's /usr/bin/docker explicitly).
for b in /usr/bin/containerd /usr/bin/ctr /usr/bin/podman /usr/sbin/dockerd /usr/bin/docker \
    /usr/bin/conmon /usr/bin/skopeo /usr/bin/umoci /usr/bin/runc /usr/bin/crun /bin/busybox; do
    if [ ! -x "$b" ]; then
        echo "setup-engines: missing $b after install" >&2
        exit 1
    fi
done
echo "setup-engines: ok"
