"""svc.stats() and pool.stats() (SPEC "Introspection")."""

import math
import socket
import threading
import time

import pytest

import goaio
from goaio import _messages as M
from lifecycle_support import blackhole, peers  # noqa: F401 - fixtures
from support import (
    LINUX,
    WAIT,
    Reader,
    collect,
    collect_one,
    fd_count,
    recv_exactly,
    wait_until,
)

MIB = 1 << 20
GAUGES = ("connections", "listeners", "pending_recv", "pending_send", "pending_accept",
          "pending_connect", "queued_results", "timers")
COUNTERS = ("ops_completed", "bytes_received", "bytes_sent", "accepted", "polls")


def _check_shape(st):
    assert isinstance(st, dict)
    assert set(st) == set(M.STATS_KEYS)
    assert len(st) == len(M.STATS_KEYS)
    for k, v in st.items():
        assert type(v) is int, (k, v)
        assert v >= 0, (k, v)


def test_stats_keys_are_exactly_the_shared_ones(backend, svc):
    assert M.STATS_KEYS == (
        "connections", "listeners", "pending_recv", "pending_send", "pending_accept",
        "pending_connect", "queued_results", "timers", "threads",
        "ops_completed", "bytes_received", "bytes_sent", "accepted", "polls")
    _check_shape(svc.stats())


def test_stats_of_a_fresh_service(backend):
    svc = backend.AIOService(workers=3)
    try:
        st = svc.stats()
        _check_shape(st)
        for k in GAUGES + COUNTERS[:-1]:
            assert st[k] == 0, (k, st)
        assert st["threads"] == 3
    finally:
        svc.close()


def test_stats_returns_a_fresh_dict(backend, svc):
    a = svc.stats()
    a["connections"] = 99
    assert svc.stats()["connections"] == 0


@pytest.mark.skipif(not LINUX, reason="the never-answering connect target needs Linux")
def test_stats_after_known_actions(backend, svc, bind, pairs, peers, blackhole):
    ln = peers.keep(svc.listen(("127.0.0.1", 0)))
    quiet, _qpeer = pairs()
    busy, _bpeer = pairs(small=True)
    c1 = bind(quiet)
    c2 = bind(busy)
    for i in range(3):
        c1.recv(("r", i), bytearray(16))
    c2.send("blocked", b"x" * (8 * MIB))   # the peer never reads
    ln.accept("a1")
    ln.accept("a2")
    target = blackhole("tcp")
    svc.connect("hang", target.address)    # no timeout: no timer
    time.sleep(0.1)
    st = svc.stats()
    _check_shape(st)
    assert st["listeners"] == 1
    assert st["connections"] == 2
    assert st["pending_recv"] == 3
    assert st["pending_send"] == 1
    assert st["pending_accept"] == 2
    assert st["pending_connect"] == 1
    assert st["queued_results"] == 0
    assert st["timers"] == 0
    assert st["threads"] >= 1
    ln.close()
    collect(svc, 2)
    st = svc.stats()
    assert st["listeners"] == 0 and st["pending_accept"] == 0
    c1.close()
    collect(svc, 3)
    st = svc.stats()
    assert st["connections"] == 1 and st["pending_recv"] == 0 and st["pending_send"] == 1


def test_stats_queued_results(backend, svc, connect):
    conn, peer = connect()
    for i in range(3):
        conn.send(i, b"abc")
    wait_until(lambda: svc.stats()["queued_results"] == 3, msg="3 queued results")
    assert recv_exactly(peer, 9) == b"abc" * 3
    collect(svc, 2)
    assert svc.stats()["queued_results"] == 1
    collect(svc, 1)
    assert svc.stats()["queued_results"] == 0


def test_stats_timers(backend, svc, connect):
    conn, peer = connect()
    assert svc.stats()["timers"] == 0
    conn.set_recv_timeout(30)
    conn.recv("r1", bytearray(4))
    assert svc.stats()["timers"] == 1
    conn.recv("r2", bytearray(4))
    assert svc.stats()["timers"] == 2
    peer.sendall(b"1234")
    assert collect_one(svc).context == "r1"
    wait_until(lambda: svc.stats()["timers"] == 1, msg="one timer left")
    conn.set_recv_timeout(0)                 # disarmed
    assert svc.stats()["timers"] == 0
    conn.set_recv_timeout(30)
    assert svc.stats()["timers"] == 1
    conn.close()
    collect_one(svc)
    assert svc.stats()["timers"] == 0        # a closed connection's timers leave with it


@pytest.mark.skipif(not LINUX, reason="the never-answering connect target needs Linux")
def test_stats_connect_timer_and_pending_connect(backend, svc, blackhole):
    target = blackhole("tcp")
    svc.connect("c", target.address, timeout=0.5)
    st = svc.stats()
    assert st["pending_connect"] == 1
    assert st["timers"] == 1
    res = collect_one(svc)
    assert type(res.err) is goaio.ConnectTimeout
    st = svc.stats()
    assert st["pending_connect"] == 0 and st["timers"] == 0 and st["connections"] == 0


@pytest.mark.skipif(not LINUX, reason="the never-answering connect target needs Linux")
def test_connect_with_infinite_timeout_arms_no_timer(backend, svc, blackhole):
    target = blackhole("tcp")
    svc.connect("c", target.address, timeout=math.inf)
    st = svc.stats()
    assert st["pending_connect"] == 1 and st["timers"] == 0
    assert svc.get_complete_status(timeout=0.3) is None


def test_stats_counters_after_a_known_exchange(backend, svc, connect):
    conn, peer = connect()
    before = svc.stats()
    buf = bytearray(500)
    conn.recv_full("r", buf)
    time.sleep(0.05)                          # the receive waits: a poll must see the data
    peer.sendall(b"y" * 500)
    conn.send("s", b"z" * 1000)
    assert recv_exactly(peer, 1000) == b"z" * 1000
    collect(svc, 2)
    after = svc.stats()
    assert after["ops_completed"] - before["ops_completed"] == 2
    assert after["bytes_received"] - before["bytes_received"] == 500
    assert after["bytes_sent"] - before["bytes_sent"] == 1000
    assert after["accepted"] == before["accepted"]
    assert after["polls"] - before["polls"] >= 1


def test_stats_counters_of_accepts_and_connects(backend, svc, peers):
    ln = peers.keep(svc.listen(("127.0.0.1", 0)))
    before = svc.stats()
    ln.accept("a1")
    ln.accept("a2")
    svc.connect("c1", ln.address)
    svc.connect("c2", ln.address)
    for r in collect(svc, 4):
        assert r.err is None, r.err
        peers.keep(r.conn)
    after = svc.stats()
    assert after["accepted"] - before["accepted"] == 2
    assert after["ops_completed"] - before["ops_completed"] == 4
    assert after["connections"] == 4
    assert after["pending_accept"] == 0 and after["pending_connect"] == 0


def test_stats_count_every_result_already_taken(backend, svc, peers):
    # a result taken from the queue is counted in ops_completed by then (the
    # pure backend's listener and connect queued theirs before counting: a
    # collector could take one and read the old count, which failed a CI run)
    ln = peers.keep(svc.listen(("127.0.0.1", 0), backlog=512))
    before = svc.stats()["ops_completed"]
    taken = 0
    for _ in range(150):
        ln.accept("a")
        svc.connect("c", ln.address)
        for r in collect(svc, 2):
            assert r.err is None, r.err
            taken += 1
            assert svc.stats()["ops_completed"] - before >= taken
            r.conn.close()
    # the closes completed nothing (no operation was pending)
    assert svc.stats()["ops_completed"] - before == taken == 300


def test_stats_count_failed_operations_as_completed(backend, svc, connect):
    conn, _peer = connect()
    before = svc.stats()["ops_completed"]
    conn.recv("r", bytearray(4))
    conn.close()
    collect_one(svc)
    assert svc.stats()["ops_completed"] - before == 1


# ---------------------------------------------------------------- pool

def _check_pool(st, pool):
    assert set(st) == set(M.POOL_STATS_KEYS) and len(st) == len(M.POOL_STATS_KEYS)
    for k, v in st.items():
        assert type(v) is int, (k, v)
    assert st["buffers"] == st["free"] + st["out"]
    assert st["buffer_size"] == pool.buffer_size


def test_pool_stats(backend):
    pool = backend.BufferPool(1024)
    st = pool.stats()
    _check_pool(st, pool)
    assert st["out"] == 0 and st["buffer_size"] == 1024
    bufs = [pool.acquire() for _ in range(3)]
    st = pool.stats()
    _check_pool(st, pool)
    assert st["out"] == 3 and st["buffers"] >= 3
    made = st["buffers"]
    pool.release(bufs.pop())
    st = pool.stats()
    _check_pool(st, pool)
    assert st["out"] == 2 and st["free"] >= 1 and st["buffers"] == made
    bufs.append(pool.acquire())               # reuses the free one
    st = pool.stats()
    assert st["out"] == 3 and st["buffers"] == made
    for b in bufs:
        pool.release(b)
    st = pool.stats()
    _check_pool(st, pool)
    assert st["out"] == 0 and st["free"] == made


def test_pool_stats_default_buffer_size(backend):
    pool = backend.BufferPool()
    assert pool.stats()["buffer_size"] == pool.buffer_size


def test_pool_stats_follow_share_buffer_receives(backend, svc, connect):
    pool = backend.BufferPool(256)
    conn, peer = connect(share_buff=pool)
    conn.recv("r", None)
    assert pool.stats()["out"] == 0          # an idle receive holds no buffer
    peer.sendall(b"hi")
    res = collect_one(svc)
    assert pool.stats()["out"] == 1
    pool.release(res.buff)
    assert pool.stats()["out"] == 0


# ---------------------------------------------------------------- never blocks

def test_stats_does_not_block_while_io_runs(backend, svc, connect):
    conn, peer = connect()
    size = 32 * MIB
    worst = [0.0]
    calls = [0]
    stop = threading.Event()
    errors = []

    def reader_of_stats():
        try:
            while not stop.is_set():
                t = time.monotonic()
                st = svc.stats()
                worst[0] = max(worst[0], time.monotonic() - t)
                calls[0] += 1
                assert st["connections"] == 1
        except BaseException as exc:  # reported below
            errors.append(exc)

    t = threading.Thread(target=reader_of_stats, daemon=True)
    t.start()
    reader = Reader(peer, n=size)
    for i in range(8):
        conn.send(i, b"p" * (size // 8))
    collect(svc, 8)
    assert len(reader.result()) == size
    stop.set()
    t.join(WAIT)
    assert not errors, errors
    assert calls[0] > 10
    assert worst[0] < 0.5, worst


def test_stats_does_not_block_while_a_collector_waits(backend, svc, connect):
    conn, peer = connect()
    got = []

    def collector():
        try:
            got.append(svc.get_complete_status(timeout=WAIT))
        except goaio.ServiceClosed:
            got.append("closed")

    t = threading.Thread(target=collector, daemon=True)
    t.start()
    time.sleep(0.1)                           # the collector sleeps in the poller
    for _ in range(20):
        t0 = time.monotonic()
        svc.stats()
        assert time.monotonic() - t0 < 0.5
    conn.recv("r", bytearray(4))
    peer.sendall(b"done")
    t.join(WAIT)
    assert got and got[0] is not None and got[0].err is None


# ---------------------------------------------------------------- after close

def test_stats_after_close_shows_nothing_left_open(backend):
    svc = backend.AIOService(2)
    try:
        ln = svc.listen(("127.0.0.1", 0))
        ln.accept("a")
        svc.connect("c", ln.address)
        results = collect(svc, 2)
        for r in results:
            assert r.err is None
        conns = [r.conn for r in results]
        conns[0].recv("pending", bytearray(4))
        before = svc.stats()
        assert before["connections"] == 2 and before["listeners"] == 1
    finally:
        svc.close()
    st = svc.stats()
    _check_shape(st)
    for k in GAUGES + ("threads",):
        assert st[k] == 0, (k, st)
    assert st["ops_completed"] >= before["ops_completed"]   # counters keep their totals
    assert st["accepted"] == 1
    assert all(c.closed for c in conns) and ln.closed


def test_service_close_leaves_no_descriptor_open(backend, pairs):
    before = fd_count()
    svc = backend.AIOService(2)
    ln = svc.listen(("127.0.0.1", 0))
    clients = []
    for i in range(3):
        ln.accept(i)
        clients.append(socket.create_connection(ln.address, timeout=WAIT))
    svc.connect("c", ln.address)
    ln.accept("for-connect")
    results = collect(svc, 5)
    assert all(r.err is None for r in results), [r.err for r in results]
    sock, peer = pairs()
    conn = svc.bind(sock)
    conn.recv("pending", bytearray(4))
    svc.close()
    for c in clients:
        c.close()
    pairs.close()
    assert svc.stats()["connections"] == 0 and svc.stats()["listeners"] == 0
    assert fd_count() == before
