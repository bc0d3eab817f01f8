#!/bin/sh
# Instructions per operation of the memory backend's hot paths, counted by callgrind (stable on
# a noisy machine, unlike time). Usage: bench/hotpath-counts.sh [BUILD_DIR] [N]
# Prints, per operation: Ir per iteration of hotpath_run (the loop included), and Ir inside the
# traffic_* call alone. Needs valgrind (callgrind_annotate comes with it).
set -eu
build=${1:-build}
n=${2:-100000}
bin=$build/bench/traffic-hotpath
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
printf '%-14s %12s %14s\n' operation "Ir/op (loop)" "Ir/op (call)"
for op in get get-counter incr-hit incr-hit-ttl incr-insert set; do
    case $op in get*) fn=traffic_get ;; incr*) fn=traffic_increment ;; *) fn=traffic_set ;; esac
    valgrind -q --tool=callgrind --toggle-collect=hotpath_run --callgrind-out-file="$out/$op" "$bin" "$op" "$n" >/dev/null
    total=$(awk '/^(summary|totals):/ { print $2; exit }' "$out/$op")
    call=$(callgrind_annotate --inclusive=yes "$out/$op" | awk -v f="api.c:$fn " 'index($0, f) { gsub(",", "", $1); print $1; exit }')
    awk -v op="$op" -v t="$total" -v c="${call:-0}" -v n="$n" 'BEGIN { printf "%-14s %12.1f %14.1f\n", op, t / n, c / n }'
done
