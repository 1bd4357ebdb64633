"""Extreme values (SPEC "Timeouts", end; "Binding"; "Service"): timeouts too
large to represent mean no limit, positive ones too small to measure fire at
once, a closed connection's timers leave with it, queue sizes of any size are
accepted, and sizes past what the machine can address fail the same way on
every backend.

Waits that could hang (a collector stuck in an endless poll) run in a child
process with a bounded wait.
"""

import gc
import json
import math
import socket
import sys
import time
import weakref

import pytest

from goaio import AIOConnOption, RecvTimeout, SendTimeout, _messages
from support import WAIT, collect_one, run_python

HUGE = [math.inf, 1e10, 1e12, 10 ** 400, 2 ** 63]
TINY = [5e-10, 1e-10, 1e-300, 5e-324]


def vid(value):
    return "10**400" if value == 10 ** 400 else repr(value)

CHILD = r"""
import importlib, json, math, socket, sys, time
mod = importlib.import_module("goaio._" + sys.argv[1])
HUGE = [math.inf, 1e10, 1e12, 10 ** 400, 2 ** 63]
what = sys.argv[2]
svc = mod.AIOService()
out = []


def pair():
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen()
    peer = socket.create_connection(lst.getsockname())
    sock, _ = lst.accept()
    lst.close()
    return sock, peer


def fill(conn, peer):
    # a send that stays pending: more than the socket buffers hold
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    conn.send("big", bytearray(32 << 20))


keep = []
for i, v in enumerate(HUGE):
    sock, peer = pair()
    keep.append(peer)
    conn = svc.bind(sock)
    if what == "recv":
        conn.set_recv_timeout(v)
        conn.recv(("r", i), bytearray(8))
    else:
        fill(conn, peer)
        conn.set_send_timeout(v)
    # no limit: nothing completes, and a short collect still returns on time
    t0 = time.monotonic()
    res = svc.get_complete_status(timeout=0.3)
    out.append([repr(v)[:12], None if res is None else repr(res.err), round(time.monotonic() - t0, 3)])
# the other connections' timeouts still fire
sock, peer = pair()
keep.append(peer)
conn = svc.bind(sock)
conn.set_recv_timeout(0.2)
conn.recv("short", bytearray(8))
res = svc.get_complete_status(timeout=5)
out.append(["short", None if res is None else type(res.err).__name__, res is not None and res.context])
print("RESULT " + json.dumps(out), flush=True)
svc.close()
"""


@pytest.mark.parametrize("what", ["recv", "send"])
def test_timeouts_too_large_mean_no_limit(backend, what):
    proc = run_python(CHILD, argv=[backend.name, what], timeout=WAIT * 3)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, (proc.stdout, proc.stderr)
    out = json.loads(lines[0][len("RESULT "):])
    for value, err, took in out[:-1]:
        assert err is None, f"timeout {value}: completed at once with {err}"
        assert took < 0.3 + 2.0, f"timeout {value}: get_complete_status(timeout=0.3) took {took}s"
    assert out[-1] == ["short", "RecvTimeout", "short"], out[-1]


@pytest.mark.parametrize("value", TINY, ids=vid)
def test_tiny_recv_timeout_fires_at_once(backend, svc, pairs, value):
    sock, peer = pairs("tcp")
    conn = svc.bind(sock)
    conn.set_recv_timeout(value)
    t0 = time.monotonic()
    conn.recv("r", bytearray(8))
    res = collect_one(svc)
    assert isinstance(res.err, RecvTimeout), res
    assert str(res.err) == _messages.RECV_TIMEOUT
    assert time.monotonic() - t0 < 2.0
    # and set on a pending receive: it fires at once too
    conn.set_recv_timeout(None)
    conn.recv("r2", bytearray(8))
    assert svc.get_complete_status(timeout=0.1) is None
    conn.set_recv_timeout(value)
    res = collect_one(svc)
    assert res.context == "r2" and isinstance(res.err, RecvTimeout), res
    conn.close()


@pytest.mark.parametrize("value", TINY, ids=vid)
def test_tiny_send_timeout_fires_at_once(backend, svc, pairs, value):
    sock, peer = pairs("tcp")
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    conn = svc.bind(sock)
    conn.set_send_timeout(value)
    conn.send("big", bytearray(32 << 20))
    res = collect_one(svc)
    assert res.context == "big" and isinstance(res.err, SendTimeout), res
    assert str(res.err) == _messages.SEND_TIMEOUT
    assert res.bytes_transferred < 32 << 20
    conn.close()


@pytest.mark.parametrize("value", HUGE, ids=vid)
def test_collect_timeout_too_large_waits_for_the_result(backend, svc, pairs, value):
    sock, peer = pairs("tcp")
    conn = svc.bind(sock)
    conn.recv("r", bytearray(8))
    peer.sendall(b"hi")
    res = svc.get_complete_status(timeout=value)
    assert res is not None and res.context == "r" and res.err is None, res
    conn.recv("r2", bytearray(8))
    peer.sendall(b"yo")
    got = svc.get_complete_statuses(4, timeout=value)
    assert [r.context for r in got] == ["r2"], got
    conn.close()


@pytest.mark.parametrize("value", [5e-10, 1e-10, 5e-324])
def test_collect_timeout_too_small_returns_at_once(backend, svc, value):
    t0 = time.monotonic()
    assert svc.get_complete_status(timeout=value) is None
    assert svc.get_complete_statuses(4, timeout=value) == []
    assert time.monotonic() - t0 < 2.0


class CountingShare:
    """A share_buff; weakly referenced to see when goaio lets go of it."""

    def acquire(self):
        return bytearray(64)

    def release(self, buff):
        pass


def test_closed_connections_timers_leave_with_them(backend, svc, pairs):
    """Closing a connection whose op had a one-hour timeout drops its timer
    entry, its record and its share_buff at once (not at the deadline)."""
    n = 1500
    refs = []
    for i in range(n):
        sock, peer = pairs("unix") if hasattr(socket, "AF_UNIX") else pairs("tcp")
        share = CountingShare()
        refs.append(weakref.ref(share))
        conn = svc.bind(sock, share_buff=share)
        del share
        conn.set_recv_timeout(3600)
        conn.recv(i, None)
        conn.close()
        peer.close()
        if i % 100 == 99:
            while svc.get_complete_statuses(256, timeout=0):
                pass
    while svc.get_complete_statuses(256, timeout=0):
        pass
    del conn
    state = {}

    def gone():
        # (a poll round may hold a record for a moment)
        gc.collect()
        state["timers"] = svc._stats()["timers"]
        state["alive"] = sum(r() is not None for r in refs)
        return state["timers"] == 0 and state["alive"] == 0

    deadline = time.monotonic() + WAIT
    while not gone() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert state["timers"] == 0, f"{state['timers']} timer entries left by {n} closed connections"
    assert state["alive"] == 0, f"{state['alive']} share_buffs of closed connections still alive"


def test_queue_sizes_of_any_size_bind(backend, svc, pairs):
    for size in (2 ** 31 - 1, 2 ** 31, 2 ** 32, 2 ** 63, 2 ** 80):
        sock, peer = pairs("tcp")
        conn = svc.bind(sock, AIOConnOption(recvq_size=size, sendq_size=size))
        conn.recv("r", bytearray(4))
        conn.send("s", b"ping")
        peer.sendall(b"pong")
        got = {collect_one(svc).context, collect_one(svc).context}
        assert got == {"r", "s"}
        conn.close()
    # still out of range below 1
    with pytest.raises(ValueError):
        AIOConnOption(recvq_size=0)


def test_max_results_past_maxsize(backend, svc):
    assert svc.get_complete_statuses(sys.maxsize, timeout=0) == []
    for value in (sys.maxsize + 1, 2 ** 63, 2 ** 200):
        with pytest.raises(OverflowError) as info:
            svc.get_complete_statuses(value, timeout=0)
        assert str(info.value) == _messages.TOO_LARGE.format("max_results", sys.maxsize, value)


def test_buffer_size_past_maxsize(backend):
    pool = backend.BufferPool(sys.maxsize)     # representable: made lazily, never acquired here
    assert pool.buffer_size == sys.maxsize
    for value in (sys.maxsize + 1, 2 ** 70):
        with pytest.raises(OverflowError) as info:
            backend.BufferPool(value)
        assert str(info.value) == _messages.TOO_LARGE.format("buffer_size", sys.maxsize, value)
