#!/usr/bin/env bash
# The main job: installs what is missing, builds lightcore (Release), starts the reference server
# on its built-in tiny model (on the GPU when one is present, else on the CPU), sends it a real
# chat request and a streamed completion, prints the replies and the server's metrics summary,
# and stops it.
#   scripts/run.sh                 the above
#   scripts/run.sh --serve [flags] build, then run the server in the foreground with the flags
#                                  (lightcore_server --help lists them)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
mkdir -p build
log=build/run.log
# Quiet when the build succeeds; the whole log when it does not.
if ! { cmake --preset release && cmake --build --preset release --target lightcore_server \
         -- -j"$(nproc)"; } >"$log" 2>&1; then
  cat "$log"
  echo "run: the build failed (log above, also in $log)" >&2
  exit 1
fi
server=build/release/examples/server/lightcore_server
tokenizer=.cache/tokenizer
if [ ! -f "$tokenizer/tokenizer.json" ]; then
  echo "run: $tokenizer/tokenizer.json is missing (scripts/setup.sh fetches it with npm)" >&2
  exit 1
fi
if [ "${1:-}" = "--serve" ]; then
  shift
  exec "$server" --tokenizer "$tokenizer" "$@"
fi

out=build/run-server.log
"$server" --tokenizer "$tokenizer" --port 0 >"$out" 2>&1 &
pid=$!
stop() { kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
trap stop EXIT
url=""
for _ in $(seq 1 600); do
  url=$(grep -o 'http://[0-9.]*:[0-9]*' "$out" | head -1 || true)
  [ -n "$url" ] && break
  kill -0 "$pid" 2>/dev/null || { cat "$out"; echo "run: the server exited" >&2; exit 1; }
  sleep 0.2
done
[ -n "$url" ] || { cat "$out"; echo "run: the server did not start in 120 s" >&2; exit 1; }
cat "$out"

echo
echo "POST $url/v1/chat/completions"
body='{"messages":[{"role":"user","content":"Hello! What is lightcore?"}],"max_tokens":24,"temperature":0}'
echo "  $body"
reply=$(curl -sS --fail-with-body "$url/v1/chat/completions" -H 'Content-Type: application/json' -d "$body")
echo "  -> $reply"

echo
echo "POST $url/v1/completions (streamed)"
body='{"prompt":"The tiny model answers with","max_tokens":8,"stream":true,"seed":7}'
echo "  $body"
curl -sS -N --fail-with-body "$url/v1/completions" -H 'Content-Type: application/json' -d "$body" |
  sed 's/^/  /'

echo "GET $url/health -> $(curl -sS "$url/health")"
echo "GET $url/metrics (requests and tokens):"
curl -sS "$url/metrics" | grep -E '^lightcore_(requests_received|prompt_tokens|generation_tokens)' |
  sed 's/^/  /'
echo
echo "run: the built-in model has random weights, so its text is random; every step of the real"
echo "run: path ran (HTTP, tokenizer, chat format, shared-memory request table, engine process,"
echo "run: scheduler, KV pool, DeepSeek forward, sampler, detokenizer). scripts/run.sh --serve"
echo "run: keeps a server running; lightcore_server --help lists its flags."
