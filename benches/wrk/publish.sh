#!/usr/bin/env bash
# HTTP publish throughput and latency: starts a release daemon in temporary directories (gateway on
# 127.0.0.1, a free port), creates an operator API key on api.sock, and runs
#   wrk -t2 -c8 -d10s --latency -s benches/wrk/publish.lua http://ADDR/api/v1/events
# Every request is a durable publish (answered after its commit). Needs wrk and socat (Debian:
# apt-get install wrk socat). THREADS, CONNECTIONS and DURATION override wrk's settings.
set -euo pipefail
cd "$(dirname "$0")/../.."

THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-8}
DURATION=${DURATION:-10s}
for tool in wrk socat; do
  command -v "$tool" >/dev/null || { echo "publish.sh: $tool is missing (apt-get install $tool)" >&2; exit 1; }
done

cargo build --release --bins -p aiventbus-init -p aiventbus-bus -p aiventbus-exec -p aiventbus-policy \
  -p aiventbus-llm -p aiventbus-router -p aiventbus-gateway

root=$(mktemp -d -t aiventbus-wrk-XXXXXX)
init_pid=
cleanup() {
  if [[ -n "$init_pid" ]]; then
    kill -TERM "$init_pid" 2>/dev/null || true
    wait "$init_pid" 2>/dev/null || true
  fi
  rm -rf "$root"
}
trap cleanup EXIT

export AIVENTBUS_RUNTIME_DIR="$root/run" AIVENTBUS_STATE_DIR="$root/state" AIVENTBUS_CONFIG="$root/config.toml"
export AIVENTBUS_LIBEXEC_DIR="$PWD/target/release" AIVENTBUS_LOG=${AIVENTBUS_LOG:-warn}
printf '[gateway]\nlisten = "127.0.0.1:0"\n' >"$AIVENTBUS_CONFIG"
target/release/aiventbus-init >"$root/init.log" 2>&1 &
init_pid=$!

# Start-up has no readiness signal a shell can wait on without a notify socket: look for the
# gateway's address file, for at most 60 s.
for _ in $(seq 600); do
  [[ -s "$root/run/gateway.addr" && -S "$root/run/api.sock" ]] && break
  kill -0 "$init_pid" 2>/dev/null || { cat "$root/init.log" >&2; exit 1; }
  sleep 0.1
done
[[ -s "$root/run/gateway.addr" ]] || { echo "the gateway did not start" >&2; cat "$root/init.log" >&2; exit 1; }
addr=$(cat "$root/run/gateway.addr")

reply=$(printf '%s\n' '{"jsonrpc":"2.0","id":1,"method":"keys.create","params":{"user":"bench","role":"operator"}}' \
  | socat -t 5 - "UNIX-CONNECT:$root/run/api.sock")
key=$(printf '%s' "$reply" | sed -n 's/.*"key":"\(aib_[A-Za-z0-9_-]*\)".*/\1/p')
[[ -n "$key" ]] || { echo "keys.create failed: $reply" >&2; exit 1; }

# CPU time (clock ticks) each service has used so far, as "name ticks" lines.
cpu_ticks() {
  for pid in $(pgrep -P "$init_pid"); do
    [[ -r /proc/$pid/stat ]] || continue
    # comm may hold spaces: split after its closing parenthesis (fields 14 and 15: utime, stime).
    stat=$(cat "/proc/$pid/stat")
    name=$(cat "/proc/$pid/comm")
    rest=${stat##*) }
    read -r -a fields <<<"$rest"
    echo "$name $((fields[11] + fields[12]))"
  done | sort
}

echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency POST http://$addr/api/v1/events ($(nproc) cores)"
before=$(cpu_ticks)
wrk_out=$(AIVENTBUS_KEY="$key" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s benches/wrk/publish.lua \
  "http://$addr/api/v1/events")
after=$(cpu_ticks)
echo "$wrk_out"
requests=$(printf '%s\n' "$wrk_out" | sed -n 's/^ *\([0-9]*\) requests in.*/\1/p')
hz=$(getconf CLK_TCK)
echo "CPU per request by service (µs):"
join <(echo "$before") <(echo "$after") \
  | awk -v hz="$hz" -v n="${requests:-0}" 'n > 0 { printf "  %-20s %6.1f\n", $1, ($3 - $2) * 1e6 / hz / n }'

stored=$(printf '%s\n' '{"jsonrpc":"2.0","id":2,"method":"topics.list"}' \
  | socat -t 5 - "UNIX-CONNECT:$root/run/api.sock" | sed -n 's/.*"topic":"bench.http","count":\([0-9]*\).*/\1/p')
echo "events stored on bench.http: ${stored:-?}"
