#!/usr/bin/env bash
# Small, quick benchmark run for CI, inside the kernel-test VM (scripts/vm-run):
# converge 50 containers with ipvlanctl and with the iproute2 baseline, compare the
# end states, re-apply (must write nothing to netlink). Exits non-zero only when something is WRONG (end states
# differ, an apply did not converge or crashed, a no-op re-apply wrote to netlink);
# missed performance targets are printed, not failed (CI machines vary, and the VM
# runs under software emulation).
#
#   scripts/vm-run bench/ci.sh            # from the host
#   bench/ci.sh                           # already inside the VM
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
mkdir -p "$ROOT/build/vm"
exec "$PY" "$ROOT/bench/run.py" --containers "${BENCH_CONTAINERS:-50}" --networks "${BENCH_NETWORKS:-10}" \
    --only P1,P2 --noop-repeats 1 --sample 10 \
    --json "$ROOT/build/vm/bench-ci.json" "$@"
