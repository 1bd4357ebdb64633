#!/bin/bash
# The HTTP example servers under wrk, side by side: rps and the server's user
# and system CPU per request (utime and stime from /proc/PID/stat over the
# measured run, divided by the requests wrk counted), after a 1 s warm-up.
# Rounds alternate between the servers. README, "Issue 13 (2026-12-07)".
# Loopback only.
#
#   bench/http_cpu.sh PORT ROUNDS SECONDS NAME=COMMAND...
#       COMMAND: a server listening on PORT (written {port}) that prints a
#       line with "listening" when ready and ends on SIGTERM
#
# The pure backend against asyncio, from a checkout, under the bench lock:
#   flock /tmp/goaio-bench.lock bench/http_cpu.sh 18080 4 4 \
#       "pure=env PYTHONPATH=$PWD python examples/http_server.py {port} --backend pure" \
#       "asyncio=python goaio/_bench/http_peers.py asyncio --port {port}"
set -u
if [ $# -lt 4 ]; then
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
PORT=$1 ROUNDS=$2 SECS=$3
shift 3
command -v wrk >/dev/null || { echo "http_cpu.sh: wrk not found" >&2; exit 2; }
tick=$(getconf CLK_TCK)
log=$(mktemp /tmp/http_cpu.XXXXXX)
trap 'rm -f "$log"' EXIT

one() {     # NAME COMMAND
    local name=$1 cmd=${2//\{port\}/$PORT} pid u0 s0 u1 s1 out req rps i
    $cmd > "$log" 2>&1 &
    pid=$!
    for i in $(seq 100); do grep -q listening "$log" && break; sleep 0.1; done
    if ! grep -q listening "$log"; then
        echo "$name: did not start: $(head -c 300 "$log")" >&2
        kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null
        return 1
    fi
    wrk -t2 -c50 -d1s "http://127.0.0.1:$PORT/" > /dev/null 2>&1
    read -r u0 s0 < <(awk '{print $14, $15}' /proc/$pid/stat)
    out=$(wrk -t2 -c50 -d"${SECS}"s "http://127.0.0.1:$PORT/" 2>&1)
    read -r u1 s1 < <(awk '{print $14, $15}' /proc/$pid/stat)
    kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null
    req=$(echo "$out" | awk '/requests in/{print $1}')
    rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
    awk -v n="$name" -v r="${req:-0}" -v rps="${rps:-0}" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v hz="$tick" 'BEGIN {
        if (r == 0) { printf "%-10s no requests\n", n; exit 1 }
        printf "%-10s rps %9.0f  user %5.2f  sys %5.2f  cpu %5.2f us/request\n", n, rps,
               u * 1e6 / hz / r, s * 1e6 / hz / r, (u + s) * 1e6 / hz / r }'
}

for r in $(seq "$ROUNDS"); do
    for spec in "$@"; do
        one "${spec%%=*}" "${spec#*=}"
    done
done
