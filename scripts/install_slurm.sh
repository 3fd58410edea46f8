#!/usr/bin/env bash
# Install what tests/slurm needs to bring up a local Slurm cluster: Slurm 22.05 (slurmctld, slurmd,
# client tools) and munge from Debian, plus iproute2/util-linux for the per-node network namespaces.
#
#   sudo scripts/install_slurm.sh        # or as root in CI; does nothing when everything is present
#
# It only installs packages. It starts no daemon and writes no slurm.conf: the test fixture
# (tests/slurm/cluster.py) brings up a private cluster with its own config and stops exactly what
# it started.
set -euo pipefail

need=()
for tool in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client munged:munge ip:iproute2 nsenter:util-linux; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool#*:}")
done
if [[ ${#need[@]} -eq 0 ]]; then
  echo "install_slurm: slurmctld, slurmd, sbatch, munged, ip and nsenter already installed"
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "install_slurm: error: missing packages (${need[*]}) and not root; rerun as root (sudo $0)" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_slurm: error: missing packages (${need[*]}) and no apt-get; install Slurm and munge with" \
       "this system's package manager" >&2
  exit 1
fi
echo "install_slurm: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# --no-install-recommends: no mail server, no MPI stack; the daemons need nothing else.
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian's postinst may start nothing here (no systemd in containers), and we want it that way.
for t in slurmctld slurmd sbatch munged ip nsenter; do
  command -v "$t" >/dev/null || { echo "install_slurm: error: $t still missing after apt-get" >&2; exit 1; }
done
echo "install_slurm: done (slurm $(dpkg-query -W -f '${Version}' slurm-client))"
