#!/usr/bin/env bash
# The main job: installs what is missing, builds lightcore (Release) and runs the quickstart,
# a small SwiGLU MLP stack on the CPU backend with every activation taken from the
# cache_tensor_manager. Extra arguments go to the program (--layers, --tokens, --hidden, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
mkdir -p build
log=build/run.log
# Quiet when the build succeeds; the whole log when it does not.
if ! { cmake --preset release && cmake --build --preset release --target lightcore_quickstart \
         -- -j"$(nproc)"; } >"$log" 2>&1; then
  cat "$log"
  echo "run: the build failed (log above, also in $log)" >&2
  exit 1
fi
exec build/release/examples/quickstart/lightcore_quickstart "$@"
