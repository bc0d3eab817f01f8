#!/usr/bin/env bash
# Do increments keep their latency while `traffic keys` scans the table they write?
# traffic-bench's 2 workers increment 100k counters of memory://NAME, three ways, alternated:
#   none  nothing else runs
#   same  a loop of `traffic memory://NAME keys GLOB` - full scans of the table being written
#   ctl   the same loop on another table of 100k keys: the CPU the scans take, without sharing
# "same" close to "ctl" means the scan costs writers its CPU time and nothing more (no waits).
# GLOB defaults to 'nomatch*': every key is visited, nothing printed (scans, not output).
#   bench/scan_while_writing.sh BUILD_DIR [ROUNDS]
set -euo pipefail
build=$1 rounds=${2:-3} glob=${GLOB:-nomatch*}
B=$build/bench/traffic-bench T=$build/cli/traffic
name=scanbench-$$ ctl=scanbench-ctl-$$
trap 'rm -f /dev/shm/traffic.$ctl /dev/shm/traffic.$name /tmp/$name.stop' EXIT
"$T" --create "memory://$ctl?max_size=100000" stats >/dev/null
"$B" --url "memory://$ctl" --keys 100000 --procs 1 --seconds 0.2 --rounds 1 >/dev/null # prefills it

scans() { # $1: table; until the stop file appears
  local n=0
  while [ ! -e "/tmp/$name.stop" ]; do
    "$T" "memory://$1" keys "$glob" >/dev/null 2>&1 || sleep 0.005 # not created yet
    n=$((n + 1))
  done
  echo "$n"
}

for r in $(seq "$rounds"); do
  for mode in none same ctl; do
    rm -f "/tmp/$name.stop"
    case $mode in
    same) scans "$name" >"/tmp/$name.n" & ;;
    ctl) scans "$ctl" >"/tmp/$name.n" & ;;
    none) echo - >"/tmp/$name.n" ;;
    esac
    line=$("$B" --url "memory://$name" --keys 100000 --procs 2 --seconds 4 --rounds 2 --op incr --sample 1 |
      grep -E "^ +2  memory://")
    touch "/tmp/$name.stop"
    wait
    printf '%-4s %-5s scans %-4s load %-6s %s\n' "$r" "$mode" "$(cat "/tmp/$name.n")" \
      "$(cut -d' ' -f1 /proc/loadavg)" "$line"
  done
done
rm -f "/tmp/$name.n"
