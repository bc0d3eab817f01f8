#!/usr/bin/env bash
# Installs the build into a temporary prefix, then builds examples/limiter.c against it twice:
# with pkg-config and as a CMake package (find_package(traffic)), and runs both.
set -euo pipefail
build=$1 src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
export PKG_CONFIG_PATH=$tmp/prefix/lib/pkgconfig
cc -o "$tmp/pc" "$src/examples/limiter.c" $(pkg-config --cflags --libs traffic) -lm -Wl,-rpath,"$tmp/prefix/lib"
"$tmp/pc" | tail -1 | grep -q "OK$"
cmake -S "$src/tests/install" -B "$tmp/consumer" -DCMAKE_PREFIX_PATH="$tmp/prefix" \
  -DEXAMPLE="$src/examples/limiter.c" >/dev/null
cmake --build "$tmp/consumer" >/dev/null
"$tmp/consumer/consumer" | tail -1 | grep -q "OK$"
echo "install: pkg-config and find_package consumers built and ran"
