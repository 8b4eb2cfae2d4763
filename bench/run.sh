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

wait_port() { # until something answers on $1/$2 (tcp: accepts; udp: echoes), for at most 5 s
  python3 - "$1" "$2" <<'PY'
import socket, sys, time
proto, port = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 5
while time.monotonic() < deadline:
    try:
        if proto == "tcp":
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(0.1)
            s.sendto(b"x", ("127.0.0.1", port))
            s.recv(16)
        sys.exit(0)
    except OSError:
        time.sleep(0.05)
sys.exit("server on %s port %d did not come up" % (proto, port))
PY
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# measure PROTO NAME PORT PID [PAYLOAD EXPECT_MIN_BYTES]: load the server, print one row.
measure() {
  local proto=$1 name=$2 port=$3 pid=$4 payload=${5:-} expect=${6:-6} before after out rate
  wait_port "$proto" "$port"
  before=$(cpu_ticks "$pid")
  out=$("$BIN/loadgen" "$proto" "$port" "$CONCURRENCY" "$SECONDS_PER_RUN" "$payload" "$expect")
  after=$(cpu_ticks "$pid")
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rate=$(sed 's/.*rate=\([0-9]*\).*/\1/' <<<"$out")
  ok=$(sed 's/ok=\([0-9]*\).*/\1/' <<<"$out")
  local cpu_us=$(( (after - before) * 1000000 / TICKS / (ok > 0 ? ok : 1) ))
  printf '%-22s %8s/s  %s  server-cpu=%sus/req\n' "$name" "$rate" "$(cut -d' ' -f2,4- <<<"$out")" "$cpu_us"
  echo "$name|$rate" >>"$WORK/rates.$proto"
}

echo "TCP nowait, trivial handler, $CONCURRENCY clients, ${SECONDS_PER_RUN}s each, $(nproc) cores"

p=$((PORT + 1)); "$BIN/forkserver" "$p" "$HELLO" & measure tcp "forkserver (floor)" $p $!

cat >"$WORK/rinetd.conf" <<CONF
services:
  - name: hello
    address: 127.0.0.1
    port: $((PORT + 2))
    server: $HELLO
    max_children: 0
CONF
"$RINETD" -f -c "$WORK/rinetd.conf" 2>/dev/null & measure tcp "rinetd" $((PORT + 2)) $!
"$RINETD" -f -q -c "$WORK/rinetd.conf" 2>/dev/null & measure tcp "rinetd -q" $((PORT + 2)) $!

p=$((PORT + 3)); "$PEERS/usr/bin/tcpserver" -c 100000 -H -R -l 0 127.0.0.1 $p "$HELLO" 2>/dev/null & measure tcp "tcpserver" $p $!

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
  "$PEERS/usr/sbin/xinetd" -dontfork -f "$WORK/xinetd.conf" >/dev/null 2>&1 & measure tcp "xinetd" $p $!

p=$((PORT + 5))
echo "127.0.0.1:$p stream tcp nowait root $HELLO hello" >"$WORK/inetd.conf"
LD_LIBRARY_PATH=$PEERS/usr/lib/x86_64-linux-gnu:$PEERS/lib/x86_64-linux-gnu \
  "$PEERS/usr/sbin/inetd" -i -R 100000000 "$WORK/inetd.conf" >/dev/null 2>&1 & measure tcp "openbsd-inetd" $p $!

p=$((PORT + 6))
LD_LIBRARY_PATH=$PEERS/usr/lib/x86_64-linux-gnu:$PEERS/lib/x86_64-linux-gnu \
  "$PEERS/usr/bin/socat" "TCP-LISTEN:$p,bind=127.0.0.1,reuseaddr,fork" "EXEC:$HELLO" 2>/dev/null & measure tcp "socat" $p $!

ratios() { # PROTO FLOOR-NAME
  local floor
  floor=$(awk -F'|' -v name="$2" '$1 == name {print $2}' "$WORK/rates.$1")
  echo "$1 throughput relative to $2, measured in the same run:"
  awk -F'|' -v floor="$floor" '{printf "  %-20s %.2f\n", $1, $2 / floor}' "$WORK/rates.$1"
}
ratios tcp "forkserver (floor)"

echo
echo "UDP echo, 64-byte datagrams, $CONCURRENCY clients, ${SECONDS_PER_RUN}s each"
PAYLOAD=$(printf 'x%.0s' $(seq 64))
p=$((PORT + 11)); "$BIN/udpecho" $p & measure udp "udpecho (floor)" $p $! "$PAYLOAD" 64
cat >"$WORK/rinetd-udp.conf" <<CONF
services:
  - name: echo
    protocol: udp
    address: 127.0.0.1
    port: $((PORT + 12))
    builtin: echo
CONF
"$RINETD" -f -c "$WORK/rinetd-udp.conf" 2>/dev/null & measure udp "rinetd echo" $((PORT + 12)) $! "$PAYLOAD" 64
# Peers: OpenBSD inetd's UDP builtins drop datagrams from 127.0.0.0/8 (anti-spoofing) and
# xinetd's internal echo-dgram answered none on loopback here, so the floor is the only peer.
ratios udp "udpecho (floor)"
