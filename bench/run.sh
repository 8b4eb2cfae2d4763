#!/bin/bash
# rinetd side by side with the bare C floors and its peers, in one run, as interleaved rounds:
# round r runs every server of every section once (the order rotated by r), so the machine's noise
# spreads over all of them; the report gives min / median / max per row and ratios of medians
# against the floor measured in the same run. Raw per-round numbers go to target/bench/*.csv.
#
#   bench/run.sh [OPTIONS] [SECTION...]          (make bench = bench/run.sh, all sections)
#
# Sections (default: all of them):
#   tcp      connections/s, p50/p99, server CPU per connection (and instructions per connection
#            where `perf stat -e instructions` works) for the static C `hello` and a /bin/sh script
#            handler at each client count: forkserver (floor), rinetd, rinetd -q, tcpserver,
#            xinetd, openbsd-inetd, socat
#   udp      echo datagrams/s: rinetd's echo builtin against the bare udpecho loop (floor)
#   tls      rinetd's own TLS against stunnel4 running the same handlers in its exec mode, same
#            certificate: full handshakes/s (`openssl s_time -new`, the static `hello` handler) at each
#            client count, and MiB/s of one BENCH_BULK_MIB (256) transfer each way (socat client);
#            server CPU (utime+stime of the whole process, threads included, children excluded)
#   mem      RSS, RssAnon (private) and Pss, idle, with 10 and 1,000 TCP services:
#            rinetd, xinetd, openbsd-inetd
#   startup  exec -> all 1,000 (and 10) ports listening -> the last one serves
#   reload   1,000 services, one moved to a new port: SIGHUP -> it answers there; rinetd's own
#            "reload checked duration=" + "reloaded ... duration=" log figures
#   handlers rinetd's connections/s and CPU per connection (static `hello`) with none and with
#            BENCH_HOLD (5,000) long-running handlers of another service running
#
# Options (each also an environment variable):
#   -r, --rounds N        BENCH_ROUNDS    interleaved rounds (default 5; quick: 2)
#   -s, --seconds S       BENCH_SECONDS   load seconds per row and round (default 3; quick: 1)
#   -c, --clients "1 8"   BENCH_CLIENTS   concurrent clients, one row each (default "1 8")
#   -q, --quick           BENCH_QUICK=1   1 s rounds, 2 rounds: a smoke run, not figures to quote
#       --only REGEX      BENCH_ONLY      only the servers whose name matches (floors always run)
#   RINETD=path           the rinetd under test (default target/release/rinetd, built if missing)
#   RINETD_BASELINE=path  add "rinetd (baseline)" rows of a second binary, measured in the same rounds
#   BENCH_HOLD=5000       long-running handlers in the handlers section
#   BENCH_PORT=24000      first port of the range used (BENCH_PORT .. BENCH_PORT+1100, 127.0.0.1)
#   BENCH_PERF=0          skip the instructions row; BENCH_PERF_EVENT=instructions (the event)
#   BENCH_OUT=target/bench  where the CSV and the Markdown table are written
#   SHARED, PEERS, BIN    shared/bench, the unpacked peers, the built C tools (as setup-peers.sh)
#
# Every server's stderr goes to /dev/null during the load rows (rinetd's default logging is still
# formatted and written: 2 lines per connection); to a file for start-up and reload.
set -euo pipefail

HERE=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$HERE/../shared/bench}
PEERS=${PEERS:-/opt/peers/root}
BIN=${BIN:-/tmp/rinetd-bench-bin}
export PEERS BIN

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

QUICK=${BENCH_QUICK:-0}
ROUNDS=${BENCH_ROUNDS:-}
SECS=${BENCH_SECONDS:-}
CLIENTS=${BENCH_CLIENTS:-1 8}
ONLY=${BENCH_ONLY:-}
SECTIONS=()
ARGS=("$@")
while [ $# -gt 0 ]; do
  case $1 in
    -r | --rounds) ROUNDS=$2; shift ;;
    -s | --seconds) SECS=$2; shift ;;
    -c | --clients) CLIENTS=$2; shift ;;
    -q | --quick) QUICK=1 ;;
    --only) ONLY=$2; shift ;;
    -h | --help) usage; exit 0 ;;
    all) SECTIONS+=(tcp udp tls mem startup reload handlers) ;;
    tcp | udp | tls | mem | startup | reload | handlers) SECTIONS+=("$1") ;;
    *) echo "bench: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift
done
[ ${#SECTIONS[@]} -gt 0 ] || SECTIONS=(tcp udp tls mem startup reload handlers)
if [ "$QUICK" = 1 ]; then ROUNDS=${ROUNDS:-2} SECS=${SECS:-1}; fi
ROUNDS=${ROUNDS:-5}
SECS=${SECS:-3}
for v in "$ROUNDS" "$SECS" $CLIENTS; do
  [[ $v =~ ^[1-9][0-9]*$ ]] || { echo "bench: '$v' is not a positive integer" >&2; exit 2; }
done
has() { local s; for s in "${SECTIONS[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }

bash "$SHARED/setup-peers.sh" >/dev/null
gcc -O2 -Wall -o "$BIN/probe" "$HERE/bench/probe.c"
PROBE=$BIN/probe
HELLO=$BIN/hello
PEERLIB=$PEERS/usr/lib/x86_64-linux-gnu:$PEERS/lib/x86_64-linux-gnu

RINETD=${RINETD:-$HERE/target/release/rinetd}
if [ ! -x "$RINETD" ] && [ "$RINETD" = "$HERE/target/release/rinetd" ]; then
  (cd "$HERE" && cargo build --release -q)
fi
[ -x "$RINETD" ] || { echo "bench: no rinetd binary at $RINETD" >&2; exit 1; }
BASELINE=${RINETD_BASELINE:-}
[ -z "$BASELINE" ] || [ -x "$BASELINE" ] || { echo "bench: RINETD_BASELINE=$BASELINE is not executable" >&2; exit 1; }

BASE=${BENCH_PORT:-24000}
TBASE=$((BASE + 100)) # the 10/1,000-service tables: TBASE .. TBASE+999, the moved service TBASE+1000
if [ "$("$PROBE" count "$BASE" $((BASE + 1100)))" != 0 ]; then
  echo "bench: something already listens on 127.0.0.1:$BASE-$((BASE + 1100)); set BENCH_PORT" >&2
  exit 1
fi
read -r EPH_LO EPH_HI </proc/sys/net/ipv4/ip_local_port_range
if [ $((BASE + 1100)) -ge "$EPH_LO" ] && [ "$BASE" -le "$EPH_HI" ]; then
  echo "bench: warning: ports $BASE-$((BASE + 1100)) overlap the ephemeral range $EPH_LO-$EPH_HI" >&2
fi

OUT=${BENCH_OUT:-$HERE/target/bench}
mkdir -p "$OUT"
STAMP=$(date +%Y%m%d-%H%M%S)
CSV=$OUT/bench-$STAMP.csv
TABLE=$OUT/bench-$STAMP.md
WORK=$(mktemp -d /tmp/rinetd-bench.XXXXXX)

# ---- processes: every server is a child of this shell, started through `probe exec` (its parent-death
# signal is SIGTERM); the traps stop whatever runs: nothing outlives the script ---------------------
SPID='' PERF_PID='' PCTL='' PACK=''
alive() { # PID: exists and is not a zombie
  local stat
  { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}
stop_pid() { # PID: SIGTERM, up to 5 s, then SIGKILL; reaped
  local pid=$1 i
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 250; i++)); do alive "$pid" || break; sleep 0.02; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  trap - EXIT INT TERM
  [ -z "$PERF_PID" ] || stop_pid "$PERF_PID"
  [ -z "$SPID" ] || stop_pid "$SPID"
  local pid
  for pid in $(jobs -p); do stop_pid "$pid"; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'echo "bench: interrupted" >&2; exit 130' INT TERM

fail_server() { # SECTION CASE NAME MESSAGE [LOG]: a hole in its row (reported as such), not the end of the run
  emit "$1" "$2" "$3" failed 1
  echo "bench: round $ROUND: $1 $2 $3: $4" >&2
  [ -z "${5:-}" ] || [ ! -s "$5" ] || tail -n 3 "$5" | sed 's/^/    /' >&2
}

# ---- measuring ---------------------------------------------------------------------------
ROUND=0
emit() { echo "$1,$2,$3,$ROUND,$4,$5" >>"$CSV"; } # SECTION CASE SERVER METRIC VALUE
meta() { echo "meta,,,,$1,${2//,/;}" >>"$CSV"; }

cpu_ns() { # PID: on-CPU time of the process's threads in ns (schedstat: utime+stime at full resolution)
  local f sum=0 run rest
  for f in /proc/"$1"/task/*/schedstat; do
    { read -r run rest <"$f"; } 2>/dev/null && sum=$((sum + run))
  done
  echo "$sum"
}
cpu_ticks() { # PID: utime+stime in clock ticks, /proc/PID/stat (children excluded); 0 if it is gone
  local stat
  { read -r stat <"/proc/$1/stat"; } 2>/dev/null || { echo 0; return; }
  stat=${stat##*) }
  set -- $stat
  echo $((${12} + ${13}))
}

PERF_EVENT=
perf_check() { # sets PERF_EVENT when `perf stat -e EVENT` counts on this machine
  local ev=${BENCH_PERF_EVENT:-instructions} out
  PERF_NOTE=
  if [ "${BENCH_PERF:-1}" = 0 ]; then PERF_NOTE="skipped (BENCH_PERF=0)"; return; fi
  if ! command -v perf >/dev/null; then PERF_NOTE="not measured: perf is not installed"; return; fi
  out=$(perf stat -x, -e "$ev" true 2>&1 >/dev/null) || true
  if grep -qE '^[0-9.]+,' <<<"$out"; then
    PERF_EVENT=$ev
  else
    if [[ $out == *"<not supported>"* ]]; then
      PERF_NOTE="not measured: \`perf stat -e $ev true\` reports <not supported> on this machine (no hardware counters here: usual in a VM)"
    else
      PERF_NOTE="not measured: \`perf stat -e $ev true\` failed on this machine: $(head -n 1 <<<"$out")"
    fi
  fi
}
perf_begin() { # PID: a counter on the server process alone (--no-inherit: not its handlers), enabled on ack
  [ -n "$PERF_EVENT" ] || return 0
  rm -f "$WORK/perf.ctl" "$WORK/perf.ack" "$WORK/perf.out"
  mkfifo "$WORK/perf.ctl" "$WORK/perf.ack"
  perf stat --no-inherit -x, -e "$PERF_EVENT" -D -1 --control "fifo:$WORK/perf.ctl,$WORK/perf.ack" \
    -p "$1" -o "$WORK/perf.out" >/dev/null 2>&1 &
  PERF_PID=$!
  exec {PCTL}<>"$WORK/perf.ctl" {PACK}<>"$WORK/perf.ack"
  echo enable >&"$PCTL"
  read -r -t 10 -u "$PACK" _ || echo "bench: perf did not acknowledge 'enable'" >&2
}
PERF_COUNT=
perf_end() { # sets PERF_COUNT (empty when not counting)
  PERF_COUNT=
  [ -n "$PERF_EVENT" ] || return 0
  echo disable >&"$PCTL"
  read -r -t 10 -u "$PACK" _ || echo "bench: perf did not acknowledge 'disable'" >&2
  kill -INT "$PERF_PID" 2>/dev/null || true
  local i
  for ((i = 0; i < 250; i++)); do alive "$PERF_PID" || break; sleep 0.02; done
  stop_pid "$PERF_PID"
  PERF_PID=
  exec {PCTL}>&- {PACK}>&-
  PERF_COUNT=$(awk -F, '/^[0-9.]+,/ {print $1; exit}' "$WORK/perf.out" 2>/dev/null || true)
}

# load SECTION CASE NAME PROTO PORT CLIENTS PID [PAYLOAD EXPECT]: one load window, one CSV row each
load() {
  local section=$1 case=$2 name=$3 proto=$4 port=$5 clients=$6 pid=$7 payload=${8:-} expect=${9:-6}
  local ns0 ns1 t0 t1 out insn
  perf_begin "$pid"
  ns0=$(cpu_ns "$pid") t0=$(cpu_ticks "$pid")
  out=$("$BIN/loadgen" "$proto" "$port" "$clients" "$SECS" "$payload" "$expect")
  ns1=$(cpu_ns "$pid") t1=$(cpu_ticks "$pid")
  perf_end
  insn=$PERF_COUNT
  if ! alive "$pid"; then
    fail_server "$section" "$case" "$name" "exited during the load ($out)"
    return
  fi
  [[ $out =~ ok=([0-9]+)\ err=([0-9]+)\ rate=([0-9]+)/s\ p50=([0-9]+)us\ p99=([0-9]+)us\ max=([0-9]+)us ]] ||
    { echo "bench: loadgen said: $out" >&2; return; }
  local ok=${BASH_REMATCH[1]} n
  emit "$section" "$case" "$name" ok "$ok"
  emit "$section" "$case" "$name" err "${BASH_REMATCH[2]}"
  emit "$section" "$case" "$name" rate "${BASH_REMATCH[3]}"
  emit "$section" "$case" "$name" p50_us "${BASH_REMATCH[4]}"
  emit "$section" "$case" "$name" p99_us "${BASH_REMATCH[5]}"
  emit "$section" "$case" "$name" max_us "${BASH_REMATCH[6]}"
  n=$((ok > 0 ? ok : 1))
  emit "$section" "$case" "$name" cpu_ns_total $((ns1 - ns0))
  emit "$section" "$case" "$name" cpu_ticks_total $((t1 - t0))
  [ -z "$insn" ] || emit "$section" "$case" "$name" insn_total "$insn"
  printf 'round %s/%s  %-4s %-12s %-24s %7s/s  p99=%6sus  cpu=%5.1fus%s\n' "$ROUND" "$ROUNDS" "$section" \
    "$case" "$name" "${BASH_REMATCH[3]}" "${BASH_REMATCH[5]}" "$(((ns1 - ns0) / n))e-3" \
    "${insn:+  $PERF_EVENT=$(awk -v a="$insn" -v n=$n 'BEGIN {printf "%.0f", a / n}')}" >&2
}

rotate() { # N WORDS...: the words, starting at index N mod count
  local n=$1; shift
  local a=("$@") i
  for ((i = 0; i < ${#a[@]}; i++)); do echo "${a[(i + n) % ${#a[@]}]}"; done
}
wanted() { [ -z "$ONLY" ] || [[ $1 == *floor* ]] || [[ $1 =~ $ONLY ]]; }

# ---- configs -------------------------------------------------------------------------------
printf '#!/bin/sh\necho hello\n' >"$WORK/hello.sh"
chmod 755 "$WORK/hello.sh"
handler_path() { case $1 in hello) echo "$HELLO" ;; sh) echo "$WORK/hello.sh" ;; esac; }

rinetd_conf() { # FILE FIRST-PORT COUNT HANDLER [MOVED-PORT]: COUNT services on 127.0.0.1
  local i port
  {
    echo "services:"
    for ((i = 0; i < $3; i++)); do
      port=$(($2 + i))
      [ -z "${5:-}" ] || [ $i -ne $(($3 - 1)) ] || port=$5
      printf '  - name: s%d\n    address: 127.0.0.1\n    port: %d\n    server: %s\n    max_children: 0\n' \
        "$i" "$port" "$4"
    done
  } >"$1"
}
xinetd_conf() {
  local i port
  {
    printf 'defaults\n{\n  instances = UNLIMITED\n  cps = 1000000 1\n  per_source = UNLIMITED\n'
    printf '  log_on_success =\n  log_on_failure =\n}\n'
    for ((i = 0; i < $3; i++)); do
      port=$(($2 + i))
      [ -z "${5:-}" ] || [ $i -ne $(($3 - 1)) ] || port=$5
      printf 'service s%d\n{\n  type = UNLISTED\n  socket_type = stream\n  protocol = tcp\n' "$i"
      printf '  wait = no\n  user = root\n  bind = 127.0.0.1\n  port = %d\n  server = %s\n}\n' "$port" "$4"
    done
  } >"$1"
}
inetd_conf() {
  local i port
  for ((i = 0; i < $3; i++)); do
    port=$(($2 + i))
    [ -z "${5:-}" ] || [ $i -ne $(($3 - 1)) ] || port=$5
    echo "127.0.0.1:$port stream tcp nowait root $4 ${4##*/}"
  done >"$1"
}

# ---- TCP -------------------------------------------------------------------------------------
TCP_SERVERS=("forkserver (floor)" "rinetd" "rinetd -q")
[ -z "$BASELINE" ] || TCP_SERVERS+=("rinetd (baseline)" "rinetd -q (baseline)")
TCP_SERVERS+=(tcpserver xinetd openbsd-inetd socat)

# start_tcp NAME HANDLER-PATH PORT: sets SPID
start_tcp() {
  local name=$1 handler=$2 port=$3 bin=$RINETD q=
  case $name in
    "forkserver (floor)") "$PROBE" exec - "$BIN/forkserver" "$port" "$handler" 2>/dev/null & ;;
    rinetd*)
      [[ $name != *baseline* ]] || bin=$BASELINE
      [[ $name != *-q* ]] || q=-q
      rinetd_conf "$WORK/rinetd-$port.yaml" "$port" 1 "$handler"
      "$PROBE" exec - "$bin" -f $q -c "$WORK/rinetd-$port.yaml" 2>/dev/null &
      ;;
    tcpserver) "$PROBE" exec - "$PEERS/usr/bin/tcpserver" -c 100000 -H -R -l 0 127.0.0.1 "$port" "$handler" 2>/dev/null & ;;
    xinetd)
      xinetd_conf "$WORK/xinetd-$port.conf" "$port" 1 "$handler"
      LD_LIBRARY_PATH=$PEERLIB "$PROBE" exec - "$PEERS/usr/sbin/xinetd" -dontfork -f "$WORK/xinetd-$port.conf" >/dev/null 2>&1 &
      ;;
    openbsd-inetd)
      inetd_conf "$WORK/inetd-$port.conf" "$port" 1 "$handler"
      LD_LIBRARY_PATH=$PEERLIB "$PROBE" exec - "$PEERS/usr/sbin/inetd" -i -R 100000000 "$WORK/inetd-$port.conf" >/dev/null 2>&1 &
      ;;
    socat) # backlog=1024 as the others (socat's default is 5, fewer than the 8 clients)
      LD_LIBRARY_PATH=$PEERLIB "$PROBE" exec - "$PEERS/usr/bin/socat" "TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr,fork,backlog=1024" \
        "EXEC:$handler" 2>/dev/null &
      ;;
  esac
  SPID=$!
}

tcp_round() {
  local i name handler port c order
  mapfile -t order < <(rotate $((ROUND - 1)) "${TCP_SERVERS[@]}")
  for name in "${order[@]}"; do
    wanted "$name" || continue
    for i in "${!TCP_SERVERS[@]}"; do [ "${TCP_SERVERS[$i]}" = "$name" ] && break; done
    for handler in hello sh; do
      [ $handler = hello ] && port=$((BASE + 2 * i)) || port=$((BASE + 2 * i + 1))
      start_tcp "$name" "$(handler_path $handler)" "$port"
      if "$PROBE" wait tcp "$port" 5000 "$SPID" 2>"$WORK/wait.err"; then
        for c in $CLIENTS; do load tcp "$handler c=$c" "$name" tcp "$port" "$c" "$SPID"; done
      else
        for c in $CLIENTS; do fail_server tcp "$handler c=$c" "$name" "$(<"$WORK/wait.err")"; done
      fi
      stop_pid "$SPID"
      SPID=
    done
  done
  for handler in hello sh; do # the machine's spawn rate, no network: context for the rows above
    local out
    out=$("$BIN/spawnlimit" "$(handler_path $handler)" 1)
    out=${out##*=}
    emit spawn "$handler" spawnlimit rate "${out%/s}"
  done
}

# ---- UDP -------------------------------------------------------------------------------------
UDP_SERVERS=("udpecho (floor)" "rinetd echo")
[ -z "$BASELINE" ] || UDP_SERVERS+=("rinetd echo (baseline)")
udp_round() {
  local i name port c bin order
  PAYLOAD=$(printf 'x%.0s' {1..64})
  mapfile -t order < <(rotate $((ROUND - 1)) "${UDP_SERVERS[@]}")
  for name in "${order[@]}"; do
    wanted "$name" || continue
    for i in "${!UDP_SERVERS[@]}"; do [ "${UDP_SERVERS[$i]}" = "$name" ] && break; done
    port=$((BASE + 50 + i))
    case $name in
      "udpecho (floor)") "$PROBE" exec - "$BIN/udpecho" "$port" & ;;
      *)
        bin=$RINETD
        [[ $name != *baseline* ]] || bin=$BASELINE
        printf 'services:\n  - name: echo\n    protocol: udp\n    address: 127.0.0.1\n    port: %d\n    builtin: echo\n' \
          "$port" >"$WORK/rinetd-udp-$port.yaml"
        "$PROBE" exec - "$bin" -f -c "$WORK/rinetd-udp-$port.yaml" 2>/dev/null &
        ;;
    esac
    SPID=$!
    if "$PROBE" wait udp "$port" 5000 "$SPID" 2>"$WORK/wait.err"; then
      for c in $CLIENTS; do load udp "c=$c" "$name" udp "$port" "$c" "$SPID" "$PAYLOAD" 64; done
    else
      for c in $CLIENTS; do fail_server udp "c=$c" "$name" "$(<"$WORK/wait.err")"; done
    fi
    stop_pid "$SPID"
    SPID=
  done
}

# ---- TLS: rinetd's own TLS against stunnel4 running the same handlers in its exec mode ------------
TLS_SERVERS=("rinetd tls" stunnel4)
BULK_MIB=${BENCH_BULK_MIB:-256}
tls_setup() { # one certificate for both (P-256, made here: no key is ever committed), and the handlers
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
    -keyout "$WORK/tls.key" -out "$WORK/tls.pem" 2>/dev/null
  printf '#!/bin/sh\nexec head -c %d /dev/zero\n' $((BULK_MIB << 20)) >"$WORK/download.sh"
  printf '#!/bin/sh\nexec wc -c\n' >"$WORK/upload.sh"
  chmod 755 "$WORK/download.sh" "$WORK/upload.sh"
  STUNNEL=$(command -v stunnel4 || command -v stunnel || true)
}
start_tls() { # NAME PORT: hello on PORT, download on PORT+1, upload on PORT+2
  local name=$1 port=$2 conf
  case $name in
    "rinetd tls")
      conf=$WORK/rinetd-tls.yaml
      {
        local tls="tls: {cert: $WORK/tls.pem, key: $WORK/tls.key}"
        echo "services:"
        echo "  - {name: hello, address: 127.0.0.1, port: $port, server: $HELLO, $tls}"
        echo "  - {name: download, address: 127.0.0.1, port: $((port + 1)), server: $WORK/download.sh, $tls}"
        echo "  - {name: upload, address: 127.0.0.1, port: $((port + 2)), server: $WORK/upload.sh, $tls}"
      } >"$conf"
      "$PROBE" exec - "$RINETD" -f -c "$conf" 2>"$WORK/server.log" &
      ;;
    stunnel4)
      # stunnel's default logging (two lines per connection, like rinetd's) to /dev/null.
      conf=$WORK/stunnel.conf
      {
        printf 'foreground = yes\npid =\noutput = /dev/null\ncert = %s\nkey = %s\n' "$WORK/tls.pem" "$WORK/tls.key"
        printf '[hello]\naccept = 127.0.0.1:%d\nexec = %s\n' "$port" "$HELLO"
        printf '[download]\naccept = 127.0.0.1:%d\nexec = %s\n' $((port + 1)) "$WORK/download.sh"
        printf '[upload]\naccept = 127.0.0.1:%d\nexec = %s\n' $((port + 2)) "$WORK/upload.sh"
      } >"$conf"
      "$PROBE" exec - "$STUNNEL" "$conf" 2>"$WORK/server.log" &
      ;;
  esac
  SPID=$!
}
now_ns() { date +%s%N; }
tls_handshakes() { # NAME PORT CLIENTS: CLIENTS parallel `openssl s_time -new` (a full handshake, then
  # `GET /` and read to EOF: the handler's `hello`) for SECS; connections/s and server CPU per connection
  local name=$1 port=$2 clients=$3 k t0 t1 n=0 out pids=()
  t0=$(cpu_ticks "$SPID")
  for ((k = 0; k < clients; k++)); do
    openssl s_time -connect "127.0.0.1:$port" -new -time "$SECS" -www / >"$WORK/s_time.$k" 2>&1 &
    pids+=($!)
  done
  wait "${pids[@]}" || true
  t1=$(cpu_ticks "$SPID")
  for ((k = 0; k < clients; k++)); do
    out=$(sed -n 's/^\([0-9]*\) connections in [0-9]* real seconds.*/\1/p' "$WORK/s_time.$k")
    n=$((n + ${out:-0}))
  done
  if ! alive "$SPID" || [ "$n" = 0 ]; then
    fail_server tls "handshake c=$clients" "$name" "no handshake completed" "$WORK/s_time.0"
    return
  fi
  emit tls "handshake c=$clients" "$name" ok "$n"
  emit tls "handshake c=$clients" "$name" rate "$((n / SECS))"
  emit tls "handshake c=$clients" "$name" cpu_ticks_total $((t1 - t0))
  printf 'round %s/%s  %-4s %-12s %-24s %7s/s  cpu=%s ticks\n' "$ROUND" "$ROUNDS" tls "handshake c=$clients" \
    "$name" $((n / SECS)) $((t1 - t0)) >&2
}
tls_bulk() { # NAME CASE PORT: BULK_MIB through one connection (download: the handler writes; upload:
  # the client writes and the handler counts); MB/s (MiB/s) and server CPU
  local name=$1 case=$2 port=$3 bytes=$((BULK_MIB << 20)) ns0 ns1 t0 t1 got
  t0=$(cpu_ticks "$SPID") ns0=$(now_ns)
  if [ "$case" = download ]; then
    got=$(socat -b 262144 -T 60 -u "OPENSSL:127.0.0.1:$port,verify=0" STDOUT 2>"$WORK/socat.err" | wc -c)
  else
    got=$(head -c "$bytes" /dev/zero | socat -b 262144 -T 60 -t 60 - "OPENSSL:127.0.0.1:$port,verify=0" 2>"$WORK/socat.err")
  fi
  ns1=$(now_ns) t1=$(cpu_ticks "$SPID")
  got=${got//[[:space:]]/}
  if [ "$got" != "$bytes" ]; then
    fail_server tls "$case" "$name" "moved ${got:-0} bytes, not $bytes" "$WORK/socat.err"
    return
  fi
  local mibs
  mibs=$(awk -v b="$bytes" -v ns=$((ns1 - ns0)) 'BEGIN {printf "%.1f", b / 1048576 / (ns / 1e9)}')
  emit tls "$case" "$name" mib_s "$mibs"
  emit tls "$case" "$name" cpu_ticks_total $((t1 - t0))
  printf 'round %s/%s  %-4s %-12s %-24s %7s MiB/s  cpu=%s ticks\n' "$ROUND" "$ROUNDS" tls "$case" "$name" "$mibs" $((t1 - t0)) >&2
}
tls_listening() { # LO HI: until every port LO..HI listens (a TLS service answers nothing before a
  # handshake, so `probe wait` cannot tell); 5 s deadline, false at once if the server exits
  local i
  for ((i = 0; i < 250; i++)); do
    [ "$("$PROBE" count "$1" "$2")" = $(($2 - $1 + 1)) ] && return 0
    alive "$SPID" || break
    sleep 0.02
  done
  echo "ports $1-$2 not listening within 5 s" >"$WORK/wait.err"
  return 1
}
tls_round() {
  local i name port c order
  mapfile -t order < <(rotate $((ROUND - 1)) "${TLS_SERVERS[@]}")
  for name in "${order[@]}"; do
    wanted "$name" || continue
    if [ "$name" = stunnel4 ] && [ -z "$STUNNEL" ]; then
      fail_server tls "handshake" "$name" "stunnel4 is not installed (apt-get install stunnel4)"
      continue
    fi
    for i in "${!TLS_SERVERS[@]}"; do [ "${TLS_SERVERS[$i]}" = "$name" ] && break; done
    port=$((BASE + 60 + 3 * i))
    start_tls "$name" "$port"
    if tls_listening "$port" $((port + 2)); then
      for c in $CLIENTS; do tls_handshakes "$name" "$port" "$c"; done
      tls_bulk "$name" download $((port + 1))
      tls_bulk "$name" upload $((port + 2))
    else
      fail_server tls "handshake" "$name" "$(<"$WORK/wait.err")" "$WORK/server.log"
    fi
    stop_pid "$SPID"
    SPID=
  done
}

# ---- tables of 10 and 1,000 services: memory, start-up, reload ---------------------------------
TABLE_SERVERS=(rinetd)
[ -z "$BASELINE" ] || TABLE_SERVERS+=("rinetd (baseline)")
TABLE_SERVERS+=(xinetd openbsd-inetd)
TABLE_NS=1000
if has mem || has startup; then TABLE_NS="10 1000"; fi
MOVED=$((TBASE + 1000))

table_files() { # NAME N: the live config path, its original and its moved-service variant
  local kind=${1%% *} f
  f=$WORK/table-$kind-$2
  case $kind in
    rinetd) echo "$f.yaml $f.orig $f.moved" ;;
    *) echo "$f.conf $f.orig $f.moved" ;;
  esac
}
make_tables() {
  local name n live orig moved gen
  for name in "${TABLE_SERVERS[@]}"; do
    case ${name%% *} in rinetd) gen=rinetd_conf ;; xinetd) gen=xinetd_conf ;; *) gen=inetd_conf ;; esac
    for n in $TABLE_NS; do
      read -r live orig moved < <(table_files "$name" "$n")
      $gen "$orig" "$TBASE" "$n" "$HELLO"
      $gen "$moved" "$TBASE" "$n" "$HELLO" "$MOVED"
    done
  done
}

table_one() { # NAME N
  local name=$1 n=$2 live orig moved cmd=() peer='' uppid i out case
  case="n=$n"
  read -r live orig moved < <(table_files "$name" "$n")
  cp "$orig" "$live"
  for ((i = 0; i < 250; i++)); do # the previous server's listeners are gone (it was reaped: they are)
    [ "$("$PROBE" count "$TBASE" "$MOVED")" = 0 ] && break
    sleep 0.02
  done
  case $name in
    "rinetd (baseline)") cmd=("$BASELINE" -f -c "$live") ;;
    rinetd) cmd=("$RINETD" -f -c "$live") ;;
    xinetd) cmd=("$PEERS/usr/sbin/xinetd" -dontfork -f "$live") peer=1 ;;
    openbsd-inetd) cmd=("$PEERS/usr/sbin/inetd" -i -R 100000000 "$live") peer=1 ;;
  esac
  rm -f "$WORK/t0"
  "$PROBE" up "$TBASE" $((TBASE + n - 1)) "$WORK/t0" 30000 >"$WORK/up.out" 2>"$WORK/up.err" &
  uppid=$!
  # probe exec notes the time and execs the server itself: the same pid, t0 = the server's exec
  if [ -n "$peer" ]; then
    LD_LIBRARY_PATH=$PEERLIB "$PROBE" exec "$WORK/t0" "${cmd[@]}" >"$WORK/server.log" 2>&1 &
  else
    "$PROBE" exec "$WORK/t0" "${cmd[@]}" >"$WORK/server.log" 2>&1 &
  fi
  SPID=$!
  while alive "$uppid" && alive "$SPID"; do sleep 0.01; done
  if ! alive "$SPID"; then
    stop_pid "$uppid"
    fail_server table "$case" "$name" "exited at start with $n services" "$WORK/server.log"
    wait "$SPID" 2>/dev/null || true
    SPID=
    return
  fi
  if ! wait "$uppid" || ! [[ $(<"$WORK/up.out") =~ listen_ms=([0-9.]+)\ serve_ms=([0-9.]+) ]]; then
    fail_server table "$case" "$name" "$(<"$WORK/up.err")" "$WORK/server.log"
    stop_pid "$SPID"
    SPID=
    return
  fi
  local listen=${BASH_REMATCH[1]} serve=${BASH_REMATCH[2]}
  emit table "$case" "$name" listen_ms "$listen"
  emit table "$case" "$name" serve_ms "$serve"
  local rss anon pss
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$SPID/status" 2>/dev/null || true)
  anon=$(awk '/^RssAnon:/ {print $2}' "/proc/$SPID/status" 2>/dev/null || true)
  pss=$(awk '/^Pss:/ {print $2}' "/proc/$SPID/smaps_rollup" 2>/dev/null || true)
  [ -z "$rss" ] || emit table "$case" "$name" rss_kb "$rss"
  [ -z "$anon" ] || emit table "$case" "$name" anon_kb "$anon"
  [ -z "$pss" ] || emit table "$case" "$name" pss_kb "$pss"
  local msg="listening ${listen}ms served ${serve}ms rss=${rss}k anon=${anon}k"
  if has reload && [ "$n" = 1000 ]; then
    cp "$moved" "$live.new" && mv "$live.new" "$live"
    if out=$("$PROBE" hup "$SPID" "$MOVED" 10000 2>&1) && [[ $out =~ answer_ms=([0-9.]+) ]]; then
      emit table "$case" "$name" reload_answer_ms "${BASH_REMATCH[1]}"
      msg+=" reload-answers ${BASH_REMATCH[1]}ms"
      if [[ $name == rinetd* ]]; then # its own figures: wait (with a deadline) for the "reloaded" line
        for ((i = 0; i < 250; i++)); do grep -q 'reloaded ' "$WORK/server.log" && break; sleep 0.02; done
        local check apply
        # Both log formats: "reload checked duration=Xs", and the older "table read and checked in Xs".
        check=$(sed -n 's/.*\(reload checked duration=\|table read and checked in \)\([0-9.]*\)s.*/\2/p' "$WORK/server.log" | tail -n 1)
        apply=$(sed -n 's/.*reloaded .*duration=\([0-9.]*\)s.*/\1/p' "$WORK/server.log" | tail -n 1)
        [ -z "$check" ] || emit table "$case" "$name" reload_check_ms "$(awk -v s="$check" 'BEGIN {print s * 1000}')"
        [ -z "$apply" ] || emit table "$case" "$name" reload_apply_ms "$(awk -v s="$apply" 'BEGIN {print s * 1000}')"
        msg+=" (log: read+check ${check:-?}s apply ${apply:-?}s)"
      fi
    else
      emit table "$case" "$name" reload_failed 1
      echo "bench: round $ROUND: table $case $name: reload: $out" >&2
    fi
  fi
  printf 'round %s/%s  %-4s %-12s %-24s %s\n' "$ROUND" "$ROUNDS" table "$case" "$name" "$msg" >&2
  stop_pid "$SPID"
  SPID=
}

table_round() {
  local n name order
  for n in $TABLE_NS; do
    mapfile -t order < <(rotate $((ROUND - 1)) "${TABLE_SERVERS[@]}")
    for name in "${order[@]}"; do
      if wanted "$name"; then table_one "$name" "$n"; fi
    done
  done
}

# ---- handlers: the cost of a connection while many handlers run (waitpid(-1) scanned them all) ---
HOLD=${BENCH_HOLD:-5000}
HANDLER_SERVERS=(rinetd)
[ -z "$BASELINE" ] || HANDLER_SERVERS+=("rinetd (baseline)")
handlers_setup() { # a static handler that only waits for its signal
  printf '#include <unistd.h>\nint main(void) { for (;;) pause(); }\n' >"$WORK/hold.c"
  gcc -O2 -static -o "$BIN/rinetd-hold" "$WORK/hold.c"
}
# hold PID PORT N: N connections to PORT, each leaving a handler running; waits until PID has N children
hold() {
  local pid=$1 port=$2 n=$3 i have=0
  python3 -c 'import socket, sys
for _ in range(int(sys.argv[2])):
    socket.create_connection(("127.0.0.1", int(sys.argv[1]))).close()' "$port" "$n" || return 1
  for ((i = 0; i < 3000; i++)); do
    have=$(wc -w <"/proc/$pid/task/$pid/children" 2>/dev/null || echo 0)
    [ "$have" -lt "$n" ] || return 0
    sleep 0.02
  done
  echo "$have of $n handlers running after 60 s" >&2
  return 1
}
handlers_round() {
  local i name order bin port n c
  mapfile -t order < <(rotate $((ROUND - 1)) "${HANDLER_SERVERS[@]}")
  for name in "${order[@]}"; do
    wanted "$name" || continue
    for i in "${!HANDLER_SERVERS[@]}"; do [ "${HANDLER_SERVERS[$i]}" = "$name" ] && break; done
    port=$((BASE + 70 + 2 * i))
    bin=$RINETD
    [[ $name != *baseline* ]] || bin=$BASELINE
    {
      echo "services:"
      printf '  - {name: hello, address: 127.0.0.1, port: %d, server: %s, max_children: 0}\n' "$port" "$HELLO"
      printf '  - {name: hold, address: 127.0.0.1, port: %d, server: %s, max_children: 0}\n' \
        $((port + 1)) "$BIN/rinetd-hold"
    } >"$WORK/rinetd-handlers.yaml"
    "$PROBE" exec - "$bin" -f -c "$WORK/rinetd-handlers.yaml" 2>/dev/null &
    SPID=$!
    if ! "$PROBE" wait tcp "$port" 5000 "$SPID" 2>"$WORK/wait.err"; then
      for n in 0 "$HOLD"; do for c in $CLIENTS; do fail_server handlers "held=$n c=$c" "$name" "$(<"$WORK/wait.err")"; done; done
      stop_pid "$SPID"
      SPID=
      continue
    fi
    for n in 0 "$HOLD"; do
      if [ "$n" != 0 ] && ! hold "$SPID" $((port + 1)) "$n" 2>"$WORK/wait.err"; then
        for c in $CLIENTS; do fail_server handlers "held=$n c=$c" "$name" "$(<"$WORK/wait.err")"; done
        continue
      fi
      for c in $CLIENTS; do load handlers "held=$n c=$c" "$name" tcp "$port" "$c" "$SPID"; done
    done
    # The stop sends SIGTERM to every handler; what outlives the grace is killed by name.
    stop_pid "$SPID"
    SPID=
    pkill -KILL -x rinetd-hold 2>/dev/null || true
  done
}

# ---- the run -------------------------------------------------------------------------------
perf_check
echo "section,case,server,round,metric,value" >"$CSV"
meta command "bench/run.sh$( [ ${#ARGS[@]} = 0 ] || printf ' %q' "${ARGS[@]}")"
meta env "$(env | grep -E '^(BENCH_[A-Z_]+|RINETD|RINETD_BASELINE)=' | tr '\n' ' ')"
meta date "$(date -u '+%Y-%m-%d %H:%M UTC')"
meta machine "$(nproc) cores; $(uname -r); $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n 1)"
meta rounds "$ROUNDS"
meta seconds "$SECS"
meta clients "$CLIENTS"
meta sections "${SECTIONS[*]}"
# The binary's own date: the work tree (git describe) may have moved on since it was built.
meta rinetd "$RINETD (built $(date -u -r "$RINETD" '+%Y-%m-%d %H:%M UTC'); tree $(git -C "$HERE" describe --always --dirty 2>/dev/null || echo '?'))"
[ -z "$BASELINE" ] || meta baseline "$BASELINE (built $(date -u -r "$BASELINE" '+%Y-%m-%d %H:%M UTC'))"
meta perf_event "$PERF_EVENT"
meta perf_note "$PERF_NOTE"
meta load_avg "$(cut -d' ' -f1-3 /proc/loadavg)"
if has mem || has startup || has reload; then make_tables; fi
if has tls; then tls_setup; fi
if has handlers; then handlers_setup; fi

echo "bench: ${SECTIONS[*]}; $ROUNDS rounds x ${SECS}s; clients $CLIENTS; raw numbers -> $CSV" >&2
for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
  if has tcp; then tcp_round; fi
  if has udp; then udp_round; fi
  if has tls; then tls_round; fi
  if has mem || has startup || has reload; then table_round; fi
  if has handlers; then handlers_round; fi
done
meta load_avg_end "$(cut -d' ' -f1-3 /proc/loadavg)"
python3 "$HERE/bench/report.py" "$CSV" | tee "$TABLE"
cp "$CSV" "$OUT/latest.csv"
cp "$TABLE" "$OUT/latest.md"
echo "bench: raw per-round numbers in $CSV, this table in $TABLE" >&2
