#!/usr/bin/env bash
# Installs the build into a temporary prefix and imports the installed package from there with
# Debian's python3 (outside the source and build trees), and checks that the directory
# `cmake --install` uses for the configured prefix is on that interpreter's sys.path.
#   test_install.sh BUILD_DIR PYTHON CONFIGURED_PREFIX PYTHON_INSTALL_DIR
set -euo pipefail
build=$1 python=$2 prefix=$3 pydir=$4
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
site=$tmp/prefix/$pydir
ls "$site"/traffic/_traffic*.so >/dev/null
cd /
PYTHONPATH=$site "$python" - "$site" <<'PY'
import asyncio, sys
import traffic
assert traffic.__file__.startswith(sys.argv[1]), traffic.__file__
async def main():
    async with traffic.MemoryBackend() as b:
        await b.set("k", {"v": 1}, ttl=60)
        assert await b.get("k") == {"v": 1}
        assert (await b.decide("rl", traffic.make_rule(1, 60))).allowed
asyncio.run(main())
PY
# the extension carries libtraffic: nothing to find at run time but the system's libraries
if ldd "$site"/traffic/_traffic*.so | grep -q libtraffic; then
  echo "the extension links libtraffic.so dynamically" >&2; exit 1
fi
if [ "$prefix" = /usr/local ] || [ "$prefix" = /usr ]; then
  "$python" -c 'import sys; sys.exit(0 if sys.argv[1] in sys.path else "not on sys.path: " + sys.argv[1])' \
    "$prefix/$pydir"
fi
echo "install: the traffic package imports from $pydir under the prefix"
