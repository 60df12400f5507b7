#!/usr/bin/env bash
# Proxy benchmark, side by side on loopback, interleaved, in one run:
#   direct   → a fixed fast upstream (an nginx instance answering a static JSON body)
#   nginx    → a second nginx instance, proxy_pass to that upstream (proxy_set_header x-api-key,
#              upstream keep-alive)
#   gateway  → tl-gateway (release) with the example policy
#   gateway+audit (for DELETEs) → the same with the fsync'd audit log
# Workloads: small GETs on keep-alive connections; 1 MiB uploads; permitted DELETEs. Prints req/s,
# p50/p99/p99.9 and the CPU time (user, system) the process under test spent per request, the ratio
# gateway/nginx and the latency added over direct, then the p99 added latency at half of the
# gateway's maximum GET rate, small GETs over HTTPS (gateway TLS vs nginx TLS, the same certificate,
# keep-alive: the handshake is paid once per connection), and memory: idle RSS, RSS with 10,000 idle keep-alive connections
# (gateway and nginx), and peak RSS during 16 concurrent 1 GiB uploads.
#
# Usage: scripts/bench-proxy.sh [SECONDS_PER_RUN] [ROUNDS]     (defaults 10 and 3)
#
# BASELINE=DIR adds a fifth target, "baseline": another checkout's release build
# (DIR/target/release/tl-gateway, build it first) running that checkout's example configuration,
# interleaved with the others in the GET and DELETE workloads and the half-load run, so a change is
# measured against its parent in one run (e.g. git worktree add /tmp/base HEAD~3 && (cd /tmp/base &&
# cargo build --release) && BASELINE=/tmp/base scripts/bench-proxy.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
secs=${1:-10}
rounds=${2:-3}
need=()
command -v openssl >/dev/null || need+=(openssl)
command -v nginx >/dev/null || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --quiet
bin=$PWD/target/release/tl-gateway
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; for f in "$work"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null; done; rm -rf "$work"; }
trap cleanup EXIT

up=$(free_port); nx=$(free_port); nxs=$(free_port)
# One server certificate (ECDSA P-256, from a throwaway CA) for both TLS listeners.
openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/ca.key" -out "$work/ca.pem" \
  -days 2 -subj "/CN=bench CA" -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/tls.key" -out "$work/tls.csr" -subj "/CN=localhost" 2>/dev/null
printf 'basicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n' > "$work/tls.ext"
openssl x509 -req -in "$work/tls.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial -out "$work/tls.pem" -days 2 -extfile "$work/tls.ext" 2>/dev/null
key=bench-upstream-key
printf '%s\n' "$key" > "$work/key"
body='{"data":[{"_id":"6298d673f1090f1100476d4c","filename":"keynote.mp4"}],"page_info":{"limit_per_page":10,"page":1,"total_page":1,"total_results":1}}'
# Two nginx instances: the upstream, and the proxy under test in its own processes (as the gateway
# is), so the proxy never shares a worker or its event loop with the upstream it forwards to.
cat > "$work/upstream.conf" <<NGINX
worker_processes auto;
worker_rlimit_nofile 65536;
pid $work/upstream.pid;
error_log $work/upstream-error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_max_body_size 0;
  client_body_temp_path $work/upstream-body;
  server {                      # the fixed fast upstream
    listen 127.0.0.1:$up;
    location / { default_type application/json; return 200 '$body'; }
  }
}
NGINX
cat > "$work/nginx.conf" <<NGINX
worker_processes auto;
worker_rlimit_nofile 65536;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_max_body_size 0;
  client_body_temp_path $work/body;
  proxy_temp_path $work/proxy;
  upstream origin { server 127.0.0.1:$up; keepalive 128; }
  server {                      # nginx as the proxy to compare with
    listen 127.0.0.1:$nx;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header x-api-key "$key";
      proxy_request_buffering off;
    }
  }
  server {                      # the same over TLS, with the gateway's certificate and versions
    listen 127.0.0.1:$nxs ssl;
    ssl_certificate $work/tls.pem;
    ssl_certificate_key $work/tls.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:TLS:10m;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header x-api-key "$key";
      proxy_request_buffering off;
    }
  }
}
NGINX
mkdir -p "$work/body" "$work/proxy" "$work/upstream-body"
nginx -p "$work" -c "$work/upstream.conf"
nginx -p "$work" -c "$work/nginx.conf"
wait_http "http://127.0.0.1:$up/"

# The gateway runs config/gateway.example.yaml (its clients, policy, rate limits, guards, audit scope)
# with only the addresses, the key file and the audit log changed: "audit" sets the log's path, "" drops
# the audit section.
start_gateway() { # $1 name, $2 upstream url, $3 audit|"", [$4 binary, $5 example config] → sets port_$1, pid_$1
  local port admin binary=${4:-$bin} example=${5:-config/gateway.example.yaml}
  port=$(free_port); admin=$(free_port)
  python3 - "$example" "$port" "$admin" "$2" "$work/key" "$3" "$work/$1-audit.jsonl" > "$work/$1.yaml" <<'PY'
import re, sys
example, port, admin, upstream, key, audit, audit_path = sys.argv[1:]
text = open(example).read()
def sub(pattern, replacement):
    global text
    text, n = re.subn(pattern, replacement, text, count=1, flags=re.M)
    assert n == 1, f"config/gateway.example.yaml has no line matching {pattern!r}"
sub(r"^listen: .*$", f"listen: 127.0.0.1:{port}")
sub(r"^admin_listen: .*$", f"admin_listen: 127.0.0.1:{admin}")
sub(r"^  url: .*$", f"  url: {upstream}")
sub(r"^  api_key_file: .*$", f"  api_key_file: {key}")
if audit:
    sub(r"^  path: \./data/audit\.jsonl.*$", f"  path: {audit_path}")
else:
    sub(r"^audit:\n(?:(?:[ #].*)?\n)*", "")
print(text, end="")
PY
  RUST_LOG=warn "$binary" serve --config "$work/$1.yaml" 2> "$work/$1.log" &
  local pid=$!; pids+=("$pid")
  wait_http "http://127.0.0.1:$admin/healthz"
  printf -v "port_$1" '%s' "$port"; printf -v "pid_$1" '%s' "$pid"
}
start_gateway gw "http://127.0.0.1:$up" ""
start_gateway gwa "http://127.0.0.1:$up" audit
# The gateway over TLS: the example configuration plus a tls: section with the shared certificate.
start_tls_gateway() {
  local port admin
  port=$(free_port); admin=$(free_port)
  sed -e "s/^listen: .*/listen: 127.0.0.1:$port/" -e "s/^admin_listen: .*/admin_listen: 127.0.0.1:$admin/" "$work/gw.yaml" > "$work/gws.yaml"
  printf 'tls:\n  cert_file: %s\n  key_file: %s\n' "$work/tls.pem" "$work/tls.key" >> "$work/gws.yaml"
  RUST_LOG=warn "$bin" serve --config "$work/gws.yaml" 2> "$work/gws.log" &
  pid_gws=$!; pids+=("$pid_gws"); port_gws=$port
  wait_http "http://127.0.0.1:$admin/healthz"
}
start_tls_gateway
idle_rss=$(kib "$pid_gw" VmRSS)
baseline=()
if [ -n "${BASELINE:-}" ]; then
  [ -x "$BASELINE/target/release/tl-gateway" ] || { echo "BASELINE=$BASELINE: build it first (cargo build --release there)" >&2; exit 2; }
  start_gateway base "http://127.0.0.1:$up" "" "$BASELINE/target/release/tl-gateway" "$BASELINE/config/gateway.example.yaml"
  baseline=(baseline)
fi

cat > "$work/report.lua" <<'LUA'
done = function(summary, latency, requests)
  local secs = summary.duration / 1e6
  io.write(string.format("RESULT %.0f %.3f %.3f %.3f %d\n", summary.requests / secs,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency:percentile(99.9) / 1000,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
LUA
cat > "$work/upload.lua" <<'LUA'
wrk.method = "POST"
wrk.body = string.rep("x", 1048576)
wrk.headers["Content-Type"] = "application/octet-stream"
LUA
cat "$work/report.lua" >> "$work/upload.lua"
cat > "$work/delete.lua" <<'LUA'
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("DELETE", string.format("/v1.3/indexes/%024x", counter))
end
LUA
cat "$work/report.lua" >> "$work/delete.lua"

# CPU time (user and system clock ticks) used so far by the given processes.
ticks() { local p u=0 s=0; for p in "$@"; do read -r a b < <(awk '{print $14, $15}' "/proc/$p/stat"); u=$((u + a)); s=$((s + b)); done; echo "$u $s"; }
hz=$(getconf CLK_TCK)
# run NAME URL SCRIPT CONNECTIONS PIDS... → "rps p50 p99 p999 errors user_us_per_request sys_us_per_request"
# (the CPU columns are the process under test's own: upstream nginx workers for direct, proxy nginx
# workers for nginx, the gateway for the gateway)
run() {
  local url=$2 script=$3 conns=$4; shift 4
  local before after out
  before=$(ticks "$@")
  out=$(wrk -t2 -c"$conns" -d"${secs}s" -H "x-api-key: tlgw_alice_example_key" -s "$script" "$url" 2>/dev/null |
    awk '/^RESULT/ {print $2, $3, $4, $5, $6}')
  after=$(ticks "$@")
  echo "$out" "$before" "$after" | awk -v hz="$hz" -v secs="$secs" '{n = $1 * secs; if (n < 1) n = 1;
    printf "%s %s %s %s %s %.1f %.1f\n", $1, $2, $3, $4, $5, ($8 - $6) * 1e6 / hz / n, ($9 - $7) * 1e6 / hz / n}'
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A results
bench() { # workload script connections path targets...
  local workload=$1 script=$2 conns=$3 path=$4; shift 4
  for round in $(seq 1 "$rounds"); do
    for target in "$@"; do
      local url procs
      case $target in
        direct) url="http://127.0.0.1:$up$path"; procs=$(pgrep -P "$(cat "$work/upstream.pid")") ;;
        nginx) url="http://127.0.0.1:$nx$path"; procs=$(pgrep -P "$(cat "$work/nginx.pid")") ;;
        gateway) url="http://127.0.0.1:$port_gw$path"; procs=$pid_gw ;;
        gateway+audit) url="http://127.0.0.1:$port_gwa$path"; procs=$pid_gwa ;;
        baseline) url="http://127.0.0.1:$port_base$path"; procs=$pid_base ;;
        nginx-tls) url="https://127.0.0.1:$nxs$path"; procs=$(pgrep -P "$(cat "$work/nginx.pid")") ;;
        gateway-tls) url="https://127.0.0.1:$port_gws$path"; procs=$pid_gws ;;
      esac
      # shellcheck disable=SC2086 # one pid per word
      results["$workload|$target|$round"]=$(run "$target" "$url" "$script" "$conns" $procs)
    done
  done
}
summarise() { # workload targets...
  local workload=$1; shift
  printf '\n%s\n%-14s %10s %9s %9s %9s %7s %12s %12s\n' "$workload" target "req/s" "p50 ms" "p99 ms" "p99.9 ms" errors "user µs/req" "sys µs/req"
  for target in "$@"; do
    local col rows=() line=()
    for round in $(seq 1 "$rounds"); do rows+=("${results["$workload|$target|$round"]}"); done
    for col in 1 2 3 4 5 6 7; do line+=("$(printf '%s\n' "${rows[@]}" | awk -v c=$col '{print $c}' | median)"); done
    printf '%-14s %10s %9s %9s %9s %7s %12s %12s\n' "$target" "${line[@]}"
    printf -v "m_${workload}_${target//[+-]/_}" '%s' "${line[*]}"
  done
}

echo "tl-gateway proxy benchmark — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, ${secs}s per run, median of $rounds interleaved rounds"
bench get "$work/report.lua" 64 "/v1.3/assets?page=1" direct nginx gateway "${baseline[@]}"
bench upload "$work/upload.lua" 16 "/v1.3/assets" direct nginx gateway
bench delete "$work/delete.lua" 64 "" direct nginx gateway gateway+audit "${baseline[@]}"
bench https "$work/report.lua" 64 "/v1.3/assets?page=1" nginx-tls gateway-tls
summarise get direct nginx gateway "${baseline[@]}"
summarise upload direct nginx gateway
summarise delete direct nginx gateway gateway+audit "${baseline[@]}"
summarise https nginx-tls gateway-tls

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
read -r g_rps g_p50 g_p99 _ _ g_user g_sys <<<"$m_get_gateway"; read -r n_rps _ _ _ _ n_user n_sys <<<"$m_get_nginx"; read -r d_rps d_p50 d_p99 _ _ _ _ <<<"$m_get_direct"
echo
echo "small GETs: gateway/nginx throughput ratio $(ratio "$g_rps" "$n_rps"); added latency over direct p50 $(awk -v a="$g_p50" -v b="$d_p50" 'BEGIN{printf "%.3f", a-b}') ms, p99 $(awk -v a="$g_p99" -v b="$d_p99" 'BEGIN{printf "%.3f", a-b}') ms (at full load)"
echo "CPU per small GET: gateway user $g_user + sys $g_sys µs, nginx user $n_user + sys $n_sys µs (gateway/nginx $(awk -v a="$g_user" -v b="$g_sys" -v c="$n_user" -v d="$n_sys" 'BEGIN{printf "%.2f", (a+b)/(c+d)}'))"
read -r ts_rps ts_p50 ts_p99 _ _ ts_user ts_sys <<<"$m_https_gateway_tls"; read -r ns_rps ns_p50 ns_p99 _ _ ns_user ns_sys <<<"$m_https_nginx_tls"
echo "small GETs over HTTPS (keep-alive): gateway/nginx throughput ratio $(ratio "$ts_rps" "$ns_rps"); p50 $ts_p50 vs $ns_p50 ms, p99 $ts_p99 vs $ns_p99 ms; CPU per GET gateway $(awk -v a="$ts_user" -v b="$ts_sys" 'BEGIN{print a+b}') µs, nginx $(awk -v a="$ns_user" -v b="$ns_sys" 'BEGIN{print a+b}') µs; TLS costs the gateway $(awk -v a="$ts_user" -v b="$ts_sys" -v c="$g_user" -v d="$g_sys" 'BEGIN{printf "%.1f", (a+b)-(c+d)}') µs per request"
if [ -n "${BASELINE:-}" ]; then
  read -r b_rps _ _ _ _ b_user b_sys <<<"$m_get_baseline"
  echo "against the baseline ($BASELINE): small GETs gateway/baseline throughput $(ratio "$g_rps" "$b_rps"), baseline/nginx $(ratio "$b_rps" "$n_rps"); CPU per GET gateway $(awk -v a="$g_user" -v b="$g_sys" 'BEGIN{print a+b}') µs, baseline $(awk -v a="$b_user" -v b="$b_sys" 'BEGIN{print a+b}') µs"
fi

# Half of the gateway's maximum GET rate, paced with wrk's delay() hook: each connection waits a
# random whole number of milliseconds (mean D) between requests, so arrivals are spread rather than
# released in step by wrk's millisecond timer; D leaves ~0.4 ms for the answer itself.
half=$(awk -v r="$g_rps" 'BEGIN {printf "%d", r / 2}')
conns=64
mean_ms=$(awk -v c=$conns -v r="$half" 'BEGIN {d = c * 1000 / r - 0.4; if (d < 0.5) d = 0.5; printf "%.2f", d}')
{ echo "delay = function() return math.floor(math.random() * 2 * $mean_ms + 0.5) end"; cat "$work/report.lua"; } > "$work/paced.lua"
for target in direct nginx gateway "${baseline[@]}"; do
  case $target in
    direct) url="http://127.0.0.1:$up/v1.3/assets?page=1" ;;
    nginx) url="http://127.0.0.1:$nx/v1.3/assets?page=1" ;;
    gateway) url="http://127.0.0.1:$port_gw/v1.3/assets?page=1" ;;
    baseline) url="http://127.0.0.1:$port_base/v1.3/assets?page=1" ;;
  esac
  read -r rps _ p99 _ _ <<<"$(run "$target" "$url" "$work/paced.lua" $conns)"
  printf -v "half_$target" '%s %s' "$rps" "$p99"
done
read -r hd_rps hd_p99 <<<"$half_direct"; read -r hn_rps hn_p99 <<<"$half_nginx"; read -r hg_rps hg_p99 <<<"$half_gateway"
added() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.3f", a-b}'; }
echo "half load (target $half req/s, $conns connections, mean ${mean_ms} ms between requests): direct $hd_rps req/s p99 $hd_p99 ms;" \
  "nginx $hn_rps req/s p99 $hn_p99 ms (added $(added "$hn_p99" "$hd_p99") ms); gateway $hg_rps req/s p99 $hg_p99 ms: added p99 $(added "$hg_p99" "$hd_p99") ms"
if [ -n "${BASELINE:-}" ]; then
  read -r hb_rps hb_p99 <<<"$half_baseline"
  echo "half load, baseline: $hb_rps req/s p99 $hb_p99 ms: added p99 $(added "$hb_p99" "$hd_p99") ms"
fi
read -r ga_rps _ _ _ _ <<<"$m_delete_gateway_audit"
echo "audited DELETEs (fsync on, 64 connections): $ga_rps req/s"

# Memory.
echo
echo "idle RSS: $(( idle_rss / 1024 )) MiB ($idle_rss KiB)"
cat > "$work/idle.py" <<'PY'
# idle.py NAME PORT N PIDS... — RSS of PIDS (summed) with N idle keep-alive connections, then after a
# burst of N concurrent requests on them.
import resource, socket, sys, time
name, port, n, pids = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 1024), hard))
request = b"GET /v1.3/assets?page=1 HTTP/1.1\r\nHost: x\r\nx-api-key: tlgw_alice_example_key\r\n\r\n"
def rss():
    return sum(int(next(l.split()[1] for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS:"))) for pid in pids)
def answer(s):
    data = b""
    while not data.endswith(b"}"):
        data += s.recv(65536)
before = rss()
socks = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    # One request per connection, answered before the next connection asks: each ends up a
    # served, idle keep-alive connection (what a fleet of idle SDK clients looks like).
    s.sendall(request)
    answer(s)
    socks.append(s)
time.sleep(1)
idle = rss()
print(f"{name}: RSS {before // 1024} MiB, with {n} idle keep-alive connections {idle // 1024} MiB: {(idle - before) / n:.1f} KiB per idle connection")
# Then all of them at once: the burst opens many upstream connections; what the process keeps after it.
for s in socks:
    s.sendall(request)
for s in socks:
    answer(s)
time.sleep(1)
after = rss()
print(f"{name}: after a burst of {n} concurrent requests on them {after // 1024} MiB: {(after - before) / n:.1f} KiB per connection")
PY
python3 "$work/idle.py" tl-gateway "$port_gw" 10000 "$pid_gw"
if [ -n "${BASELINE:-}" ]; then python3 "$work/idle.py" baseline "$port_base" 10000 "$pid_base"; fi
# shellcheck disable=SC2046 # one pid per word
python3 "$work/idle.py" nginx "$nx" 10000 $(pgrep -P "$(cat "$work/nginx.pid")")

emu=$(free_port)
"$bin" emulator --listen "127.0.0.1:$emu" --api-key "$key" >/dev/null 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$emu/"
start_gateway gwu "http://127.0.0.1:$emu" ""
truncate -s 1G "$work/1g.bin"
base=$(kib "$pid_gwu" VmRSS)
uploads=()
wait_start=$(date +%s)
for i in $(seq 1 16); do
  curl -s -o /dev/null -H "x-api-key: tlgw_alice_example_key" -H 'Expect:' \
    -F method=direct -F filename=big$i.mp4 -F "file=@$work/1g.bin;type=video/mp4" "http://127.0.0.1:$port_gwu/v1.3/assets" &
  uploads+=($!)
done
wait "${uploads[@]}"
peak=$(kib "$pid_gwu" VmHWM)
echo "16 concurrent 1 GiB uploads: RSS before $(( base / 1024 )) MiB, peak $(( peak / 1024 )) MiB ($(( $(date +%s) - wait_start )) s)"
