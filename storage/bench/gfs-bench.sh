#!/usr/bin/env bash
# gfs benchmark: this machine's own limits (disk write/read, loopback TCP) and gfs throughput,
# measured in one run, printed with ratios.
#
#   storage/bench/gfs-bench.sh            # defaults: 1 GiB per single client, 4 x 256 MiB
#   SIZE_MIB=512 BENCH_DIR=/tmp/x storage/bench/gfs-bench.sh
#
# Starts a master and 3 chunkservers (3 replicas, fdatasync before every acknowledgement) on
# loopback, all on this machine's one disk. Needs root only to drop the page cache before
# reads (otherwise reads may come from memory, and the script says so).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
SIZE_MIB="${SIZE_MIB:-1024}"
PER4_MIB="${PER4_MIB:-256}"
BENCH_DIR="${BENCH_DIR:-/tmp/gfs-bench}"
META_OPS="${META_OPS:-8000}"

(cd "$ROOT" && cargo build -q -p storage --release --bins --examples)
GFS="$CARGO_TARGET_DIR/release/gfs"
MEM="$CARGO_TARGET_DIR/release/examples/master_mem"

rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$BENCH_DIR"
}
trap cleanup EXIT

now() { date +%s.%N; }
mbps() { awk -v b="$1" -v t0="$2" -v t1="$3" 'BEGIN { printf "%.0f", b / (t1 - t0) / 1e6 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
drop_caches() {
    sync
    if echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; then CACHE="cold"; else CACHE="page cache may be warm"; fi
}

echo "== machine limits"
DD="$BENCH_DIR/dd.bin"
BYTES=$((SIZE_MIB * 1024 * 1024))
t0=$(now); dd if=/dev/zero of="$DD" bs=4M count=$((SIZE_MIB / 4)) conv=fdatasync status=none; t1=$(now)
DISK_W1=$(mbps "$BYTES" "$t0" "$t1")
# Three writers at once, as three chunkservers on this one disk would be.
t0=$(now)
for i in 1 2 3; do dd if=/dev/zero of="$DD.$i" bs=4M count=$((SIZE_MIB / 4)) conv=fdatasync status=none & done
wait
t1=$(now)
DISK_W3=$(mbps "$((3 * BYTES))" "$t0" "$t1")
rm -f "$DD".?
DISK_W=$(awk -v a="$DISK_W1" -v b="$DISK_W3" 'BEGIN { print (a > b ? a : b) }')
drop_caches
t0=$(now); dd if="$DD" of=/dev/null bs=4M iflag=direct status=none; t1=$(now)
DISK_R=$(mbps "$BYTES" "$t0" "$t1")
rm -f "$DD"
NET=$("$GFS" bench-net --mib 4096 | sed -E 's/.*= ([0-9]+) MB\/s/\1/')
echo "disk write (dd, fdatasync):   $DISK_W1 MB/s one stream, $DISK_W3 MB/s three streams (limit used: $DISK_W)"
echo "disk read (dd, O_DIRECT):     $DISK_R MB/s"
echo "loopback TCP (one stream):    $NET MB/s"

echo "== cluster: master + 3 chunkservers on loopback, 3 replicas"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
MP=$(port)
export GFS_MASTER="127.0.0.1:$MP"
"$GFS" master --dir "$BENCH_DIR/master" --listen "$GFS_MASTER" --dead-after-secs 2 --lease-secs 10 >"$BENCH_DIR/master.log" 2>&1 &
PIDS+=($!); MASTER_PID=$!
sleep 0.3
CS_PIDS=()
for i in 1 2 3; do
    "$GFS" chunkserver --dir "$BENCH_DIR/cs$i" --listen "127.0.0.1:$(port)" --rack "r$i" \
        --heartbeat-ms 200 >"$BENCH_DIR/cs$i.log" 2>&1 &
    PIDS+=($!); CS_PIDS+=($!)
done
sleep 1

SRC="$BENCH_DIR/src.bin"
head -c "$BYTES" /dev/urandom >"$SRC"
for i in 1 2 3 4; do head -c $((PER4_MIB * 1024 * 1024)) "$SRC" >"$BENCH_DIR/src$i.bin"; done

t0=$(now); "$GFS" put "$SRC" /one; t1=$(now)
W1=$(mbps "$BYTES" "$t0" "$t1")
drop_caches
# Reads are timed into /dev/null (the local output file would measure this disk again);
# correctness is checked separately, untimed.
t0=$(now); "$GFS" get /one /dev/null; t1=$(now)
R1=$(mbps "$BYTES" "$t0" "$t1")
"$GFS" cat /one | cmp -s "$SRC" - || { echo "MISMATCH on /one"; exit 1; }

B4=$((4 * PER4_MIB * 1024 * 1024))
t0=$(now)
for i in 1 2 3 4; do "$GFS" put "$BENCH_DIR/src$i.bin" "/four$i" & done
wait_jobs() { local rc=0; for j in $(jobs -p | grep -v -w -e "${PIDS[0]}" -e "${PIDS[1]}" -e "${PIDS[2]}" -e "${PIDS[3]}"); do wait "$j" || rc=1; done; return $rc; }
wait_jobs
t1=$(now)
W4=$(mbps "$B4" "$t0" "$t1")
drop_caches
t0=$(now)
for i in 1 2 3 4; do "$GFS" get "/four$i" /dev/null & done
wait_jobs
t1=$(now)
R4=$(mbps "$B4" "$t0" "$t1")
for i in 1 2 3 4; do "$GFS" cat "/four$i" | cmp -s "$BENCH_DIR/src$i.bin" - || { echo "MISMATCH on /four$i"; exit 1; }; done

# With 3 replicas on one machine every byte written is written to the one disk three times
# and crosses loopback three times (client -> cs1 -> cs2 -> cs3).
WLIM=$(awk -v d="$DISK_W" -v n="$NET" 'BEGIN { a = d / 3; b = n / 3; printf "%.0f", (a < b ? a : b) }')
RLIM=$(awk -v d="$DISK_R" -v n="$NET" 'BEGIN { printf "%.0f", (d < n ? d : n) }')
echo "reads measured: $CACHE"
printf "%-34s %8s %10s %10s %10s\n" "gfs" "MB/s" "/disk" "/loopback" "/limit"
printf "%-34s %8s %10s %10s %10s\n" "write, 1 client"  "$W1" "$(ratio "$W1" "$DISK_W")" "$(ratio "$W1" "$NET")" "$(ratio "$W1" "$WLIM")"
printf "%-34s %8s %10s %10s %10s\n" "write, 4 clients" "$W4" "$(ratio "$W4" "$DISK_W")" "$(ratio "$W4" "$NET")" "$(ratio "$W4" "$WLIM")"
printf "%-34s %8s %10s %10s %10s\n" "read, 1 client"   "$R1" "$(ratio "$R1" "$DISK_R")" "$(ratio "$R1" "$NET")" "$(ratio "$R1" "$RLIM")"
printf "%-34s %8s %10s %10s %10s\n" "read, 4 clients"  "$R4" "$(ratio "$R4" "$DISK_R")" "$(ratio "$R4" "$NET")" "$(ratio "$R4" "$RLIM")"
echo "(write limit = min(disk write, loopback) / 3 = $WLIM MB/s; read limit = min(disk read, loopback) = $RLIM MB/s)"

echo "== record append (3 replicas)"
"$GFS" bench-append --threads 1 --records 64 --size 1048576 --path /append1
"$GFS" bench-append --threads 4 --records 32 --size 1048576 --path /append4
"$GFS" bench-append --threads 8 --records 16 --size 1048576 --path /append8
echo "== compare_and_set (the go-live test-and-set)"
"$GFS" bench-lock --ops 500

echo "== re-replication: a fourth chunkserver joins, one of the first three is killed"
"$GFS" chunkserver --dir "$BENCH_DIR/cs4" --listen "127.0.0.1:$(port)" --rack r4 \
    --heartbeat-ms 200 >"$BENCH_DIR/cs4.log" 2>&1 &
PIDS+=($!)
# Let every lease run out first: a lease held by the killed server cannot be revoked, and the
# master rightly waits for it to expire before copying that chunk; this measures copying alone.
sleep 11
LOST=$(du -sb --apparent-size "$BENCH_DIR/cs1" | awk '{ print $1 }')
kill -9 "${CS_PIDS[0]}"
until "$GFS" status | grep -q DOWN; do sleep 0.05; done
t0=$(now)
until "$GFS" fsck | grep -q " 0 under-replicated, 0 missing"; do sleep 0.1; done
t1=$(now)
echo "re-replicated $((LOST / 1048576)) MiB (all chunks of the dead server) in $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') s = $(mbps "$LOST" "$t0" "$t1") MB/s (from the server being marked down)"

echo "== master metadata operations (op log fsynced before every reply, group commit)"
"$GFS" bench-meta --threads 1 --ops "$((META_OPS / 4))" --dir /meta1
"$GFS" bench-meta --threads 8 --ops "$META_OPS" --dir /meta8

echo "== master memory"
"$MEM" 1000 1000
echo "master RSS after the run: $(awk '/VmRSS/ { print $2, $3 }' /proc/$MASTER_PID/status)"
