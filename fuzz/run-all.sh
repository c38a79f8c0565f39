#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60), one after another,
# and prints how many inputs each one executed and whether it crashed.
#
#   fuzz/run-all.sh [SECONDS]
#
# The committed seeds in corpus/<target>/ are read but never written: what
# the fuzzer learns goes to target/corpus/<target>/ (kept between runs).
# A crashing input is saved under artifacts/<target>/ by libFuzzer.
set -uo pipefail
cd "$(dirname "$0")"

seconds="${1:-60}"
# cargo-fuzz passes rustc `-Z` flags (sanitizer, coverage passes); the
# stable toolchain accepts them only with RUSTC_BOOTSTRAP set.
export RUSTC_BOOTSTRAP=1

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: cargo install cargo-fuzz" >&2
    exit 2
fi

cargo fuzz build || exit 2

mkdir -p target/logs
status=0
summary=""
for target in $(cargo fuzz list); do
    mkdir -p "target/corpus/$target" "corpus/$target"
    log="target/logs/$target.log"
    echo "== $target: ${seconds}s" >&2
    cargo fuzz run "$target" "target/corpus/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    per_second=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    if [ "$rc" -eq 0 ]; then
        result="ok"
    else
        status=1
        artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
        result="CRASH ${artifact:-(see $log)}"
    fi
    line=$(printf '%-18s %12s execs %8s/s  %s' "$target" "${execs:-?}" "${per_second:-?}" "$result")
    echo "$line" >&2
    summary+="$line"$'\n'
done

echo
echo "target             executions   per second  result (${seconds}s each)"
printf '%s' "$summary"
exit "$status"
