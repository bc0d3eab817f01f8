#!/usr/bin/env bash
# Builds the fuzz targets with clang (libFuzzer, AddressSanitizer, UndefinedBehaviorSanitizer)
# into build-fuzz/ and runs each, one after the other, for a bounded time:
#   fuzz/run.sh [SECONDS_EACH] [TARGET...]      default: 60 s each; url limit table sqlite redis
# Each fuzzer starts from its committed corpus (fuzz/corpus/NAME/, only read) and keeps what
# it learns in build-fuzz/corpus/NAME/. A crash, a broken invariant, a hang past the per-input
# timeout or a runaway allocation stops that fuzzer: its input lands in build-fuzz/artifacts/,
# its log is printed, the other targets still run, and the script exits 1. Keep a finding by
# copying the input into fuzz/corpus/NAME/ (test_fuzz replays it in every build) and giving
# the bug a test of its own.
# Needs clang with compiler-rt (Debian: clang, libclang-rt-14-dev; scripts/deps.sh --fuzz).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
secs=${1:-60}
shift || true
targets=("$@")
((${#targets[@]})) || targets=(url limit table sqlite redis)
cc=${CC:-clang}
if ! command -v "$cc" >/dev/null; then
  echo "fuzz/run.sh: $cc not found (scripts/deps.sh --fuzz installs clang and libclang-rt-14-dev)" >&2
  exit 2
fi

cmake -S . -B build-fuzz -DCMAKE_C_COMPILER="$cc" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTRAFFIC_TESTS=OFF \
  -DTRAFFIC_FUZZ=ON -DTRAFFIC_SANITIZE=address,undefined >/dev/null
cmake --build build-fuzz -j"$(nproc)" --target "${targets[@]/#/fuzz_}"

# allocator_may_return_null: a reply that announces a 2^31-element array makes hiredis ask for
# 16 GiB; the library must then report TRAFFIC_ENOMEM, which it can only do if malloc says no.
# detect_leaks=0: a process keeps some state on purpose (a thread's participant records until
# its next call, the per-thread rule cache, a forked child's abandoned Redis connections).
export ASAN_OPTIONS=allocator_may_return_null=1:max_allocation_size_mb=2048:detect_leaks=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
mkdir -p build-fuzz/artifacts
failed=()
for t in "${targets[@]}"; do
  mkdir -p "build-fuzz/corpus/$t"
  log=$root/build-fuzz/fuzz_$t.log
  echo "== fuzz_$t: ${secs} s"
  if build-fuzz/fuzz/fuzz_"$t" -max_total_time="$secs" -timeout=30 -rss_limit_mb=4096 -print_final_stats=1 \
       -artifact_prefix="$root/build-fuzz/artifacts/$t-" "$root/build-fuzz/corpus/$t" "$root/fuzz/corpus/$t" \
       >"$log" 2>&1; then
    grep -E "^Done|stat::number_of_executed_units|stat::new_units_added" "$log" || true
  else
    failed+=("$t")
    tail -n 80 "$log"
    echo "fuzz_$t FAILED: input in build-fuzz/artifacts/$t-*, log in $log"
  fi
done
if ((${#failed[@]})); then
  echo "fuzzers that found something: ${failed[*]}"
  exit 1
fi
echo "all fuzzers ran clean: ${targets[*]}"
