#!/bin/bash
# Side-by-side TCP nowait benchmark: one trivial handler (shared/bench/hello.c, static), the same
# closed-loop load (shared/bench/loadgen.c) against rinetd and its peers, all in one run so the
# ratios hold on a noisy shared machine. Prints connections/s, latency, and the server's own CPU
# per connection (utime+stime of the server process, children excluded).
#
#   bench/run.sh [SECONDS] [CONCURRENCY]      (make bench runs it with the defaults: 5 s, 8)
set -eu
SECONDS_PER_RUN=${1:-5}
CONCURRENCY=${2:-8}
HERE=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$HERE/../shared/bench}
PEERS=${PEERS:-/opt/peers/root}
BIN=${BIN:-/tmp/rinetd-bench-bin}
export PEERS BIN
bash "$SHARED/setup-peers.sh" >/dev/null
RINETD=$HERE/target/release/rinetd
[ -x "$RINETD" ] || (cd "$HERE" && cargo build --release -q)
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
HELLO=$BIN/hello
PORT=${BENCH_PORT:-18400}
TICKS=$(getconf CLK_TCK)

wait_port() { # until something accepts on $1, for at most 5 s
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "server on port $1 did not come up" >&2; return 1
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# measure NAME PORT PID: load the server, print one row.
measure() {
  local name=$1 port=$2 pid=$3 before after out rate
  wait_port "$port"
  before=$(cpu_ticks "$pid")
  out=$("$BIN/loadgen" tcp "$port" "$CONCURRENCY" "$SECONDS_PER_RUN" "" 6)
  after=$(cpu_ticks "$pid")
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rate=$(sed 's/.*rate=\([0-9]*\).*/\1/' <<<"$out")
  ok=$(sed 's/ok=\([0-9]*\).*/\1/' <<<"$out")
  local cpu_us=$(( (after - before) * 1000000 / TICKS / (ok > 0 ? ok : 1) ))
  printf '%-22s %8s/s  %s  server-cpu=%sus/conn\n' "$name" "$rate" "$(cut -d' ' -f2,4- <<<"$out")" "$cpu_us"
  echo "$name|$rate" >>"$WORK/rates"
}

echo "TCP nowait, trivial handler, $CONCURRENCY clients, ${SECONDS_PER_RUN}s each, $(nproc) cores"

p=$((PORT + 1)); "$BIN/forkserver" "$p" "$HELLO" & measure "forkserver (floor)" $p $!

cat >"$WORK/rinetd.conf" <<CONF
services:
  - name: hello
    address: 127.0.0.1
    port: $((PORT + 2))
    server: $HELLO
    max_children: 0
CONF
"$RINETD" -f -c "$WORK/rinetd.conf" 2>/dev/null & measure "rinetd" $((PORT + 2)) $!
"$RINETD" -f -q -c "$WORK/rinetd.conf" 2>/dev/null & measure "rinetd -q" $((PORT + 2)) $!

p=$((PORT + 3)); "$PEERS/usr/bin/tcpserver" -c 100000 -H -R -l 0 127.0.0.1 $p "$HELLO" 2>/dev/null & measure "tcpserver" $p $!

p=$((PORT + 4))
cat >"$WORK/xinetd.conf" <<CONF
defaults
{
  instances = UNLIMITED
  cps = 1000000 1
  per_source = UNLIMITED
  log_on_success =
  log_on_failure =
}
service hello
{
  type = UNLISTED
  socket_type = stream
  protocol = tcp
  wait = no
  user = root
  bind = 127.0.0.1
  port = $p
  server = $HELLO
}
CONF
LD_LIBRARY_PATH=$PEERS/usr/lib/x86_64-linux-gnu:$PEERS/lib/x86_64-linux-gnu \
  "$PEERS/usr/sbin/xinetd" -dontfork -f "$WORK/xinetd.conf" >/dev/null 2>&1 & measure "xinetd" $p $!

p=$((PORT + 5))
echo "127.0.0.1:$p stream tcp nowait root $HELLO hello" >"$WORK/inetd.conf"
LD_LIBRARY_PATH=$PEERS/usr/lib/x86_64-linux-gnu:$PEERS/lib/x86_64-linux-gnu \
  "$PEERS/usr/sbin/inetd" -i -R 100000000 "$WORK/inetd.conf" >/dev/null 2>&1 & measure "openbsd-inetd" $p $!

p=$((PORT + 6))
LD_LIBRARY_PATH=$PEERS/usr/lib/x86_64-linux-gnu:$PEERS/lib/x86_64-linux-gnu \
  "$PEERS/usr/bin/socat" "TCP-LISTEN:$p,bind=127.0.0.1,reuseaddr,fork" "EXEC:$HELLO" 2>/dev/null & measure "socat" $p $!

floor=$(awk -F'|' '/^forkserver/ {print $2}' "$WORK/rates")
echo "throughput relative to the bare fork+exec floor measured above:"
awk -F'|' -v floor="$floor" '{printf "  %-20s %.2f\n", $1, $2 / floor}' "$WORK/rates"
