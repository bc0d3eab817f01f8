#!/usr/bin/env bash
# FastAPI under gunicorn -k uvicorn.workers.UvicornWorker -w 4 (--preload), driven by wrk over
# loopback: requests/s without a limiter, with @rate_limit on memory://, on our Redis backend,
# and with the `limits` package on Redis - one after the other in one run, so that the ratios
# compare like with like. A redis-server is started on a free port and stopped by its pid.
#   bench/python_http.sh [BUILD_DIR] [SECONDS] [CONNECTIONS]
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
for store in none memory "redis:redis://127.0.0.1:$rport/0" "limits:redis://127.0.0.1:$rport/0"; do
  p=$(port)
  TRAFFIC_BENCH_STORE=$store /usr/bin/python3 -m gunicorn -k uvicorn.workers.UvicornWorker -w 4 --preload \
    -b 127.0.0.1:$p --log-level warning python_app:app &
  gpid=$!
  for _ in $(seq 100); do /usr/bin/python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" "http://127.0.0.1:$p/" 2>/dev/null && break; sleep 0.1; done
  wrk -t2 -c"$conns" -d1s "http://127.0.0.1:$p/" >/dev/null   # warm-up
  rps=$(wrk -t2 -c"$conns" -d"${secs}s" "http://127.0.0.1:$p/" | awk '/Requests\/sec/ {print $2}')
  printf '%-10s %10s requests/s\n' "${store%%:*}" "$rps"
  kill $gpid; wait $gpid 2>/dev/null || true; gpid=
done
