#!/usr/bin/env bash
# The FT soak (issue 13, point 4): the kv VM on a gfs disk, N cycles of kill the live side, take
# over, re-protect, under a client's continuous load; prints each cycle and, at the end,
# acknowledged SETs lost and split brains (from the VMMs' own timestamped release and halt lines,
# and replies that contradict an acknowledged write; both must be 0). Root (network namespaces),
# /dev/kvm. Usage: tests/soak.sh [N] (100).
set -euo pipefail
cd "$(dirname "$0")/.."
cycles="${1:-100}"
cargo build --release -p vmm -p storage
FTVM_SOAK_CYCLES="$cycles" cargo test --release -p ftvm-tests --test ft_soak -- --ignored --nocapture soak_for_the_cycles_asked
