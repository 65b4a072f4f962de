#!/usr/bin/env bash
# Compares builds of the host under the throughput bench, runs alternating, so
# that each build meets the machine in the same state as the others: on two
# shared cores the machine's own speed moves by a third within minutes, and only
# runs side by side tell a change of a few per cent.
#
#   benches/compare.sh RUNS BINARY...
#
# Each BINARY is a `hookwasm` built at some commit (copy target/release/hookwasm
# aside after each build). The bench executable is built once, from this tree:
#   cargo bench --bench throughput --bench floor --no-run
# HOOKWASM_BENCH_EVENTS (30000 here) and the bench's other settings apply to
# every run; light load is off unless HOOKWASM_BENCH_LIGHT says otherwise. One
# line per run; the means per binary at the end.
set -euo pipefail
runs=$1
shift
bins=()
for bin in "$@"; do
    bins+=("$(realpath "$bin")")
done
target=${CARGO_TARGET_DIR:-$(cd "$(dirname "$0")/.." && pwd)/target}
bench=$(ls -t "$target"/release/deps/throughput-* | grep -v '\.d$' | head -1)
cd "$(dirname "$0")/../host"
results=$(mktemp)
trap 'rm -f "$results"' EXIT
for _ in $(seq 1 "$runs"); do
    for bin in "${bins[@]}"; do
        out=$(HOOKWASM_BENCH_BIN=$bin HOOKWASM_BENCH_EVENTS=${HOOKWASM_BENCH_EVENTS:-30000} \
            HOOKWASM_BENCH_LIGHT=${HOOKWASM_BENCH_LIGHT:-0} "$bench" --bench)
        ratio=$(awk '/ratio end to end/ {print $NF}' <<<"$out")
        rate=$(awk '/hookwasm end to end/ {print $5}' <<<"$out")
        cpu=$(awk '/host CPU per event/ {print $5}' <<<"$out")
        exch=$(awk '/host CPU per event/ {print $(NF-1)}' <<<"$out")
        wpc=$(awk '/store writes per commit/ {print $5}' <<<"$out")
        writer=$(awk '/of which the store writer/ {print $6}' <<<"$out")
        # With HOOKWASM_BENCH_FLOOR=1: the floor's CPU per event, same run.
        floor=$(sed -n 's/.*floor (benches.*CPU per event \([0-9.]*\) µs.*/\1/p' <<<"$out")
        floor_ratio=$(sed -n 's/.*floor (benches.*, ratio \([0-9.]*\),.*/\1/p' <<<"$out")
        echo "$bin ratio=$ratio deliveries/s=$rate host_cpu_us=$cpu exchange_cpu_us=$exch writer_cpu_us=${writer:-0} writes_per_commit=$wpc floor_cpu_us=${floor:-0} floor_ratio=${floor_ratio:-0}" |
            tee -a "$results"
    done
done
echo "means:"
awk '{
        for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] + 0 }
        n[$1]++; r[$1] += v["ratio"]; s[$1] += v["deliveries/s"]; h[$1] += v["host_cpu_us"]
        w[$1] += v["writes_per_commit"]; wr[$1] += v["writer_cpu_us"]
        if (v["exchange_cpu_us"] > 0) { x[$1] += v["host_cpu_us"] / v["exchange_cpu_us"]; xn[$1]++ }
        if (v["floor_cpu_us"] > 0 && v["exchange_cpu_us"] > 0) {
            f[$1] += v["host_cpu_us"] / v["floor_cpu_us"]; fn[$1]++
            fr[$1] += v["floor_ratio"]; fx[$1] += v["floor_cpu_us"] / v["exchange_cpu_us"]
        }
     }
     END {
        for (k in n)
            printf "%s runs=%d ratio=%.3f deliveries/s=%.0f host_cpu_us=%.1f host/exchange=%.2f writer_cpu_us=%.1f writes_per_commit=%.1f host/floor=%.2f floor_ratio=%.3f floor/exchange=%.2f\n",
                k, n[k], r[k] / n[k], s[k] / n[k], h[k] / n[k], (xn[k] ? x[k] / xn[k] : 0), wr[k] / n[k], w[k] / n[k],
                (fn[k] ? f[k] / fn[k] : 0), (fn[k] ? fr[k] / fn[k] : 0), (fn[k] ? fx[k] / fn[k] : 0)
     }' "$results" | sort
