#!/usr/bin/env bash
# Streams a 1 GiB upload and a 1 GiB download through a release build of tl-gateway and prints how
# much the gateway's resident memory grew (peak RSS during the transfer minus RSS before it).
# Goal (issue 2): growth < 64 MiB for each direction.
#
# Usage: scripts/stream-memory.sh [SIZE_MIB]   (default 1024)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
size_mib=${1:-1024}
limit_mib=64
command -v curl >/dev/null || { echo "curl is required (apt-get install -y curl)"; exit 1; }

cargo build --release --quiet
bin=target/release/tl-gateway
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT


upstream_key=bench-upstream-key
printf '%s\n' "$upstream_key" > "$work/key"
alice=tlgw_alice_example_key

start_gateway() { # $1 = upstream url → sets gw_pid, gw_url
  local port admin
  port=$(free_port); admin=$(free_port)
  cat > "$work/gw.yaml" <<YAML
listen: 127.0.0.1:$port
admin_listen: 127.0.0.1:$admin
upstream:
  url: $1
  api_key_file: $work/key
clients:
  - id: alice
    roles: [admin]
    key_sha256: d7488ca6175fed1af2450dea5acac0dc06f2e7a5199459878eca70385645fac6
YAML
  RUST_LOG=warn "$bin" serve --config "$work/gw.yaml" 2>"$work/gw.log" &
  gw_pid=$!; pids+=("$gw_pid")
  gw_url="http://127.0.0.1:$port"
  wait_http "http://127.0.0.1:$admin/healthz"
}

report() { # $1 = label, $2 = pid, $3 = baseline KiB, $4 = bytes moved, $5 = seconds
  local peak growth
  peak=$(kib "$2" VmHWM)
  growth=$(( (peak - $3) / 1024 ))
  printf '%-9s %6d MiB moved in %5.1fs  RSS before %4d MiB  peak %4d MiB  growth %3d MiB  (limit %d) %s\n' \
    "$1" $(( $4 / 1048576 )) "$5" $(( $3 / 1024 )) $(( peak / 1024 )) "$growth" "$limit_mib" \
    "$([ "$growth" -lt "$limit_mib" ] && echo PASS || echo FAIL)"
  [ "$growth" -lt "$limit_mib" ]
}

truncate -s "${size_mib}M" "$work/upload.bin"
ok=0

# Upload: official-SDK-shaped multipart direct upload to the emulator, streamed by curl from disk.
emu_port=$(free_port)
"$bin" emulator --listen "127.0.0.1:$emu_port" --api-key "$upstream_key" >/dev/null 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$emu_port/"
start_gateway "http://127.0.0.1:$emu_port"
curl -s -o /dev/null -H "x-api-key: $alice" "$gw_url/v1.3/assets"   # warm the connection pool
base=$(kib "$gw_pid" VmRSS)
start=$(date +%s.%N)
code=$(curl -s -o "$work/upload.json" -w '%{http_code}' -H "x-api-key: $alice" -H 'Expect:' \
  -F method=direct -F filename=big.mp4 -F "file=@$work/upload.bin;type=video/mp4" "$gw_url/v1.3/assets")
secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN{print b-a}')
[ "$code" = 201 ] || { echo "upload failed: HTTP $code $(cat "$work/upload.json")"; exit 1; }
report upload "$gw_pid" "$base" $(( size_mib * 1048576 )) "$secs" || ok=1
kill "$gw_pid"; wait "$gw_pid" 2>/dev/null || true

# Download: a static file server stands in for a large upstream response.
mkdir -p "$work/www/v1.3/assets"
truncate -s "${size_mib}M" "$work/www/v1.3/assets/6298d673f1090f1100476d4c"
www_port=$(free_port)
python3 -m http.server "$www_port" --bind 127.0.0.1 --directory "$work/www" >/dev/null 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$www_port/"
start_gateway "http://127.0.0.1:$www_port"
curl -s -o /dev/null -H "x-api-key: $alice" "$gw_url/v1.3/assets"
base=$(kib "$gw_pid" VmRSS)
start=$(date +%s.%N)
bytes=$(curl -s -o /dev/null -w '%{size_download}' -H "x-api-key: $alice" "$gw_url/v1.3/assets/6298d673f1090f1100476d4c")
secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN{print b-a}')
[ "$bytes" = $(( size_mib * 1048576 )) ] || { echo "download incomplete: $bytes bytes"; exit 1; }
report download "$gw_pid" "$base" "$bytes" "$secs" || ok=1
exit $ok
