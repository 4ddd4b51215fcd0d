#!/usr/bin/env bash
# Client against transport floor, interleaved: the client's CPU per raw get at 256 callers
# (issue 4's target: at most 2 µs) next to the floor's at the same moment.
#
#   cargo build --release -p tikv-mockstore -p tikv-benches
#   benches/compare_floor.sh [ROUNDS] [raw_bench flags...]
#
# Each round runs `raw_bench` then `raw_bench --client floor` for one cell (CELL, default
# get:256; gets only, the floor only reads) over a WINDOW-second window (default 3). The host's speed drifts by tens of percent
# over minutes; alternating the two cancels most of that drift out of their ratio. Prints
# each round, then the means, the ratio and how many client runs were above 2 µs.
set -euo pipefail
rounds=${1:-10}
shift || true
bin=${RAW_BENCH:-target/release/raw_bench}
cell=${CELL:-get:256}
window=${WINDOW:-3}

cpu_per_op() {
    # The "CPU µs/op" column of the cell's row.
    RAW_BENCH_ONLY=$cell "$bin" --seconds "$window" "$@" 2>/dev/null |
        awk -F'|' '/^\| raw (get|put) /{gsub(/ /, "", $7); print $7; exit}'
}

for i in $(seq 1 "$rounds"); do
    client=$(cpu_per_op "$@")
    floor=$(cpu_per_op "$@" --client floor)
    echo "round $i client $client floor $floor"
done | awk '
    { print; c += $4; f += $6; n++; if ($4 > 2.0) over++ }
    END {
        if (n == 0) exit 1
        printf "client mean %.2f µs, floor mean %.2f µs, ratio %.2f; client rounds above 2.0 µs: %d of %d\n",
            c / n, f / n, c / f, over, n
    }'
