#!/usr/bin/env bash
# What limits on Redis cost per limited request, against the same limits in memory, in one run:
# two release gateways in front of the emulator, one with state.backend: memory and one with
# state.backend: redis (a local redis-server), the same three limits matching every DELETE (per
# client, per role, global; rates high enough never to refuse). For each, wrk sends DELETEs on one
# connection (latency: p50, p99) and on 16 (throughput), interleaved, and the CPU time per request of
# the gateway (and of Redis) is read from /proc. Redis' own command counters show how many round trips
# the limited requests took.
#
# Usage: scripts/bench-limits.sh [SECONDS_PER_RUN] [ROUNDS]     (defaults 10 and 3)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
secs=${1:-10}
rounds=${2:-3}
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v curl >/dev/null || need+=(curl)
command -v redis-server >/dev/null || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --quiet
bin=$PWD/target/release/tl-gateway
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

key=bench-upstream-key
printf '%s\n' "$key" > "$work/key"
emu=$(free_port)
"$bin" emulator --listen "127.0.0.1:$emu" --api-key "$key" > /dev/null 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$emu/"
rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" > "$work/redis.log" 2>&1 &
redis_pid=$!; pids+=("$redis_pid")
for _ in $(seq 1 100); do redis-cli -p "$rport" ping 2>/dev/null | grep -q PONG && break; sleep 0.05; done

start_gateway() { # NAME STATE_YAML → port_NAME, pid_NAME
  local port admin
  port=$(free_port); admin=$(free_port)
  cat > "$work/$1.yaml" <<YAML
listen: 127.0.0.1:$port
admin_listen: 127.0.0.1:$admin
upstream:
  url: http://127.0.0.1:$emu
  api_key_file: $work/key
clients:
  - id: alice
    roles: [admin]
    key_sha256: d7488ca6175fed1af2450dea5acac0dc06f2e7a5199459878eca70385645fac6
rate_limits:
  - { id: per-client, match: { method: DELETE }, per: client, rate: 1000000/second, burst: 1000000 }
  - { id: per-role, match: { method: DELETE }, per: role, rate: 1000000/second, burst: 1000000 }
  - { id: everybody, match: { method: DELETE }, per: global, rate: 1000000/second, burst: 1000000 }
$2
YAML
  RUST_LOG=warn "$bin" serve --config "$work/$1.yaml" 2> "$work/$1.log" &
  local pid=$!; pids+=("$pid")
  wait_http "http://127.0.0.1:$admin/healthz"
  printf -v "port_$1" '%s' "$port"; printf -v "pid_$1" '%s' "$pid"
}
start_gateway memory "state: { backend: memory }"
start_gateway redis "state: { backend: redis, redis: { url: \"redis://127.0.0.1:$rport/0\", timeout: 50ms } }"

cat > "$work/delete.lua" <<'LUA'
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("DELETE", string.format("/v1.3/indexes/%024x", counter))
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %.0f %.3f %.3f %d\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, summary.requests))
end
LUA
ticks() { local p u=0 s=0; for p in "$@"; do read -r a b < <(awk '{print $14, $15}' "/proc/$p/stat"); u=$((u + a)); s=$((s + b)); done; echo $((u + s)); }
hz=$(getconf CLK_TCK)
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
run() { # NAME CONNECTIONS PIDS... → "rps p50 p99 cpu_us_per_request requests"
  local name=$1 conns=$2; shift 2
  local port_var="port_$name" before after out
  before=$(ticks "$@")
  out=$(wrk -t1 -c"$conns" -d"${secs}s" -H "x-api-key: tlgw_alice_example_key" -s "$work/delete.lua" \
    "http://127.0.0.1:${!port_var}" 2>/dev/null | awk '/^RESULT/ {print $2, $3, $4, $5}')
  after=$(ticks "$@")
  echo "$out" | awk -v d=$((after - before)) -v hz="$hz" '{printf "%s %s %s %.1f %d\n", $1, $2, $3, d * 1e6 / hz / ($4 > 0 ? $4 : 1), $4}'
}

redis-cli -p "$rport" config resetstat > /dev/null
declare -A results
for round in $(seq 1 "$rounds"); do
  for conns in 1 16; do
    results["memory|$conns|$round"]=$(run memory "$conns" "$pid_memory")
    results["redis|$conns|$round"]=$(run redis "$conns" "$pid_redis")
    results["rediscpu|$conns|$round"]=$(run redis "$conns" "$redis_pid")
  done
done
evalsha=$(redis-cli -p "$rport" info commandstats | awk -F'[=,:]' '/^cmdstat_evalsha/ {print $3}')
col() { local name=$1 conns=$2 c=$3; for round in $(seq 1 "$rounds"); do echo "${results["$name|$conns|$round"]}" | awk -v c="$c" '{print $c}'; done | median; }

echo "tl-gateway limits: memory vs Redis — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, ${secs}s per run, median of $rounds rounds"
echo "three limits match every request (per client, per role, global)"
printf '\n%-8s %6s %10s %9s %9s %16s\n' backend conns "req/s" "p50 ms" "p99 ms" "gateway µs/req"
for conns in 1 16; do
  for name in memory redis; do
    printf '%-8s %6s %10s %9s %9s %16s\n' "$name" "$conns" "$(col "$name" "$conns" 1)" "$(col "$name" "$conns" 2)" "$(col "$name" "$conns" 3)" "$(col "$name" "$conns" 4)"
  done
done
echo
echo "added p50 per limited request (1 connection): $(awk -v a="$(col redis 1 2)" -v b="$(col memory 1 2)" 'BEGIN {printf "%.3f", a - b}') ms"
echo "Redis CPU per limited request: $(col rediscpu 16 4) µs (16 connections)"
total=0
for round in $(seq 1 "$rounds"); do for conns in 1 16; do for name in redis rediscpu; do
  total=$((total + $(echo "${results["$name|$conns|$round"]}" | awk '{print $5}')))
done; done; done
echo "round trips: $evalsha EVALSHA for $total limited requests through Redis (three limits each)"
