#!/bin/bash
# User-space instructions per HTTP request of examples/http_server.py (every
# thread), counted by callgrind under wrk -t1 -c50: the difference of a 12 s
# run and a 4 s run, divided by the difference of the requests wrk counted
# (start-up and shut-down cancel out). Under valgrind the server runs ~50x
# slower and its poll rounds bring fewer events than at full speed, so the
# count is for before/after comparisons of one backend, not an absolute.
#   bench/callgrind/http_instructions.sh BACKEND [PORT]     # BACKEND: pure | epoll
# Run from the checkout (after python setup.py build_ext --inplace for epoll).
BACKEND=${1:?usage: http_instructions.sh pure|epoll [PORT]}
PORT=${2:-18181}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PY=$(python -c 'import sys; print(sys.executable)')   # the real binary, not a shim
ir=(); req=()
for D in 4 12; do
  f=$(mktemp /tmp/cg_http.XXXXXX)
  PYTHONPATH=$ROOT valgrind --tool=callgrind --callgrind-out-file=$f.out \
    "$PY" "$ROOT/examples/http_server.py" "$PORT" --backend "$BACKEND" > $f.log 2>&1 &
  pid=$!
  for i in $(seq 300); do grep -q listening $f.log 2>/dev/null && break; sleep 0.1; done
  req+=($(wrk -t1 -c50 -d${D}s "http://127.0.0.1:$PORT/" | awk '/requests in/{print $1}'))
  kill -TERM $pid; wait $pid
  ir+=($(grep -m1 '^summary:\|^totals:' $f.out | awk '{print $2}'))
  rm -f $f $f.log $f.out
done
echo "$BACKEND: ${req[*]} requests; instructions per request = $(( (ir[1] - ir[0]) / (req[1] - req[0]) ))"
