#!/usr/bin/env bash
# Builds, tests and benchmarks on a GPU machine in one go, writing logs and benchmark JSON into
# $OUT (default: build/gpu-suite). Used for the numbers in docs/perf/.
#   scripts/gpu_suite.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-build/gpu-suite}
mkdir -p "$out"
jobs=$(nproc)
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  nvcc --version | tail -2
  cmake --version | head -1
} 2>&1 | tee "$out/machine.txt"

start=$(date +%s)
cmake --preset release >"$out/configure.log" 2>&1 || { tail -50 "$out/configure.log"; exit 1; }
cmake --build --preset release -- -j"$jobs" >"$out/build.log" 2>&1 || { grep -B5 -A20 -m3 'error' "$out/build.log"; exit 1; }
echo "build: $(( $(date +%s) - start )) s"

ctest --preset release -j4 --output-on-failure >"$out/ctest.log" 2>&1
rc=$?
grep -E "tests passed|tests failed|Failed|\*\*\*" "$out/ctest.log" | tail -30
# The GPU suites verbosely, for the numbers they print (graph memory) and any skip reasons.
for t in build/release/tests/lightcore_*_cuda_tests; do
  [ -x "$t" ] && "$t" --gtest_brief=1 >>"$out/gpu_tests.log" 2>&1
done
grep -E "graph pool|SKIPPED|FAILED" "$out/gpu_tests.log" | head -20

for b in build/release/bench/kernels/lightcore_bench_*; do
  [ -x "$b" ] || continue
  name=$(basename "$b")
  "$b" --benchmark_out="$out/$name.json" --benchmark_out_format=json \
       --benchmark_counters_tabular=true 2>&1 | tee "$out/$name.txt" | tail -25
done
exit $rc
