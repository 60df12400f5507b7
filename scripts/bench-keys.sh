#!/usr/bin/env bash
# How long a key issued through the API on one replica takes to work on another, and a revoked one
# to stop working there (issue #22: "`keys issue` → usable on another replica: p50 and p99").
#
# Starts a PostgreSQL of its own (Debian's postgresql, in a temporary directory), the embedded
# TwelveLabs emulator, and two release gateways (A and B) on that PostgreSQL (store.backend:
# postgres) with one configured admin client. First a smoke test of the command line
# (`tl-gateway clients create` and `keys issue` against A, the key used on B); then N times: create
# a client on A, issue it a key on A (POST /tl-gateway/v1/clients/ID/keys), and poll B with
# `GET /v1.3/assets` and the new key until it answers 200; then revoke the key on A (DELETE …/keys/
# LABEL) and poll B until it answers 401 (key_revoked). Each delay runs from the moment A's answer
# arrived; B is polled every POLL_MS (default 1) over one kept-alive connection. Prints p50, p99 and
# max in ms of each delay and of the two API calls themselves.
#
# Usage: scripts/bench-keys.sh [N]          (default 200)
# Environment: REFRESH=1s sets store.refresh_interval on both replicas (default: the gateway's);
#              POLL_MS=1 the polling interval; TIMEOUT_S=30 how long one wait may take at most.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
n=${1:-200}
poll_ms=${POLL_MS:-1}
timeout_s=${TIMEOUT_S:-30}
refresh=${REFRESH:-}
need=()
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
pgbin=$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)")
cargo build --release --quiet
bin=$PWD/target/release/tl-gateway

work=$(mktemp -d)
chmod 0755 "$work" # the postgres user must reach its directory below
pids=()
pg_started=
# PostgreSQL refuses to run as root: its tools run as the postgres user then.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
  local status=$?
  if [ "$status" -ne 0 ]; then # say why before the logs go
    for f in "$work"/a.log "$work"/b.log "$work/pg/server.log"; do
      if [ -s "$f" ]; then echo "--- $f"; tail -n 20 "$f"; fi
    done
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "$pg_started" ]; then as_pg "$pgbin/pg_ctl" -D "$work/pg/data" -m immediate stop >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# PostgreSQL: data, socket and log in a directory of the postgres user's.
mkdir -p "$work/pg/sock"
[ "$(id -u)" = 0 ] && chown -R postgres "$work/pg"
as_pg "$pgbin/initdb" -D "$work/pg/data" --auth=trust -U postgres >/dev/null
pgport=$(free_port)
as_pg "$pgbin/pg_ctl" -D "$work/pg/data" -w -l "$work/pg/server.log" \
  -o "-p $pgport -k $work/pg/sock -c listen_addresses=127.0.0.1" start >/dev/null
pg_started=1
pg_version=$("$pgbin/postgres" --version | awk '{print $NF}')

upstream_key=bench-upstream-key
printf '%s\n' "$upstream_key" > "$work/upstream-key"
emu=$(free_port)
"$bin" emulator --listen "127.0.0.1:$emu" --api-key "$upstream_key" > /dev/null 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$emu/"

# alice: the configured admin (the key the other bench scripts use, tlgw_alice_example_key).
admin_key=tlgw_alice_example_key
refresh_yaml=
[ -n "$refresh" ] && refresh_yaml="  refresh_interval: $refresh"
start_gateway() { # NAME → port_NAME
  local port admin
  port=$(free_port); admin=$(free_port)
  cat > "$work/$1.yaml" <<YAML
listen: 127.0.0.1:$port
admin_listen: 127.0.0.1:$admin
upstream:
  url: http://127.0.0.1:$emu
  api_key_file: $work/upstream-key
clients:
  - id: alice
    roles: [admin]
    key_sha256: d7488ca6175fed1af2450dea5acac0dc06f2e7a5199459878eca70385645fac6
keys:
  assignable_roles: [member]
store:
  backend: postgres
  postgres:
    url: postgres://postgres@127.0.0.1:$pgport/postgres
$refresh_yaml
YAML
  RUST_LOG=warn "$bin" serve --config "$work/$1.yaml" 2> "$work/$1.log" &
  pids+=($!)
  wait_http "http://127.0.0.1:$admin/healthz"
  printf -v "port_$1" '%s' "$port"
}
# One after the other: the second finds the schema migrated.
start_gateway a
start_gateway b
gw_a=http://127.0.0.1:$port_a
gw_b=http://127.0.0.1:$port_b

# Smoke test of the command line: a client and a key made on A work on B.
run_id=$(date +%s)
TL_GATEWAY_KEY=$admin_key "$bin" clients create "cli-$run_id" --roles member --gateway "$gw_a" > /dev/null
smoke_key=$(TL_GATEWAY_KEY=$admin_key "$bin" keys issue "cli-$run_id" --label smoke --gateway "$gw_a" 2> /dev/null)
case "$smoke_key" in
  tlgw_*) ;;
  *) echo "keys issue printed no key: $smoke_key"; exit 1 ;;
esac
for _ in $(seq 1 $((timeout_s * 20))); do
  code=$(curl -s -o /dev/null -w '%{http_code}' "$gw_b/v1.3/assets" -H "x-api-key: $smoke_key")
  [ "$code" = 200 ] && break
  sleep 0.05
done
[ "$code" = 200 ] || { echo "the key issued by the CLI on A never worked on B (last answer $code)"; exit 1; }

cat > "$work/measure.py" <<'PY'
import http.client, json, math, sys, time

gw_a, gw_b, admin_key, n, poll_ms, timeout_s, run_id = sys.argv[1:8]
n, poll, timeout_s = int(n), int(poll_ms) / 1000.0, float(timeout_s)


class Conn:
    """One kept-alive HTTP/1.1 connection, reopened when the server closes it."""

    def __init__(self, url):
        self.host, self.port = url.split("//", 1)[1].split(":")
        self.conn = None

    def request(self, method, path, key, body=None):
        headers = {"x-api-key": key, "accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["content-type"] = "application/json"
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, int(self.port), timeout=10)
            try:
                self.conn.request(method, path, body=data, headers=headers)
                response = self.conn.getresponse()
                raw = response.read()
                if response.getheader("connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                try:
                    parsed = json.loads(raw) if raw else None
                except ValueError:
                    parsed = None
                return response.status, parsed
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise


def must(what, status, body, want):
    if status != want:
        sys.exit(f"{what}: HTTP {status} {body} (expected {want}; is the clients/keys API in this build?)")


def wait_on_b(b, key, done):
    """Poll B until done(status, body); seconds waited (from now) and the final answer."""
    start = time.perf_counter()
    while True:
        status, body = b.request("GET", "/v1.3/assets", key)
        now = time.perf_counter()
        if done(status, body):
            return now - start, status, body
        if now - start > timeout_s:
            return None, status, body
        time.sleep(poll)


a, b = Conn(gw_a), Conn(gw_b)
issue_call, usable, revoke_call, refused = [], [], [], []
timeouts = {"usable": 0, "refused": 0}
codes = {}
for i in range(n):
    client = f"bench-{run_id}-{i}"
    status, body = a.request("POST", "/tl-gateway/v1/clients", admin_key, {"id": client, "roles": ["member"]})
    must("create client on A", status, body, 201)
    t0 = time.perf_counter()
    status, body = a.request("POST", f"/tl-gateway/v1/clients/{client}/keys", admin_key, {"label": "bench"})
    issue_call.append(time.perf_counter() - t0)
    must("issue key on A", status, body, 201)
    key = body["key"]
    waited, status, body = wait_on_b(b, key, lambda s, _: s == 200)
    if waited is None:
        timeouts["usable"] += 1
        print(f"key {i}: not usable on B after {timeout_s}s (last answer {status} {body})", file=sys.stderr)
        continue
    usable.append(waited)
    t0 = time.perf_counter()
    status, body = a.request("DELETE", f"/tl-gateway/v1/clients/{client}/keys/bench", admin_key)
    revoke_call.append(time.perf_counter() - t0)
    must("revoke key on A", status, body, 200)
    waited, status, body = wait_on_b(b, key, lambda s, _: s == 401)
    if waited is None:
        timeouts["refused"] += 1
        print(f"key {i}: still accepted on B after {timeout_s}s", file=sys.stderr)
        continue
    refused.append(waited)
    code = (body or {}).get("code", "?")
    codes[code] = codes.get(code, 0) + 1


def pct(values, p):
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)] * 1000


print(f"{'':34} {'n':>5} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}")
for name, values in [
    ("keys issue on A (the API call)", issue_call),
    ("issued on A → 200 on B", usable),
    ("keys revoke on A (the API call)", revoke_call),
    ("revoked on A → 401 on B", refused),
]:
    if values:
        print(f"{name:34} {len(values):5} {pct(values, 50):9.1f} {pct(values, 99):9.1f} {max(values) * 1000:9.1f}")
    else:
        print(f"{name:34} {0:5} {'-':>9} {'-':>9} {'-':>9}")
print(f"B's refusals of revoked keys: {', '.join(f'{c} ×{k}' for c, k in sorted(codes.items())) or '-'}")
if any(timeouts.values()):
    print(f"timed out ({timeout_s}s): {timeouts['usable']} never usable on B, {timeouts['refused']} never refused on B")
    sys.exit(1)
if set(codes) - {"key_revoked"}:
    print("B refused a revoked key with a code other than key_revoked")
    sys.exit(1)
PY

echo "tl-gateway keys across replicas — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $n keys, PostgreSQL $pg_version, store.refresh_interval ${refresh:-(default)}, B polled every ${poll_ms} ms"
echo "CLI smoke test: clients create + keys issue on A, the key answered 200 on B"
echo
python3 "$work/measure.py" "$gw_a" "$gw_b" "$admin_key" "$n" "$poll_ms" "$timeout_s" "$run_id"
