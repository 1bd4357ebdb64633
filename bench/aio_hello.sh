#!/bin/bash
# aiohttp "Hello, World!" under wrk on one loop kind: rps and the server's
# CPU per request (utime+stime from /proc/PID/stat over the measured run /
# the requests wrk counted), after a 1 s warm-up. README, "Figures against
# uvloop". Loopback only.
#
#   bench/aio_hello.sh KIND PORT [SECONDS] [PYTHON]
#       KIND: goaio-epoll | goaio-pure | uvloop | asyncio
#       PYTHON: an interpreter with aiohttp (and uvloop); PYTHONPATH = the
#       goaio to measure (an in-place build), the server runs with -P
#   CALLGRIND=1 bench/aio_hello.sh ...
#       user-space instructions per request instead (valgrind's callgrind,
#       collection switched on after the warm-up; use wrk -c10: the server
#       is ~50x slower under valgrind and wrk must not time out)
#
# Example, the three kinds alternating, under the machine's bench lock:
#   for k in goaio-epoll uvloop asyncio; do
#       PYTHONPATH=$PWD flock /tmp/goaio-bench.lock bench/aio_hello.sh $k 18500 5 /tmp/venv/bin/python
#   done
set -u
KIND=$1; PORT=$2; SECS=${3:-5}; PY=${4:-python}
CONNS=${CONNS:-50}; THREADS=${THREADS:-2}
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
cd /tmp || exit 1
if [ -n "${CALLGRIND:-}" ]; then
    CG=$(mktemp -u /tmp/aio_hello.cg.XXXXXX)
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$CG.%p" \
        "$PY" -P -m goaio._bench.aio_echo "$KIND" hello "$PORT" > "$OUT" 2>&1 &
else
    "$PY" -P -m goaio._bench.aio_echo "$KIND" hello "$PORT" > "$OUT" 2>&1 &
fi
PID=$!
for _ in $(seq 1800); do grep -q listening "$OUT" && break; sleep 0.1; done
grep -q listening "$OUT" || { echo "$KIND: the server did not start"; cat "$OUT"; kill $PID; exit 1; }
wrk -t"$THREADS" -c"$CONNS" -d1s "http://127.0.0.1:$PORT/" > /dev/null 2>&1     # warm-up
if [ -n "${CALLGRIND:-}" ]; then
    callgrind_control -i on $PID > /dev/null 2>&1
    res=$(wrk -t"$THREADS" -c"$CONNS" -d"${SECS}s" --timeout 30s "http://127.0.0.1:$PORT/")
    callgrind_control -i off $PID > /dev/null 2>&1
    callgrind_control -d $PID > /dev/null 2>&1
else
    read -r -a st < /proc/$PID/stat; t0=$((st[13] + st[14]))
    res=$(wrk -t"$THREADS" -c"$CONNS" -d"${SECS}s" "http://127.0.0.1:$PORT/")
    read -r -a st < /proc/$PID/stat; t1=$((st[13] + st[14]))
fi
kill -INT $PID; sleep 0.5; kill $PID 2> /dev/null; wait $PID 2> /dev/null
req=$(echo "$res" | awk '/requests in/ {print $1}')
rps=$(echo "$res" | awk '/Requests\/sec/ {print $2}')
err=$(echo "$res" | grep -E "Socket errors|Non-2xx" | tr -s ' ')
load=$(cut -d' ' -f1-3 /proc/loadavg)
if [ -n "${CALLGRIND:-}" ]; then
    f=$(ls -t "$CG".*.1 2> /dev/null | head -1)
    ir=$(callgrind_annotate "$f" 2> /dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    rm -f "$CG".*
    echo "$KIND requests=$req Ir/request=$((ir / req)) load=$load $err"
else
    us=$(awk -v t=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v n="$req" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
    echo "$KIND rps=$rps requests=$req cpu_us/request=$us load=$load $err"
fi
