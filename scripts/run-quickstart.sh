#!/usr/bin/env bash
# `make run`: generate the demo model if missing, run the daemon watching examples/quickstart/,
# wait until everything is Ready, and show how to talk to the local model. Ctrl-C stops it all.
#
# The state goes where every `lasctl` looks by default ($LAS_HOME if set, else
# $XDG_DATA_HOME/localaistack, else ~/.local/share/localaistack), so `lasctl get all`, `lasctl ps`
# and `lasctl run tiny` in another terminal see this daemon with no extra setting.
set -euo pipefail
cd "$(dirname "$0")/.."
lasctl=${LASCTL:-target/debug/lasctl}
if [ -n "${LAS_HOME:-}" ]; then
  why="LAS_HOME is set"
else
  why="the default; set LAS_HOME to use another"
fi
home=${LAS_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/localaistack}
listen=${LAS_LISTEN:-127.0.0.1:7411}
model=/tmp/localaistack-demo/tiny-llama.gguf

if [ ! -f "$model" ]; then
  mkdir -p "$(dirname "$model")"
  "$lasctl" model generate-test "$model" --preset tiny
fi

echo "state in $home ($why)"
"$lasctl" daemon --watch examples/quickstart --listen "$listen" --stop-workloads-on-exit &
daemon=$!
stopped=""
stop() {
  [ -n "$stopped" ] && return
  stopped=1
  echo; echo "stopping..."
  kill -TERM "$daemon" 2>/dev/null || true
  wait "$daemon" 2>/dev/null || true
}
trap 'stop; exit 0' INT TERM
trap stop EXIT

echo "waiting for the stack to be Ready..."
"$lasctl" wait model/tiny --for=condition=Ready --timeout=300s
"$lasctl" wait module/chat --for=condition=Ready --timeout=300s
"$lasctl" get all
echo
echo "OpenAI-compatible endpoint: http://$listen/v1   (model: tiny)"
req='{"model":"tiny","messages":[{"role":"user","content":"Hello"}],"max_tokens":16,"temperature":0}'
echo "try:  curl -s http://$listen/v1/chat/completions -H 'Content-Type: application/json' -d '$req'"
echo
curl -s "http://$listen/v1/chat/completions" -H 'Content-Type: application/json' -d "$req"
echo
echo
echo "in another terminal (\`make install\` puts lasctl on PATH in ~/.local/bin):"
echo "  lasctl status       # this home, this daemon, what needs attention"
echo "  lasctl ps           # what runs, its memory and requests"
echo "  lasctl run tiny     # chat with the model"
echo "serving; press Ctrl-C to stop"
wait "$daemon"
