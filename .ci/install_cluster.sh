#!/usr/bin/env bash
# Install what launch/slurm_cluster.sh needs: SLURM (controller, node daemon, accounting daemon and the
# client commands), munge for authentication, MariaDB as the accounting store that sacct reads, and iproute2 for
# the network namespaces of a multi-node cluster (--nodes N).
# Non-interactive, quiet and idempotent: when every package is already installed it returns in well under a second.
# Usage: .ci/install_cluster.sh        (as root, or with sudo available)
set -euo pipefail

PACKAGES=(slurm-wlm slurmdbd slurm-client munge mariadb-server iproute2)

missing=()
for pkg in "${PACKAGES[@]}"; do
    # dpkg-query prints "install ok installed" only for a fully configured package.
    if [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" != "install ok installed" ]]; then
        missing+=("$pkg")
    fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install_cluster: all packages present (${PACKAGES[*]})"
    exit 0
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    SUDO=(sudo)
fi

echo "install_cluster: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Package post-install scripts try to start services; without systemd they fail harmlessly, but
# policy-rc.d (exit 101 = "action forbidden") keeps them from starting daemons we start ourselves later.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
    "${SUDO[@]}" chmod +x "$policy"
    created_policy=1
fi
cleanup() { if [[ $created_policy -eq 1 ]]; then "${SUDO[@]}" rm -f "$policy"; fi; }
trap cleanup EXIT

"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install_cluster: done (slurm $(dpkg-query -W -f='${Version}' slurm-wlm))"
