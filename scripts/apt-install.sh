#!/bin/sh
# Install, as root on Debian 12, whichever of the named packages are missing.
# Postinst scripts may not start services (policy-rc.d): hosts here have no
# systemd, and tests start their daemons themselves. Idempotent.
# Usage: apt-install.sh LABEL PACKAGE...
set -eu
label=$1
shift
missing=""
for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -z "$missing" ]; then
    echo "$label: all Debian packages present"
    exit 0
fi
echo "$label: installing Debian packages:$missing"
apt-get update -qq
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod +x /usr/sbin/policy-rc.d
trap 'rm -f /usr/sbin/policy-rc.d' EXIT
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
