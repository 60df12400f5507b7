#!/usr/bin/env bash
# What traces cost: small GETs (bench-proxy.sh's GET workload: wrk -t2, 64 keep-alive connections,
# GET /v1.3/assets?page=1 with the example configuration, audit section dropped) against
#   gateway     → tl-gateway (release), no telemetry.otlp (traces off)
#   otlp-1%     → the same with telemetry.otlp, sample_ratio 0.01
#   otlp-100%   → the same with sample_ratio 1 (every request exported)
#   baseline    → with BASELINE=DIR, DIR/target/release/tl-gateway and DIR's example configuration
#                 (e.g. the commit before traces), to show "traces off" costs nothing
# interleaved, ROUNDS rounds of SECONDS each, medians. The OTLP receiver is the upstream nginx
# itself (POST /v1/traces → 200 with an empty body, a valid empty ExportTraceServiceResponse), so
# the spans really are encoded and sent over HTTP. Prints req/s, p50/p99 ms, the gateway's CPU µs
# per request and, for the traced gateways, tl_gateway_trace_spans_dropped_total at the end.
#
# Usage: scripts/bench-traces.sh [SECONDS] [ROUNDS]     (defaults 10 and 3)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
secs=${1:-10}
rounds=${2:-3}
for tool in nginx wrk curl; do
  command -v "$tool" >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk curl >/dev/null; break; }
done
cargo build --release --quiet
bin=$PWD/target/release/tl-gateway
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; [ -f "$work/upstream.pid" ] && kill "$(cat "$work/upstream.pid")" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

up=$(free_port)
key=bench-upstream-key
printf '%s\n' "$key" > "$work/key"
body='{"data":[{"_id":"6298d673f1090f1100476d4c","filename":"keynote.mp4"}],"page_info":{"limit_per_page":10,"page":1,"total_page":1,"total_results":1}}'
cat > "$work/upstream.conf" <<NGINX
worker_processes auto;
pid $work/upstream.pid;
error_log $work/upstream-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_max_body_size 0;
  client_body_temp_path $work/upstream-body;
  server {
    listen 127.0.0.1:$up;
    location / { default_type application/json; return 200 '$body'; }
    location = /v1/traces { default_type application/x-protobuf; return 200 ''; }
  }
}
NGINX
mkdir -p "$work/upstream-body"
nginx -p "$work" -c "$work/upstream.conf"
wait_http "http://127.0.0.1:$up/"

start_gateway() { # $1 name, $2 sample ratio or "", [$3 binary, $4 example config] → port_$1, pid_$1, admin_$1
  local port admin binary=${3:-$bin} example=${4:-config/gateway.example.yaml}
  port=$(free_port); admin=$(free_port)
  python3 - "$example" "$port" "$admin" "http://127.0.0.1:$up" "$work/key" "$2" > "$work/$1.yaml" <<'PY'
import re, sys
example, port, admin, upstream, key, sample = sys.argv[1:]
text = open(example).read()
def sub(pattern, replacement):
    global text
    text, n = re.subn(pattern, replacement, text, count=1, flags=re.M)
    assert n == 1, f"{example} has no line matching {pattern!r}"
sub(r"^listen: .*$", f"listen: 127.0.0.1:{port}")
sub(r"^admin_listen: .*$", f"admin_listen: 127.0.0.1:{admin}")
sub(r"^  url: .*$", f"  url: {upstream}")
sub(r"^  api_key_file: .*$", f"  api_key_file: {key}")
sub(r"^audit:\n(?:(?:[ #].*)?\n)*", "")
if sample:
    text = re.sub(r"^telemetry:\n(?:(?:[ #].*)?\n)*", "", text, flags=re.M)
    text += f"\ntelemetry:\n  otlp:\n    endpoint: {upstream}\n    sample_ratio: {sample}\n"
print(text, end="")
PY
  RUST_LOG=warn "$binary" serve --config "$work/$1.yaml" 2> "$work/$1.log" &
  local pid=$!; pids+=("$pid")
  wait_http "http://127.0.0.1:$admin/healthz"
  printf -v "port_$1" '%s' "$port"; printf -v "pid_$1" '%s' "$pid"; printf -v "admin_$1" '%s' "$admin"
}
start_gateway off ""
start_gateway one 0.01
start_gateway all 1
targets=(gateway otlp-1% otlp-100%)
if [ -n "${BASELINE:-}" ]; then
  [ -x "$BASELINE/target/release/tl-gateway" ] || { echo "BASELINE=$BASELINE: build it first" >&2; exit 2; }
  start_gateway base "" "$BASELINE/target/release/tl-gateway" "$BASELINE/config/gateway.example.yaml"
  targets+=(baseline)
fi

cat > "$work/report.lua" <<'LUA'
done = function(summary, latency, requests)
  local secs = summary.duration / 1e6
  io.write(string.format("RESULT %.0f %.3f %.3f %d\n", summary.requests / secs,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
LUA
hz=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
declare -A results
for round in $(seq 1 "$rounds"); do
  for target in "${targets[@]}"; do
    case $target in
      gateway) port=$port_off; pid=$pid_off ;;
      otlp-1%) port=$port_one; pid=$pid_one ;;
      otlp-100%) port=$port_all; pid=$pid_all ;;
      baseline) port=$port_base; pid=$pid_base ;;
    esac
    before=$(cpu "$pid")
    out=$(wrk -t2 -c64 -d"${secs}s" -H "x-api-key: tlgw_alice_example_key" -s "$work/report.lua" \
      "http://127.0.0.1:$port/v1.3/assets?page=1" 2>/dev/null | awk '/^RESULT/ {print $2, $3, $4, $5}')
    after=$(cpu "$pid")
    results["$target|$round"]=$(echo "$out" "$before" "$after" | awk -v hz="$hz" -v secs="$secs" \
      '{n = $1 * secs; if (n < 1) n = 1; printf "%s %s %s %s %.1f\n", $1, $2, $3, $4, ($6 - $5) * 1e6 / hz / n}')
  done
done
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "tl-gateway traces benchmark — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, ${secs}s per run, median of $rounds interleaved rounds"
printf '%-10s %9s %8s %8s %7s %12s\n' target "req/s" "p50 ms" "p99 ms" errors "CPU µs/req"
for target in "${targets[@]}"; do
  rows=(); line=()
  for round in $(seq 1 "$rounds"); do rows+=("${results["$target|$round"]}"); done
  for col in 1 2 3 4 5; do line+=("$(printf '%s\n' "${rows[@]}" | awk -v c=$col '{print $c}' | median)"); done
  printf '%-10s %9s %8s %8s %7s %12s\n' "$target" "${line[@]}"
done
for name in one all; do
  admin_var=admin_$name
  echo "$name: $(curl -s "http://127.0.0.1:${!admin_var}/metrics" | grep '^tl_gateway_trace_spans_dropped_total' | tr '\n' ' ')"
done
