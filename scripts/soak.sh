#!/usr/bin/env bash
# Soak test: a release gateway in front of the emulator under a mixed workload (reads, 256 KiB
# uploads, permitted deletes, denied forced deletes, 409 plain deletes) with audit on, for DURATION
# (seconds, or with a unit: 90s, 10m). Samples the gateway's RSS and open fds; exits non-zero on
# growth after warm-up or on any unexpected answer.
#
# Usage: scripts/soak.sh [DURATION]   (default 10m)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
duration=${1:-10m}
case "$duration" in
  *m) seconds=$(( ${duration%m} * 60 )) ;;
  *s) seconds=${duration%s} ;;
  *) seconds=$duration ;;
esac

cargo build --release --quiet
bin=target/release/tl-gateway
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

key=soak-upstream-key
printf '%s\n' "$key" > "$work/key"
emu_port=$(free_port)
"$bin" emulator --listen "127.0.0.1:$emu_port" --api-key "$key" --seed > "$work/emulator.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$emu_port/"
# The seeded asset that indexed assets reference (the emulator lists newest first).
referenced=$(curl -s -H "x-api-key: $key" "http://127.0.0.1:$emu_port/v1.3/assets?page_limit=50" |
  python3 -c 'import json,sys; print(next(a["_id"] for a in json.load(sys.stdin)["data"] if a["filename"]=="keynote-2025.mp4"))')

port=$(free_port); admin=$(free_port)
cat > "$work/gw.yaml" <<YAML
listen: 127.0.0.1:$port
admin_listen: 127.0.0.1:$admin
upstream:
  url: http://127.0.0.1:$emu_port
  api_key_file: $work/key
clients:
  - id: alice
    roles: [admin]
    key_sha256: d7488ca6175fed1af2450dea5acac0dc06f2e7a5199459878eca70385645fac6
  - id: bob
    roles: [member]
    key_sha256: 7d57a37f514defd6a6e7361ae2b3be5af72dad6d06820f70fd62ed46e768f531
policy:
  rules:
    - id: force-delete-admins-only
      match: { method: DELETE, path: "/v1.3/assets/{asset_id}", query: { force: true } }
      allow_roles: [admin]
audit:
  path: $work/audit.jsonl
YAML
RUST_LOG=warn "$bin" serve --config "$work/gw.yaml" 2> "$work/gateway.log" &
gw=$!; pids+=("$gw")
wait_http "http://127.0.0.1:$admin/healthz"
echo "soak: ${seconds}s against the emulator through tl-gateway (pid $gw)"
python3 scripts/soak.py "127.0.0.1:$port" "$gw" "$seconds" tlgw_alice_example_key tlgw_bob_example_key "$referenced"
"$bin" audit verify "$work/audit.jsonl"
