#!/usr/bin/env bash
# Measures keyway's resident memory on loopback: at rest, with 10,000 idle
# clients, and with 1,000 clients that pipeline GETs of a 16 KiB value and
# never read their replies. Stops every process it started, by PID.
#
#   scripts/memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --quiet
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# shellcheck source=scripts/lib.sh
source scripts/lib.sh

RP=$(free_port)
start_redis "$RP"
redis-cli -p "$RP" SET user:big "$(head -c 16384 /dev/zero | tr '\0' x)" >/dev/null

KW=$(free_port)
cat > "$work/keyway.toml" <<TOML
[server]
max_clients = 20000
client_output_limit_bytes = 1048576
client_output_stall_secs = 30
[pools.cache]
url = "redis://127.0.0.1:$RP"
[routes]
default = "cache"
TOML
KEYWAY_LISTEN=127.0.0.1:$KW KEYWAY_ADMIN=127.0.0.1:$(free_port) KEYWAY_LOG=warn \
  ./target/release/keyway --config "$work/keyway.toml" 2>"$work/keyway.log" &
KW_PID=$!
pids+=($KW_PID)
wait_port "$KW"
rss() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$KW_PID/status"; }
echo "keyway RSS at rest: $(rss) MiB"

python3 - "$KW" "$KW_PID" <<'PY'
import socket, sys, time
port, pid = int(sys.argv[1]), sys.argv[2]
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
idle = []
for _ in range(10_000):
    s = socket.create_connection(("127.0.0.1", port))
    idle.append(s)
# Each idle client answers a PING once, so keyway has really set it up.
for s in idle[::100]:
    s.sendall(b"PING\r\n"); s.recv(16)
time.sleep(1)
print(f"keyway RSS with 10,000 idle clients: {rss():.1f} MiB")
for s in idle:
    s.close()
time.sleep(1)
hostile = []
req = b"*2\r\n$3\r\nGET\r\n$8\r\nuser:big\r\n" * 512
for _ in range(1000):
    s = socket.create_connection(("127.0.0.1", port))
    s.setblocking(False)
    hostile.append(s)
deadline = time.time() + 10
while time.time() < deadline:
    for s in hostile:
        try:
            s.send(req)
        except (BlockingIOError, OSError):
            pass
    time.sleep(0.05)
print(f"keyway RSS with 1,000 clients not reading 16 KiB replies: {rss():.1f} MiB")
PY
echo "keyway RSS after they left: $(rss) MiB"
