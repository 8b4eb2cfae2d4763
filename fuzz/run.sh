#!/bin/sh
# Runs the fuzz targets in fuzz/ one after the other, each for a bounded time, at the lowest
# priority: `make fuzz` (FUZZ_SECONDS, default 60) and, shorter, `make test-long`.
#
#   fuzz/run.sh [--if-available] SECONDS [TARGET...]      (default: every target)
#
# Needs the nightly toolchain (`cargo +nightly`) and cargo-fuzz, which it installs from crates.io
# when missing. With --if-available a machine without them skips the run with a message, exit 0.
# Each target prints its executions; a crash or hang (libFuzzer -timeout) is kept under
# fuzz/artifacts/TARGET/ and makes the exit status 1, after the other targets have run.
#
# Environment: FUZZ_SANITIZER (default none: the crate denies unsafe, and overflow checks and
# debug assertions stay on; `address` builds with ASan), FUZZ_ARGS (more libFuzzer flags),
# CARGO (default cargo).
set -u
cd "$(dirname "$0")"

optional=false
if [ "${1:-}" = --if-available ]; then
    optional=true
    shift
fi
seconds=${1:?usage: fuzz/run.sh [--if-available] SECONDS [TARGET...]}
shift
targets=${*:-proxy_header yaml_table yaml_simple include_glob inetd_conf xinetd_conf}
cargo=${CARGO:-cargo}
sanitizer=${FUZZ_SANITIZER:-none}

unavailable() {
    if $optional; then
        echo "fuzz: skipped: $1"
        exit 0
    fi
    echo "fuzz: $1" >&2
    exit 1
}

"$cargo" +nightly --version >/dev/null 2>&1 \
    || unavailable "no nightly toolchain (cargo +nightly), which libFuzzer's instrumentation needs"
if ! "$cargo" fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    "$cargo" install cargo-fuzz --locked \
        || unavailable "cargo-fuzz is missing and did not install (cargo install cargo-fuzz --locked)"
fi

# One build for every target, so the library is compiled once; `fuzz run` then finds it done.
nice -n 19 "$cargo" +nightly fuzz build --sanitizer "$sanitizer" || exit 1

status=0
for target in $targets; do
    mkdir -p "corpus/$target"
    log="target/fuzz-$target.log"
    # corpus/ grows (not committed); seeds/ is read only. -timeout catches hangs; the RSS limit
    # catches runaway memory.
    # shellcheck disable=SC2086
    nice -n 19 "$cargo" +nightly fuzz run --sanitizer "$sanitizer" "$target" \
        "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -timeout=2 -rss_limit_mb=2048 \
        -dict="dicts/$target.dict" -print_final_stats=1 ${FUZZ_ARGS:-} >"$log" 2>&1
    code=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    if [ "$code" -eq 0 ]; then
        echo "fuzz: $target: ${runs:-?} executions in ${seconds}s, no crash"
    else
        status=1
        echo "fuzz: $target: FAILED after ${runs:-?} executions (exit $code); the end of $PWD/$log:" >&2
        tail -n 30 "$log" >&2
        echo "fuzz: minimize with: (cd fuzz && cargo +nightly fuzz tmin -s $sanitizer $target artifacts/$target/crash-…)" >&2
    fi
done
exit $status
