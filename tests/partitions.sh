#!/usr/bin/env bash
# Partitions (issue 15, point 2): N runs of the partition cases in random order, each on a fresh
# FT topology with the VM's disk on gfs; prints every run, split brains (must be 0) and the
# outages per case. Root (network namespaces), /dev/kvm. Usage: tests/partitions.sh [N] (100).
# FTVM_PARTITION_SEED=S repeats an order.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-100}"
cargo build --release -p vmm -p storage
FTVM_PARTITION_RUNS="$runs" cargo test --release -p ftvm-tests --test ft_partition -- --ignored --nocapture partitions_in_random_order
