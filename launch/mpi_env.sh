# Sourced by the launch scripts: the repository root, the binaries, and OpenMPI's permission to run
# as root (containers often run as root; OpenMPI refuses it unless told).
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$root/build/bin"
[ -x "$bin/moe-train" ] || { echo "build/bin/moe-train not found: run launch/setup.sh first" >&2; exit 1; }
if [ "$(id -u)" -eq 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
