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

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup: done"
