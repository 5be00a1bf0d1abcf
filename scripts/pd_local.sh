#!/usr/bin/env bash
# Starts a prefill/decode-separated set on this machine: one prefill instance, one decode
# instance and a pd-router in front of them (three lightcore_server processes), and serves until
# Ctrl-C, which stops all three. Clients talk to the router's port. docs/pd.md explains the roles.
#
#   scripts/pd_local.sh                         # the built-in model on the CPU, router on :8000
#   scripts/pd_local.sh --port 9000 --device cuda -- --dummy /models/small/config.json
#
# Flags: --port N (the router's; default 8000), --device cpu|cuda|auto (default cpu), --bin PATH
# (default build/release/examples/server/lightcore_server, built when missing), --tokenizer PATH
# (default .cache/tokenizer); flags after -- go to all three (the model: the router reads only its
# config, for the EOS ids and the served name).
# On one GPU the two instances share it (each loads its own weights): the prefill instance takes
# 40% of the free memory for its KV pool (--kv-memory-fraction 0.4), the decode instance 70% of
# what is left after it.
set -euo pipefail
cd "$(dirname "$0")/.."

port=8000
device=cpu
bin=build/release/examples/server/lightcore_server
tokenizer=.cache/tokenizer
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --port) port="$2"; shift 2 ;;
    --device) device="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    --tokenizer) tokenizer="$2"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "pd_local.sh: unknown flag $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [[ ! -x "$bin" ]]; then
  cmake --preset release >/dev/null
  cmake --build build/release --target lightcore_server
fi

logs=$(mktemp -d)
pids=()
stop() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$logs"
}
trap stop EXIT
trap 'exit 130' INT TERM

# Starts one server in the background and sets url once it serves (or exits on failure).
url=
start() {
  local name=$1; shift
  "$bin" --tokenizer "$tokenizer" "$@" >"$logs/$name.out" 2>"$logs/$name.err" &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 600); do
    url=$(grep -o "http://[0-9a-zA-Z.:-]*" "$logs/$name.out" 2>/dev/null | head -1 || true)
    [[ -n "$url" ]] && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "pd_local.sh: the $name instance did not start:" >&2
  cat "$logs/$name.err" >&2
  exit 1
}

p_flags=() d_flags=()
if [[ "$device" != cpu ]]; then
  p_flags=(--kv-memory-fraction 0.4)
  d_flags=(--kv-memory-fraction 0.7)
fi
start prefill --role prefill --port 0 --device "$device" "${p_flags[@]}" "${extra[@]}"
prefill=$url
start decode --role decode --port 0 --device "$device" "${d_flags[@]}" "${extra[@]}"
decode=$url
start router --role pd-router --port "$port" --prefill "$prefill" --decode "$decode" \
  "${extra[@]}"
router=$url
echo "prefill $prefill, decode $decode"
echo "pd-router serving on $router (Ctrl-C stops all three)"
wait -n "${pids[@]}" || true
echo "pd_local.sh: an instance ended; stopping the others" >&2
for n in prefill decode router; do tail -n 3 "$logs/$n.err" >&2 || true; done
exit 1
