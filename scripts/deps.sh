#!/usr/bin/env bash
# Installs the Debian packages traffic builds and tests with, if any is missing.
# Runs apt-get update first, as root or through sudo; does nothing when all are present.
#   scripts/deps.sh --fuzz           also clang and its libFuzzer runtime, for fuzz/run.sh
#   scripts/deps.sh --cross-aarch64  also Debian's aarch64 cross compiler, qemu-user and the arm64
#                                    libraries the library and its C tests link (multiarch: adds
#                                    the arm64 architecture to dpkg), for scripts/cross-aarch64.sh
set -euo pipefail
pkgs=(build-essential cmake pkg-config liburcu-dev libsqlite3-dev libhiredis-dev check
      redis-server redis-sentinel
      # the Python package (python/) and its tests: Debian's python3 and python3-* only
      python3-dev python3-pytest python3-pytest-asyncio python3-fastapi python3-uvicorn gunicorn
      python3-httpx python3-redis python3-limits python3-flask-limiter wrk)
arch=()
case "${1:-}" in
  --fuzz) pkgs+=(clang libclang-rt-14-dev) ;;
  --cross-aarch64)
    pkgs+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user
           liburcu-dev:arm64 libsqlite3-dev:arm64 libhiredis-dev:arm64 check:arm64 libsubunit-dev:arm64)
    arch=(arm64) ;;
esac
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
((${#missing[@]})) || exit 0
if [ "$(id -u)" -eq 0 ]; then sudo=(); else sudo=(sudo); fi
echo "installing: ${missing[*]}"
for a in "${arch[@]}"; do
  dpkg --print-foreign-architectures | grep -qx "$a" || "${sudo[@]}" dpkg --add-architecture "$a"
done
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
