"""set_recv_timeout / set_send_timeout."""

import threading
import time

import pytest

import goaio
from support import (
    WAIT,
    Reader,
    assert_no_result,
    assert_nothing_to_read,
    collect,
    collect_one,
    recv_exactly,
)

LATE = 0.100  # SPEC: a timeout fires no more than 100 ms late on an idle machine
EARLY = 0.0005  # clock granularity only: never early


def timed_recv(svc, conn, timeout, post=lambda c: c.recv("r", bytearray(8))):
    conn.set_recv_timeout(timeout)
    t0 = time.monotonic()
    post(conn)
    res = collect_one(svc)
    return res, time.monotonic() - t0


@pytest.mark.parametrize("seconds", [0.05, 0.2, 1])
def test_recv_timeout_never_early_at_most_100ms_late(backend, svc, connect, seconds):
    conn, _peer = connect()
    res, elapsed = timed_recv(svc, conn, seconds)
    assert isinstance(res.err, goaio.RecvTimeout)
    assert isinstance(res.err, TimeoutError)
    assert res.bytes_transferred == 0
    assert elapsed >= seconds - EARLY, f"fired {seconds - elapsed:.4f}s early"
    assert elapsed <= seconds + LATE, f"fired {elapsed - seconds:.4f}s late"


def test_recv_timeout_repeatedly(backend, svc, connect):
    conn, _peer = connect()
    conn.set_recv_timeout(0.03)
    lates = []
    for i in range(10):
        t0 = time.monotonic()
        conn.recv(i, bytearray(4))
        res = collect_one(svc)
        elapsed = time.monotonic() - t0
        assert isinstance(res.err, goaio.RecvTimeout) and res.context == i
        assert elapsed >= 0.03 - EARLY
        lates.append(elapsed - 0.03)
    assert max(lates) <= LATE, lates


def test_recv_timeout_int_seconds(backend, svc, connect):
    conn, _peer = connect()
    res, elapsed = timed_recv(svc, conn, 1)
    assert isinstance(res.err, goaio.RecvTimeout)
    assert 1 - EARLY <= elapsed <= 1 + LATE


def test_recv_full_timeout_carries_partial_count(backend, svc, connect):
    conn, peer = connect()
    buf = bytearray(10)
    conn.set_recv_timeout(0.3)
    conn.recv_full("f", buf)
    peer.sendall(b"abcd")
    res = collect_one(svc)
    assert isinstance(res.err, goaio.RecvTimeout)
    assert res.bytes_transferred == 4
    assert buf[:4] == b"abcd"
    assert res.buff is buf


def test_recv_full_timeout_then_rest_arrives_in_next_op(backend, svc, connect):
    conn, peer = connect()
    conn.set_recv_timeout(0.2)
    a = bytearray(6)
    conn.recv_full("a", a)
    peer.sendall(b"123")
    res = collect_one(svc)
    assert isinstance(res.err, goaio.RecvTimeout) and res.bytes_transferred == 3
    conn.set_recv_timeout(None)
    b = bytearray(6)
    conn.recv_full("b", b)
    peer.sendall(b"456789")
    res = collect_one(svc)
    assert res.err is None and b == b"456789"


def test_recv_that_completes_does_not_time_out_later(backend, svc, connect):
    conn, peer = connect()
    conn.set_recv_timeout(0.15)
    peer.sendall(b"x")
    conn.recv("r", bytearray(4))
    res = collect_one(svc)
    assert res.err is None
    assert_no_result(svc, 0.4)


def test_rearming_moves_pending_deadline(backend, svc, connect):
    conn, _peer = connect()
    conn.set_recv_timeout(0.4)
    t0 = time.monotonic()
    conn.recv("r", bytearray(4))
    time.sleep(0.25)
    t1 = time.monotonic()
    conn.set_recv_timeout(0.4)  # re-arm: pending ops now have call time + 0.4
    res = collect_one(svc)
    done = time.monotonic()
    assert isinstance(res.err, goaio.RecvTimeout)
    assert done - t1 >= 0.4 - EARLY, f"fired {done - t0:.3f}s after posting: not re-armed"
    assert done - t1 <= 0.4 + LATE


def test_setting_timeout_with_ops_pending_counts_from_the_call(backend, svc, connect):
    conn, _peer = connect()
    conn.recv("r", bytearray(4))
    time.sleep(0.3)
    t1 = time.monotonic()
    conn.set_recv_timeout(0.2)
    res = collect_one(svc)
    elapsed = time.monotonic() - t1
    assert isinstance(res.err, goaio.RecvTimeout)
    assert 0.2 - EARLY <= elapsed <= 0.2 + LATE, elapsed


@pytest.mark.parametrize("off", [None, 0, 0.0])
def test_disabling_timeout(backend, svc, connect, off):
    conn, peer = connect()
    conn.set_recv_timeout(0.15)
    conn.recv("r", bytearray(4))
    conn.set_recv_timeout(off)
    assert_no_result(svc, 0.4)
    conn.recv("r2", bytearray(4))  # a later recv gets no deadline either
    assert_no_result(svc, 0.3)
    peer.sendall(b"latelate")
    r1, r2 = collect(svc, 2)
    assert (r1.context, r1.err, r1.bytes_transferred) == ("r", None, 4)
    assert r2.context == "r2" and r2.err is None


def test_each_recv_keeps_its_own_deadline(backend, svc, connect):
    conn, _peer = connect()
    conn.set_recv_timeout(0.4)
    t0 = time.monotonic()
    conn.recv("a", bytearray(4))
    time.sleep(0.2)
    conn.recv("b", bytearray(4))
    ra = collect_one(svc)
    ta = time.monotonic() - t0
    rb = collect_one(svc)
    tb = time.monotonic() - t0
    assert (ra.context, rb.context) == ("a", "b")
    assert isinstance(ra.err, goaio.RecvTimeout) and isinstance(rb.err, goaio.RecvTimeout)
    assert 0.4 - EARLY <= ta <= 0.4 + LATE, ta
    assert 0.6 - EARLY <= tb <= 0.6 + LATE, tb


def test_recv_timeout_does_not_close(backend, svc, connect):
    conn, peer = connect()
    res, _ = timed_recv(svc, conn, 0.05)
    assert isinstance(res.err, goaio.RecvTimeout)
    assert not conn.closed and conn.fd >= 0
    peer.sendall(b"after")
    buf = bytearray(8)
    conn.recv("again", buf)
    res = collect_one(svc)
    assert res.err is None and buf[:5] == b"after"
    conn.send("s", b"ok")
    assert collect_one(svc).err is None
    assert recv_exactly(peer, 2) == b"ok"


def test_share_buffer_recv_timeout_returns_nothing_out(backend, svc, connect):
    pool = backend.BufferPool(512)
    conn, _peer = connect(share_buff=pool)
    res, _ = timed_recv(svc, conn, 0.05, post=lambda c: c.recv("r"))
    assert isinstance(res.err, goaio.RecvTimeout) and res.buff is None
    assert pool.outstanding == 0


@pytest.mark.parametrize("setter", ["set_recv_timeout", "set_send_timeout"])
def test_timeout_argument_checks(backend, svc, connect, setter):
    conn, _peer = connect()
    with pytest.raises(ValueError):
        getattr(conn, setter)(-1)
    with pytest.raises(ValueError):
        getattr(conn, setter)(-0.001)
    for bad in ("1", [1], object()):
        with pytest.raises(TypeError):
            getattr(conn, setter)(bad)
    getattr(conn, setter)(5)
    getattr(conn, setter)(0.5)
    getattr(conn, setter)(None)
    getattr(conn, setter)(0)


# ---------------------------------------------------------------- send timeouts

def test_send_timeout_exact_prefix_and_queued_sends(backend, svc, connect):
    """The error carries the bytes sent; the peer reads exactly that prefix;
    queued sends behind it get SendTimeout with 0; later sends go out normally."""
    conn, peer = connect(small=True)
    big = bytes(range(251)) * ((4 << 20) // 251 + 1)  # ~4 MiB of a 251-byte period
    conn.set_send_timeout(0.3)
    t0 = time.monotonic()
    conn.send("big", big)
    conn.send("q1", b"Q" * 1000)
    conn.send("q2", [b"R" * 10, b"S" * 10])
    results = collect(svc, 3)
    elapsed = time.monotonic() - t0
    assert [r.context for r in results] == ["big", "q1", "q2"]
    first = results[0]
    assert isinstance(first.err, goaio.SendTimeout) and isinstance(first.err, TimeoutError)
    sent = first.bytes_transferred
    assert 0 < sent < len(big)
    for r in results[1:]:
        assert isinstance(r.err, goaio.SendTimeout), r.err
        assert r.bytes_transferred == 0
    assert 0.3 - EARLY <= elapsed <= 0.3 + LATE, elapsed
    assert not conn.closed
    # Sends posted afterwards go out normally (the timeout still set), right
    # after the reported prefix.
    reader = Reader(peer, sent + 8)
    conn.send("after", b"<<MARK>>")
    res = collect_one(svc)
    assert res.err is None and res.bytes_transferred == 8
    wire = reader.result()
    assert wire[:sent] == big[:sent], "the peer did not read exactly the reported prefix"
    assert wire[sent:] == b"<<MARK>>"
    assert_nothing_to_read(peer)


def test_send_timeout_fails_queued_sends_at_that_moment(backend, svc, connect):
    """Sends queued behind a timed-out send complete with it (0 bytes), before
    their own deadlines, and none of their bytes ever reaches the wire."""
    conn, peer = connect(small=True)
    big = b"B" * (4 << 20)
    conn.set_send_timeout(0.3)
    t0 = time.monotonic()
    conn.send("big", big)
    time.sleep(0.15)
    conn.send("q1", b"Q" * 1000)  # own deadline: t0 + 0.45
    first = collect_one(svc)
    t_first = time.monotonic() - t0
    assert first.context == "big" and isinstance(first.err, goaio.SendTimeout)
    second = collect_one(svc)
    t_second = time.monotonic() - t0
    assert second.context == "q1" and isinstance(second.err, goaio.SendTimeout)
    assert second.bytes_transferred == 0
    assert t_second - t_first < 0.1, f"queued send completed {t_second - t_first:.3f}s after the timeout"
    assert t_second < 0.45 - 0.02, "the queued send waited for its own deadline"
    sent = first.bytes_transferred
    conn.set_send_timeout(None)
    reader = Reader(peer, sent + 4)
    conn.send("mark", b"MARK")
    assert collect_one(svc).err is None
    assert reader.result() == big[:sent] + b"MARK"  # no Q on the wire
    assert_nothing_to_read(peer)


def test_send_timeout_set_while_send_pending(backend, svc, connect):
    conn, peer = connect(small=True)
    # Fill the pipe first without a timeout, then a timed send cannot write a byte.
    filler = b"F" * (4 << 20)
    conn.send("fill", filler)
    time.sleep(0.2)
    conn.set_send_timeout(0.2)  # applies to the pending filler too, from now
    conn.send("next", b"N" * 100)
    results = collect(svc, 2)
    assert [r.context for r in results] == ["fill", "next"]
    assert isinstance(results[0].err, goaio.SendTimeout)
    assert isinstance(results[1].err, goaio.SendTimeout) and results[1].bytes_transferred == 0
    n = results[0].bytes_transferred
    conn.set_send_timeout(0)
    conn.send("mark", b"!")
    reader = Reader(peer, n + 1)
    collect_one(svc)
    assert reader.result() == filler[:n] + b"!"


def test_send_timeout_disabled_send_completes(backend, svc, connect):
    conn, peer = connect(small=True)
    conn.set_send_timeout(0.2)
    conn.set_send_timeout(None)
    data = b"D" * (2 << 20)
    conn.send("s", data)
    time.sleep(0.5)  # longer than the disabled timeout, peer not reading
    reader = Reader(peer, len(data))
    res = collect_one(svc)
    assert (res.err, res.bytes_transferred) == (None, len(data))
    assert reader.result() == data


def test_send_within_timeout_completes(backend, svc, connect):
    conn, peer = connect()
    conn.set_send_timeout(0.5)
    conn.send("s", b"quick")
    res = collect_one(svc)
    assert res.err is None
    assert recv_exactly(peer, 5) == b"quick"
    assert_no_result(svc, 0.7)


# ---------------------------------------------------------------- races

def test_data_at_the_instant_of_timeout_loses_nothing(backend, svc, connect):
    """Data racing a short recv timeout: every byte is either in a completed op or
    counted in the timed-out op's partial count (bpo-33694)."""
    conn, peer = connect()
    conn.set_recv_timeout(0.004)
    stop = threading.Event()
    sent = bytearray()

    def trickle():
        i = 0
        while not stop.is_set():
            chunk = bytes([i % 251]) * (1 + i % 7)
            peer.sendall(chunk)
            sent.extend(chunk)
            i += 1
            time.sleep(0.0007)

    t = threading.Thread(target=trickle)
    t.start()
    got = bytearray()
    timeouts = 0
    try:
        deadline = time.monotonic() + 1.5
        i = 0
        while time.monotonic() < deadline:
            buf = bytearray(37)
            conn.recv_full(i, buf) if i % 2 else conn.recv(i, buf)
            res = collect_one(svc)
            assert res.context == i
            if res.err is not None:
                assert isinstance(res.err, goaio.RecvTimeout), res.err
                timeouts += 1
            got += buf[: res.bytes_transferred]
            i += 1
    finally:
        stop.set()
        t.join(WAIT)
    conn.set_recv_timeout(None)
    rest = len(sent) - len(got)
    if rest:
        tail = bytearray(rest)
        conn.recv_full("rest", tail)
        assert collect_one(svc).err is None
        got += tail
    assert bytes(got) == bytes(sent)
    assert timeouts > 0


def test_timeout_racing_close_completes_once(backend, svc, connect):
    for i in range(30):
        conn, peer = connect()
        conn.set_recv_timeout(0.01)
        conn.recv(i, bytearray(4))
        time.sleep(0.009 + (i % 5) * 0.0005)
        conn.close()
        res = collect_one(svc)
        assert res.context == i
        assert isinstance(res.err, (goaio.RecvTimeout, goaio.ConnClosed)), res.err
        peer.close()
    assert_no_result(svc, 0.1)


def test_many_connections_with_timeouts(backend, svc, pairs, bind):
    """Timeouts on many connections fire, each once, close to their deadlines."""
    n = 300
    conns = [bind(s) for s, _ in pairs.many(n)]
    t0 = time.monotonic()
    for i, c in enumerate(conns):
        c.set_recv_timeout(0.2 + (i % 3) * 0.1)
        c.recv(i, bytearray(4))
    results = collect(svc, n, timeout=WAIT)
    elapsed = time.monotonic() - t0
    assert sorted(r.context for r in results) == list(range(n))
    assert all(isinstance(r.err, goaio.RecvTimeout) for r in results)
    assert len({id(r.err) for r in results}) == n  # a fresh exception per operation
    assert elapsed <= 0.4 + LATE + 0.3, elapsed
    assert_no_result(svc, 0.1)


@pytest.mark.slow
def test_timer_storm(backend, svc, pairs, bind):
    """Thousands of connections re-arming short timeouts and closing mid-flight drain to zero."""
    n = 2000
    conns = [bind(s) for s, _ in pairs.many(n)]
    posted = 0
    for rnd in range(5):
        for i, c in enumerate(conns):
            if c.closed:
                continue
            c.set_recv_timeout(0.01 + (i % 10) * 0.003)
            c.recv((rnd, i), bytearray(4))
            posted += 1
            c.set_recv_timeout(0.02)  # re-arm
        for c in conns[rnd::7]:
            c.close()
        collect(svc, posted, timeout=60)
        posted = 0
    assert svc._stats()["live_ops"] == 0
