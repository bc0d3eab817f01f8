#!/usr/bin/env bash
# Issue 15's figures (bench/README.md, "Large tables"): increments on 1M and 10M keys against
# bench:raw-atomic, 2 processes against bench:mutex-table, decisions against increments, 1k keys.
#   bench/large-tables.sh [BUILD_DIR] [huge]
# "huge": run the 1M-key blocks with /sys/kernel/mm/transparent_hugepage/shmem_enabled set to
# "advise" (root; the old value is put back). --warmup 2 puts the forked workers' first touch of
# each page (a minor fault) behind them.
set -euo pipefail
B=${1:-build}/bench/traffic-bench
THP=/sys/kernel/mm/transparent_hugepage/shmem_enabled
run() { echo "== $*"; "$@" 2>&1 | grep -E "^ +[0-9]+ |machine|opened in|prefilled"; }
if [[ ${2:-} == huge ]]; then
  old=$(sed 's/.*\[\(.*\)\].*/\1/' "$THP")
  trap 'echo "$old" > "$THP"' EXIT
  echo advise > "$THP"
fi
# raw-atomic twice more: at the table's footprint (256 bytes a key), and one access at a time
run "$B" --url memory:// --url bench:raw-atomic --url 'bench:raw-atomic?stride=256' \
  --url 'bench:raw-atomic?stride=256&serial=1' --procs 1 --keys 1000000 --op incr --seconds 3 --rounds 3 --warmup 2
run "$B" --url memory:// --procs 1 --keys 1000000 --op limit --rule fixed_window:1000000/1h --seconds 3 --rounds 3 --warmup 2
run "$B" --url memory:// --procs 1 --keys 1000000 --op limit --rule token_bucket:1000000/1s --seconds 3 --rounds 3 --warmup 2
run "$B" --url memory:// --url bench:mutex-table --procs 2 --keys 1000000 --op incr --seconds 3 --rounds 3 --warmup 2
run "$B" --url memory:// --procs 2 --keys 1000000 --op limit --rule token_bucket:1000000/1s --seconds 3 --rounds 3 --warmup 2
run "$B" --url memory:// --url bench:raw-atomic --url bench:mutex-table --procs 1,2 --keys 1000 --op incr --seconds 3 --rounds 3
run "$B" --url memory:// --url bench:raw-atomic --procs 1 --keys 10000000 --op incr --seconds 3 --rounds 1 --warmup 3
