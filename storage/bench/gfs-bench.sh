#!/usr/bin/env bash
# gfs benchmark: gfs's data path side by side with this machine's own copy of the same bytes,
# then the other gfs figures (record append, compare_and_set, re-replication, master).
#
#   storage/bench/gfs-bench.sh                 # 1 GiB, 3 rounds, everything
#   ROUNDS=2 DATA_ONLY=1 storage/bench/gfs-bench.sh
#   BASE_GFS=/path/to/older/gfs storage/bench/gfs-bench.sh   # also run an older build, side by side
#
# Each data-path round runs, one after another on the same idle cluster(s):
#   dd3        three `dd bs=4M oflag=dsync` writers of the source file, one per replica dir
#              (what three replicas on this one disk cost when each 4 MiB is synced)
#   put        `gfs put` (every mutation fdatasynced on every replica before it is acknowledged)
#   put-sync   `gfs put --sync` (acknowledged from memory, one sync per chunk at the end)
#   put-buf    `gfs put` on chunkservers started with --buffered-io (page cache + fdatasync
#              instead of O_DIRECT)
#   put-base   `gfs put` with BASE_GFS's binaries (only if BASE_GFS is set)
#   put-base-plain  the same on a cluster of BASE_GFS's binaries run --insecure (a build from
#              before sealing, such as 88b9a09, has no --insecure and is plain anyway): the
#              issue's CPU goal is "without encryption", so put-plain is compared with this
#   put-plain  `gfs put` on a cluster run --insecure: the cost of sealing every connection
#              (everything else runs with the bench's cluster key, FT_KEYS)
#   dd-read    one `dd bs=4M` read of a dd-written copy, page cache dropped first
#   get        `gfs get` into /dev/null, page cache dropped first (checked with cmp afterwards)
#   get-buf    the same on the --buffered-io chunkservers
#   get-base   the same with BASE_GFS's binaries (only if BASE_GFS is set)
#   get-base-plain  the same on BASE_GFS's --insecure (or pre-sealing) cluster
#   get-plain  the same on the --insecure cluster
# For each: MiB/s, CPU-seconds per GiB (client + all chunkservers of that cluster, or the dd
# processes, from /proc) and how busy the machine's CPUs were meanwhile (/proc/stat; the
# machine may be shared, so this counts everyone). Needs root to drop the page cache.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
SIZE_MIB="${SIZE_MIB:-1024}"
PER4_MIB="${PER4_MIB:-256}"
ROUNDS="${ROUNDS:-3}"
DATA_ONLY="${DATA_ONLY:-0}"
BASE_GFS="${BASE_GFS:-}"
BENCH_DIR="${BENCH_DIR:-/tmp/gfs-bench}"
META_OPS="${META_OPS:-8000}"

(cd "$ROOT" && cargo build -q -p storage --release --bins --examples)
GFS="$CARGO_TARGET_DIR/release/gfs"
MEM="$CARGO_TARGET_DIR/release/examples/master_mem"

rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"
# Every gfs below is sealed with this key, but the --insecure cluster's.
export FT_KEYS="$BENCH_DIR/keys"
"$GFS" keygen "$FT_KEYS" >/dev/null
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$BENCH_DIR"
}
trap cleanup EXIT

now() { date +%s.%N; }
mbps() { awk -v b="$1" -v t0="$2" -v t1="$3" 'BEGIN { printf "%.0f", b / (t1 - t0) / 1e6 }'; }
mibps() { awk -v b="$1" -v t0="$2" -v t1="$3" 'BEGIN { printf "%.0f", b / (t1 - t0) / 1048576 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
drop_caches() {
    sync
    if echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; then CACHE="cold"; else CACHE="page cache may be warm"; fi
}
TICK=$(getconf CLK_TCK)
# CPU seconds (user + system) used so far by the given live processes.
proc_cpu() {
    local t=0 p
    for p in "$@"; do
        t=$(awk -v t="$t" -v hz="$TICK" '{ sub(/^.*\) /, ""); print t + ($12 + $13) / hz }' "/proc/$p/stat")
    done
    echo "$t"
}
# Busy and total jiffies of all CPUs (busy excludes idle and iowait).
cpu_jiffies() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat; }
busy_pct() { awk -v a="$1" -v b="$2" -v c="$3" -v d="$4" 'BEGIN { if (d > b) printf "%.0f", 100 * (c - a) / (d - b); else print "n/a" }'; }

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# [CLUSTER_FLAGS=...] start_cluster NAME BINARY [chunkserver flags...]: master + 3 chunkservers,
# each started with CLUSTER_FLAGS (e.g. --insecure); sets ${NAME}_MASTER and ${NAME}_CS
# (chunkserver pids).
start_cluster() {
    local name=$1 bin=$2; shift 2
    local mp cs=() i flags=${CLUSTER_FLAGS:-}
    mp=$(port)
    "$bin" $flags master --dir "$BENCH_DIR/$name/master" --listen "127.0.0.1:$mp" --dead-after-secs 2 --lease-secs 10 \
        >"$BENCH_DIR/$name-master.log" 2>&1 &
    PIDS+=($!)
    eval "${name}_MASTER_PID=$!"
    for i in 1 2 3; do
        "$bin" $flags chunkserver --master "127.0.0.1:$mp" --dir "$BENCH_DIR/$name/cs$i" --listen "127.0.0.1:$(port)" \
            --rack "r$i" --heartbeat-ms 200 "$@" >"$BENCH_DIR/$name-cs$i.log" 2>&1 &
        PIDS+=($!); cs+=($!)
    done
    eval "${name}_MASTER=127.0.0.1:$mp"
    eval "${name}_CS='${cs[*]}'"
    until [ "$("$bin" $flags --master "127.0.0.1:$mp" status 2>/dev/null | grep -cw up)" -ge 3 ]; do sleep 0.1; done
}

# timed LABEL CLUSTER_PIDS -- command...: runs the command, records MiB/s of $BYTES, CPU-s per
# GiB (the command and its children, plus the listed live processes) and busy %.
declare -A RATE CPU BUSY
timed() {
    local label=$1 pids=$2; shift 3
    local c0 c1 j0 j1 t0 t1 out
    c0=$(proc_cpu $pids); read -r j0b j0t < <(cpu_jiffies)
    out="$BENCH_DIR/time.out"
    t0=$(now)
    /usr/bin/time -f "%U %S" -o "$out" "$@"
    t1=$(now)
    c1=$(proc_cpu $pids); read -r j1b j1t < <(cpu_jiffies)
    local own
    own=$(awk '{ print $1 + $2 }' "$out")
    RATE[$label]=$(mibps "$BYTES" "$t0" "$t1")
    CPU[$label]=$(awk -v a="$c0" -v b="$c1" -v o="$own" -v g="$((BYTES / 1048576))" 'BEGIN { printf "%.2f", (b - a + o) * 1024 / g }')
    BUSY[$label]=$(busy_pct "$j0b" "$j0t" "$j1b" "$j1t")
}

SRC="$BENCH_DIR/src.bin"
BYTES=$((SIZE_MIB * 1024 * 1024))
head -c "$BYTES" /dev/urandom >"$SRC"
mkdir -p "$BENCH_DIR/dd1" "$BENCH_DIR/dd2" "$BENCH_DIR/dd3"
NET=$("$GFS" bench-net --mib 4096 | sed -E 's/.*= ([0-9]+) MB\/s/\1/')
echo "loopback TCP (one stream): $NET MB/s"

start_cluster A "$GFS"
start_cluster B "$GFS" --buffered-io
CLUSTER_FLAGS=--insecure start_cluster P "$GFS"
if [ -n "$BASE_GFS" ]; then
    start_cluster Z "$BASE_GFS"
    # A build from before sealing knows no --insecure (and ignores FT_KEYS): it is plain as is.
    BASE_PLAIN=""
    if "$BASE_GFS" --help 2>&1 | grep -q -- '--insecure'; then BASE_PLAIN=--insecure; fi
    CLUSTER_FLAGS=$BASE_PLAIN start_cluster Y "$BASE_GFS"
    echo "base build: $BASE_GFS (${BASE_PLAIN:-no sealing: plain without --insecure})"
fi

wait_jobs() { local rc=0 j; for j in $(jobs -p); do case " ${PIDS[*]} " in *" $j "*) ;; *) wait "$j" || rc=1 ;; esac; done; return $rc; }

printf "%-9s %-10s %8s %8s %10s %7s %9s\n" round copy "MiB/s" "/dd" "CPU-s/GiB" "busy%" "/dd CPU"
for r in $(seq 1 "$ROUNDS"); do
    rm -f "$BENCH_DIR"/dd?/copy
    sync
    timed dd3 "" -- bash -c 'for i in 1 2 3; do dd if="$1" of="$2/dd$i/copy" bs=4M oflag=dsync status=none & done; wait' \
        - "$SRC" "$BENCH_DIR"
    # three writers each wrote BYTES: the figure comparable to one gfs put is per writer.
    timed put "$A_CS" -- "$GFS" --master "$A_MASTER" put "$SRC" "/r$r"
    timed put-sync "$A_CS" -- "$GFS" --master "$A_MASTER" put --sync "$SRC" "/r$r-sync"
    timed put-buf "$B_CS" -- "$GFS" --master "$B_MASTER" put "$SRC" "/r$r"
    if [ -n "$BASE_GFS" ]; then timed put-base "$Z_CS" -- "$BASE_GFS" --master "$Z_MASTER" put "$SRC" "/r$r"; fi
    if [ -n "$BASE_GFS" ]; then
        timed put-base-plain "$Y_CS" -- "$BASE_GFS" $BASE_PLAIN --master "$Y_MASTER" put "$SRC" "/r$r"
    fi
    timed put-plain "$P_CS" -- "$GFS" --insecure --master "$P_MASTER" put "$SRC" "/r$r"
    drop_caches
    timed dd-read "" -- dd if="$BENCH_DIR/dd1/copy" of=/dev/null bs=4M status=none
    drop_caches
    timed get "$A_CS" -- "$GFS" --master "$A_MASTER" get "/r$r" /dev/null
    drop_caches
    timed get-buf "$B_CS" -- "$GFS" --master "$B_MASTER" get "/r$r" /dev/null
    if [ -n "$BASE_GFS" ]; then drop_caches; timed get-base "$Z_CS" -- "$BASE_GFS" --master "$Z_MASTER" get "/r$r" /dev/null; fi
    if [ -n "$BASE_GFS" ]; then
        drop_caches
        timed get-base-plain "$Y_CS" -- "$BASE_GFS" $BASE_PLAIN --master "$Y_MASTER" get "/r$r" /dev/null
    fi
    drop_caches
    timed get-plain "$P_CS" -- "$GFS" --insecure --master "$P_MASTER" get "/r$r" /dev/null
    for k in dd3 put put-sync put-buf put-base put-base-plain put-plain; do
        [ -n "${RATE[$k]:-}" ] || continue
        printf "%-9s %-10s %8s %8s %10s %7s %9s\n" "$r" "$k" "${RATE[$k]}" "$(ratio "${RATE[$k]}" "${RATE[dd3]}")" \
            "${CPU[$k]}" "${BUSY[$k]}" "$(ratio "${CPU[$k]}" "${CPU[dd3]}")"
    done
    for k in dd-read get get-buf get-base get-base-plain get-plain; do
        [ -n "${RATE[$k]:-}" ] || continue
        printf "%-9s %-10s %8s %8s %10s %7s %9s\n" "$r" "$k" "${RATE[$k]}" "$(ratio "${RATE[$k]}" "${RATE[dd-read]}")" \
            "${CPU[$k]}" "${BUSY[$k]}" "$(ratio "${CPU[$k]}" "${CPU[dd-read]}")"
    done
    printf "%-9s sealed / --insecure: put %s (CPU-s/GiB %s), get %s (CPU-s/GiB %s)\n" "$r" \
        "$(ratio "${RATE[put]}" "${RATE[put-plain]}")" "$(ratio "${CPU[put]}" "${CPU[put-plain]}")" \
        "$(ratio "${RATE[get]}" "${RATE[get-plain]}")" "$(ratio "${CPU[get]}" "${CPU[get-plain]}")"
    if [ -n "$BASE_GFS" ]; then
        printf "%-9s plain now / plain base: put CPU-s/GiB %s (MiB/s %s), get CPU-s/GiB %s (MiB/s %s)\n" "$r" \
            "$(ratio "${CPU[put-plain]}" "${CPU[put-base-plain]}")" "$(ratio "${RATE[put-plain]}" "${RATE[put-base-plain]}")" \
            "$(ratio "${CPU[get-plain]}" "${CPU[get-base-plain]}")" "$(ratio "${RATE[get-plain]}" "${RATE[get-base-plain]}")"
        "$BASE_GFS" $BASE_PLAIN --master "$Y_MASTER" cat "/r$r" | cmp -s "$SRC" - || { echo "MISMATCH on base plain /r$r"; exit 1; }
        "$BASE_GFS" $BASE_PLAIN --master "$Y_MASTER" rm "/r$r"
    fi
    "$GFS" --insecure --master "$P_MASTER" cat "/r$r" | cmp -s "$SRC" - || { echo "MISMATCH on unsealed /r$r"; exit 1; }
    "$GFS" --insecure --master "$P_MASTER" rm "/r$r"
    "$GFS" --master "$A_MASTER" cat "/r$r" | cmp -s "$SRC" - || { echo "MISMATCH on /r$r"; exit 1; }
    "$GFS" --master "$A_MASTER" cat "/r$r-sync" | cmp -s "$SRC" - || { echo "MISMATCH on /r$r-sync"; exit 1; }
    "$GFS" --master "$B_MASTER" cat "/r$r" | cmp -s "$SRC" - || { echo "MISMATCH on buffered /r$r"; exit 1; }
    "$GFS" --master "$A_MASTER" rm "/r$r"; "$GFS" --master "$A_MASTER" rm "/r$r-sync"; "$GFS" --master "$B_MASTER" rm "/r$r"
    if [ -n "$BASE_GFS" ]; then "$BASE_GFS" --master "$Z_MASTER" rm "/r$r"; fi
done
echo "reads measured: $CACHE; dd3 MiB/s is per writer (each wrote all $SIZE_MIB MiB), CPU-s/GiB of dd3 counts all three"
echo "goals: put >= 0.9 of dd3, get >= 0.75 of dd-read, CPU-s/GiB of put a third below put-base"
if [ -n "$BASE_GFS" ]; then echo "without encryption (the issue's terms): CPU-s/GiB of put-plain <= 0.67 of put-base-plain"; fi
rm -f "$BENCH_DIR"/dd?/copy
[ "$DATA_ONLY" = 1 ] && exit 0
for p in $(echo "$B_CS") ${B_MASTER_PID:-} $(echo "$P_CS") ${P_MASTER_PID:-}; do kill "$p" 2>/dev/null || true; done
if [ -n "$BASE_GFS" ]; then for p in $Z_CS $Z_MASTER_PID $Y_CS $Y_MASTER_PID; do kill "$p" 2>/dev/null || true; done; fi

echo "== the other gfs figures, on cluster A (3 chunkservers, 3 replicas)"
export GFS_MASTER="$A_MASTER"
MASTER_PID=$A_MASTER_PID
read -r -a CS_PIDS <<<"$A_CS"
for i in 1 2 3 4; do head -c $((PER4_MIB * 1024 * 1024)) "$SRC" >"$BENCH_DIR/src$i.bin"; done
B4=$((4 * PER4_MIB * 1024 * 1024))
t0=$(now)
for i in 1 2 3 4; do "$GFS" put "$BENCH_DIR/src$i.bin" "/four$i" & done
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
echo "write, 4 clients x $PER4_MIB MiB: $W4 MB/s; read, 4 clients: $R4 MB/s ($CACHE)"
echo "== record append (3 replicas)"
"$GFS" bench-append --threads 1 --records 64 --size 1048576 --path /append1
"$GFS" bench-append --threads 4 --records 32 --size 1048576 --path /append4
"$GFS" bench-append --threads 8 --records 16 --size 1048576 --path /append8
echo "== compare_and_set (the go-live test-and-set)"
"$GFS" bench-lock --ops 500

echo "== re-replication: a fourth chunkserver joins, one of the first three is killed"
"$GFS" chunkserver --dir "$BENCH_DIR/A/cs4" --listen "127.0.0.1:$(port)" --rack r4 \
    --heartbeat-ms 200 >"$BENCH_DIR/cs4.log" 2>&1 &
PIDS+=($!)
# Let every lease run out first: a lease held by the killed server cannot be revoked, and the
# master rightly waits for it to expire before copying that chunk; this measures copying alone.
sleep 11
LOST=$(du -sb --apparent-size "$BENCH_DIR/A/cs1" | awk '{ print $1 }')
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
