#!/usr/bin/env bash
# The test command: installs what is missing, builds everything (CUDA code too when nvcc is
# present), then runs every test with CTest. GPU tests skip, saying why, where no GPU is present.
#   scripts/test.sh [ctest arguments...]     e.g. scripts/test.sh -L memory
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
preset=${LIGHTCORE_PRESET:-ci}
cmake --preset "$preset" >/dev/null
cmake --build --preset "$preset" -- -j"$(nproc)"
ctest --preset "$preset" -j"$(nproc)" "$@"
