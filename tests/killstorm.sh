#!/usr/bin/env bash
# The kill storm (issue 15, point 6): for SECONDS, random chunkserver, gfs master and live VMM
# kills under a client's load, each restarted (or replaced by a new backup that joins) after a
# random delay; then checks every acknowledged SET, gfs fsck after healing and the VM alive, and
# prints the counts of each fault. Root (network namespaces), /dev/kvm.
# Usage: tests/killstorm.sh [SECONDS] (3600). FTVM_KILLSTORM_SEED=S repeats a storm's choices;
# FTVM_KILLSTORM_CHUNKSERVERS_DOWN=N (2) bounds the chunkservers down at once (0: none killed).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-3600}"
cargo build --release -p vmm -p storage
FTVM_KILLSTORM_SECS="$secs" cargo test --release -p ftvm-tests --test ft_killstorm -- --ignored --nocapture kill_storm_for_the_time_asked
