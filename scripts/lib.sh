# Shared helpers for the measurement scripts (sourced, not run).

# A free loopback port.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

# Wait (bounded) until URL answers.
wait_http() { for _ in $(seq 1 200); do curl -s -o /dev/null "$1" && return 0; sleep 0.05; done; echo "no answer from $1"; exit 1; }

# A /proc/PID/status field in KiB (VmRSS, VmHWM).
kib() { awk -v k="$2" '$1==k":" {print $2}' "/proc/$1/status"; }
