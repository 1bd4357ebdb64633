#!/bin/bash
# Instructions per echo round trip (user space, every thread of the server),
# counted by callgrind: the difference of a run of 24 000 round trips and one
# of 4 000, divided by 20 000 (start-up and shut-down cancel out). Load on the
# machine does not move the count.
#   bench/callgrind/instructions_per_rt.sh CONNS MSG [share] [nbytes]
# Needs valgrind and the yardstick client: gcc -O2 -o /tmp/loadgen loadgen.c
# (../shared/yardstick, or goaio/_bench/loadgen.c with its own arguments).
# Run from the checkout after python setup.py build_ext --inplace.
CONNS=$1 MSG=$2; shift 2
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PY=$(python -c 'import sys; print(sys.executable)')   # the real binary, not a shim
LOADGEN=${LOADGEN:-/tmp/loadgen}
port=$((20000 + RANDOM % 5000))
out=()
for N in 4000 24000; do
  f=$(mktemp /tmp/cg_rt.XXXXXX)
  PYTHONPATH=$ROOT valgrind --tool=callgrind --callgrind-out-file=$f.out \
    "$PY" "$HERE/spec_echo.py" $port "$@" $N > $f.log 2>&1 &
  pid=$!
  for i in $(seq 300); do grep -q listening $f.log 2>/dev/null && break; sleep 0.1; done
  $LOADGEN 127.0.0.1 $port $CONNS $MSG 600 > /dev/null 2>&1 &
  lg=$!
  wait $pid
  kill $lg 2>/dev/null; wait $lg 2>/dev/null
  out+=($(grep -m1 '^summary:\|^totals:' $f.out | awk '{print $2}'))
  rm -f $f $f.log $f.out
  port=$((port + 1))
done
echo "$CONNS x $MSG $*: instructions per round trip = $(( (out[1] - out[0]) / 20000 ))"
