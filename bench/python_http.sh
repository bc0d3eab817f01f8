#!/usr/bin/env bash
# FastAPI under gunicorn -k uvicorn.workers.UvicornWorker -w 4 (--preload), driven by wrk over
# loopback: requests/s without a limiter, with @rate_limit on memory://, on our Redis backend,
# and with the `limits` package on Redis - one after the other in one run, so that the ratios
# compare like with like. A redis-server is started on a free port and stopped by its pid.
#   bench/python_http.sh [BUILD_DIR] [SECONDS] [CONNECTIONS]
# ROUNDS=N repeats the whole sequence N times (the runs alternate, so a drift of the machine
# reaches every store alike); STORES="none memory" picks stores (redis and limits get the URL).
# Each line also gives the server's CPU time per request (its processes' user + system time
# over the requests wrk completed), which other jobs on the machine disturb far less.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build} secs=${2:-10} conns=${3:-64}
export PYTHONPATH=$PWD/$build/python:$PWD/bench PYTHONDONTWRITEBYTECODE=1
port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rport=$(port)
redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
rpid=$!
trap 'kill $rpid 2>/dev/null; [ -n "${gpid:-}" ] && kill $gpid 2>/dev/null; true' EXIT
sleep 0.5
grep -m1 'model name' /proc/cpuinfo | sed 's/.*: /CPU: /'; echo "cores: $(nproc); wrk -t2 -c$conns -d${secs}s"
# The CPU time (user + system, clock ticks) of gunicorn's master and workers: divided by the
# requests wrk made, a figure that the machine's other jobs disturb far less than requests/s.
cpu_ticks() {
  local t=0 pid f
  for pid in $1 $(pgrep -P "$1"); do
    f=$(cut -d')' -f2- "/proc/$pid/stat" 2>/dev/null) || continue
    t=$((t + $(awk '{print $12 + $13}' <<<"$f")))
  done
  echo $t
}
stores=()
for s in ${STORES:-none memory redis limits}; do
  case $s in redis|limits) stores+=("$s:redis://127.0.0.1:$rport/0") ;; *) stores+=("$s") ;; esac
done
for round in $(seq "${ROUNDS:-1}"); do
for store in "${stores[@]}"; do
  p=$(port)
  TRAFFIC_BENCH_STORE=$store /usr/bin/python3 -m gunicorn -k uvicorn.workers.UvicornWorker -w 4 --preload \
    -b 127.0.0.1:$p --log-level warning python_app:app &
  gpid=$!
  for _ in $(seq 100); do /usr/bin/python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" "http://127.0.0.1:$p/" 2>/dev/null && break; sleep 0.1; done
  wrk -t2 -c"$conns" -d1s "http://127.0.0.1:$p/" >/dev/null   # warm-up
  c0=$(cpu_ticks $gpid)
  out=$(wrk -t2 -c"$conns" -d"${secs}s" "http://127.0.0.1:$p/")
  c1=$(cpu_ticks $gpid)
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  printf '%-3s %-10s %10s requests/s %8.1f us of server CPU a request\n' "$round" "${store%%:*}" "$rps" \
    "$(awk -v t=$((c1 - c0)) -v n="$n" -v hz="$(getconf CLK_TCK)" 'BEGIN {print t / hz / n * 1e6}')"
  kill $gpid; wait $gpid 2>/dev/null || true; gpid=
done
done
