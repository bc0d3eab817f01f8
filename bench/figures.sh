#!/bin/sh
# The runs behind the figures in bench/README.md, one after another, each writing its table to
# OUT/NAME.txt and its JSON to OUT/NAME.json. Usage: bench/figures.sh [BUILD_DIR] [OUT] [SECONDS]
#   A-E  memory vs mutex-table vs raw-atomic: 1k/1M keys, uniform/zipf, shared/disjoint keys
#   F    memory vs mutex-table, 2 processes, every operation timed
#   G    sqlite:// vs raw sqlite3 (files in OUT)
#   H    memory vs redis (unix socket and TCP) vs raw hiredis, when redis-server is installed:
#        a scratch server is started on a free loopback port and a socket in OUT, and stopped
#        by its pid at the end
#   I    a 10M-key table next to the default one (open time, RSS)
# Take the figures with the machine otherwise quiet: the load average is printed first and
# recorded in every JSON file.
set -eu
build=${1:-build}
out=${2:-bench-figures}
secs=${3:-3}
B=$build/bench/traffic-bench
mkdir -p "$out"
out=$(cd "$out" && pwd)
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"

run() { # NAME ARGS...
    name=$1
    shift
    echo "== $name: traffic-bench $*"
    "$B" "$@" --seconds "$secs" --json "$out/$name.json" | tee "$out/$name.txt"
}

base="--url memory:// --url bench:mutex-table --url bench:raw-atomic --procs 1,2"
run A $base --keys 1000 --dist uniform
run B $base --keys 1000 --dist zipf
run C $base --keys 1000000 --dist uniform
run D $base --keys 1000000 --dist zipf
run E $base --keys 1000 --disjoint
run F --url memory:// --url bench:mutex-table --procs 2 --keys 1000 --sample 1
rm -f "$out"/lib.db* "$out"/raw.db* "$out"/lib.db-turn
run G --url "sqlite://$out/lib.db" --url "bench:raw-sqlite?path=$out/raw.db" --procs 1,2 --keys 1000 --sample 1

if command -v redis-server >/dev/null 2>&1; then
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    sock=$out/redis.sock
    redis-server --port "$port" --bind 127.0.0.1 --unixsocket "$sock" --save '' --appendonly no \
        --daemonize no --logfile "$out/redis.log" &
    rpid=$!
    trap 'kill "$rpid" 2>/dev/null || true' EXIT
    i=0
    while [ ! -S "$sock" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
    run H --url memory:// --url "bench:raw-hiredis?unix=$sock" --url "redis+unix://$sock" \
        --url "bench:raw-hiredis?url=redis://127.0.0.1:$port/1" --url "redis://127.0.0.1:$port/1" \
        --procs 1,2 --keys 1000
    kill "$rpid"
    wait "$rpid" 2>/dev/null || true
    trap - EXIT
else
    echo "== H: skipped (no redis-server)"
fi
run I --url 'memory://?max_size=10000000' --url memory:// --procs 1 --keys 1000
