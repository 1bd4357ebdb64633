"""conn.close(reason) and svc.close()."""

import threading
import time

import pytest

import goaio
from support import (
    close_service,
    WAIT,
    Reader,
    assert_no_result,
    assert_service_drained,
    collect,
    collect_one,
    recv_until_eof,
    wait_until,
)


class Reason(Exception):
    pass


def _post_pending(conn, k, m):
    """K receives (no data comes) and M sends (the peer does not read) pending."""
    for i in range(k):
        conn.recv(("r", i), bytearray(16))
    for i in range(m):
        conn.send(("s", i), b"x" * (2 << 20))


@pytest.mark.parametrize("k, m", [(1, 0), (0, 1), (3, 3), (32, 5)])
def test_close_with_reason_completes_each_pending_op_once(backend, svc, connect, k, m):
    conn, _peer = connect(small=True)
    _post_pending(conn, k, m)
    time.sleep(0.05)
    reason = Reason("bye")
    conn.close(reason)
    results = collect(svc, k + m)
    assert sorted(r.context for r in results) == sorted([("r", i) for i in range(k)] + [("s", i) for i in range(m)])
    for r in results:
        assert r.err is reason  # the very object, for every op
        assert r.conn is conn
    # receives in order, sends in order
    assert [r.context for r in results if r.context[0] == "r"] == [("r", i) for i in range(k)]
    assert [r.context for r in results if r.context[0] == "s"] == [("s", i) for i in range(m)]
    assert all(r.bytes_transferred == 0 for r in results if r.context[0] == "r")
    assert_no_result(svc)


def test_close_default_reason_is_conn_closed(backend, svc, connect):
    conn, _peer = connect(small=True)
    _post_pending(conn, 3, 2)
    conn.close()
    results = collect(svc, 5)
    for r in results:
        assert type(r.err) is goaio.ConnClosed
    assert len({id(r.err) for r in results}) == 5  # a fresh instance per op
    assert_no_result(svc)


def test_close_with_os_error_reason(backend, svc, connect):
    conn, _peer = connect()
    conn.recv("r", bytearray(4))
    reason = ConnectionAbortedError("app said so")
    conn.close(reason)
    assert collect_one(svc).err is reason


@pytest.mark.parametrize("bad", ["string", 5, Reason, object(), ValueError])
def test_close_bad_reason_is_type_error_and_keeps_conn_open(backend, svc, connect, bad):
    conn, peer = connect()
    conn.recv("r", bytearray(4))
    with pytest.raises(TypeError):
        conn.close(bad)
    assert not conn.closed and conn.fd >= 0
    peer.sendall(b"live")
    res = collect_one(svc)
    assert res.err is None and res.bytes_transferred == 4


def test_close_leaves_completed_results_as_they_are(backend, svc, connect):
    """An op that completed before conn.close() is delivered as it completed,
    share buffer and data included; only the pending one gets the reason."""
    pool = backend.BufferPool(64)
    conn, peer = connect(share_buff=pool)
    conn.recv("done", None)
    peer.sendall(b"abc")
    wait_until(lambda: svc._stats()["live_ops"] == 0, msg="the recv completed (uncollected)")
    conn.recv("pending", None)
    conn.close(Reason("bye"))
    done, pending = collect(svc, 2)
    assert (done.context, done.err, done.bytes_transferred) == ("done", None, 3)
    assert bytes(done.buff[:3]) == b"abc" and pool.outstanding == 1
    pool.release(done.buff)
    assert pending.context == "pending" and isinstance(pending.err, Reason)
    assert pending.buff is None and pool.outstanding == 0


def test_close_is_idempotent(backend, svc, connect):
    conn, _peer = connect()
    conn.recv("r", bytearray(4))
    first = Reason("first")
    conn.close(first)
    conn.close(Reason("second"))
    conn.close()
    assert collect_one(svc).err is first
    assert_no_result(svc)
    assert conn.closed


def test_post_after_close_is_conn_closed(backend, svc, connect):
    conn, _peer = connect()
    conn.close()
    with pytest.raises(goaio.ConnClosed):
        conn.recv(None, bytearray(4))
    with pytest.raises(goaio.ConnClosed):
        conn.recv(None)
    with pytest.raises(goaio.ConnClosed):
        conn.recv_full(None, bytearray(4))
    with pytest.raises(goaio.ConnClosed):
        conn.send(None, b"x")
    with pytest.raises(goaio.ConnClosed):
        conn.send(None, b"")
    assert_no_result(svc)


def test_closed_conn_checked_before_buffer(backend, svc, connect):
    conn, _peer = connect()
    conn.close()
    with pytest.raises(goaio.ConnClosed):
        conn.recv(None, b"read-only")
    with pytest.raises(goaio.ConnClosed):
        conn.recv(None, bytearray())
    with pytest.raises(goaio.ConnClosed):
        conn.send(None, 12)


def test_close_closes_socket_and_fd(backend, svc, pairs, bind):
    sock, peer = pairs()
    conn = bind(sock)
    conn.close()
    assert conn.fd == -1
    assert sock.fileno() == -1
    assert conn.closed is True
    assert recv_until_eof(peer) == b""  # the fd really is closed: the peer sees EOF


def test_close_flushes_nothing_more_and_peer_sees_eof(backend, svc, connect):
    conn, peer = connect()
    conn.send("s", b"before close")
    assert collect_one(svc).err is None
    conn.close()
    assert recv_until_eof(peer) == b"before close"


def test_close_from_other_thread_during_big_send(backend, svc, connect):
    conn, peer = connect()
    data = b"b" * (32 << 20)
    reader = Reader(peer)
    conn.send("s", data)
    time.sleep(0.01)
    t = threading.Thread(target=conn.close)
    t.start()
    t.join(WAIT)
    res = collect_one(svc)
    assert isinstance(res.err, goaio.ConnClosed) or (res.err is None and res.bytes_transferred == len(data))
    wire = reader.result()
    assert wire == data[: len(wire)]
    if res.err is not None:
        assert res.bytes_transferred <= len(wire)
    assert_no_result(svc)


def test_close_inside_handler_loop(backend, svc, connect):
    conn, peer = connect()
    conn.recv("a", bytearray(4))
    conn.recv("b", bytearray(4))
    peer.sendall(b"data")
    res = collect_one(svc)
    assert res.context == "a" and res.err is None
    res.conn.close()
    res = collect_one(svc)
    assert res.context == "b" and isinstance(res.err, goaio.ConnClosed)


def test_close_keeps_results_already_completed(backend, svc, connect):
    """conn.close() does not touch results already queued: they keep their data
    and their share buffer, which the user releases as usual."""
    pool = backend.BufferPool(256)
    conn, peer = connect(share_buff=pool)
    buf = bytearray(4)
    conn.recv("share")
    peer.sendall(b"data")
    wait_until(lambda: svc._stats()["live_ops"] == 0, msg="the share receive completed")
    conn.recv_full("plain", buf)
    peer.sendall(b"more")
    wait_until(lambda: svc._stats()["live_ops"] == 0, msg="the plain receive completed")
    conn.send("sent", b"out")
    wait_until(lambda: svc._stats()["live_ops"] == 0, msg="the send completed")
    conn.recv("pending", bytearray(4))
    conn.close()
    results = collect(svc, 4)
    assert [r.context for r in results] == ["share", "plain", "sent", "pending"]
    share, plain, sent, pending = results
    assert share.err is None and share.buff[:4] == b"data"
    assert pool.outstanding == 1
    pool.release(share.buff)
    assert plain.err is None and buf == b"more"
    assert sent.err is None and sent.bytes_transferred == 3
    assert isinstance(pending.err, goaio.ConnClosed)
    assert pool.outstanding == 0


@pytest.mark.parametrize("setter", ["set_recv_timeout", "set_send_timeout"])
def test_set_timeout_on_closed_conn(backend, svc, connect, setter):
    """On a closed connection the setters check their argument and do nothing else."""
    conn, _peer = connect()
    conn.close()
    getattr(conn, setter)(1)
    getattr(conn, setter)(None)
    getattr(conn, setter)(0)
    with pytest.raises(ValueError):
        getattr(conn, setter)(-1)
    with pytest.raises(TypeError):
        getattr(conn, setter)("1")
    assert_no_result(svc, 0.05)


def test_close_share_buffer_recvs_return_nothing(backend, svc, connect):
    pool = backend.BufferPool(256)
    conn, _peer = connect(share_buff=pool)
    for i in range(5):
        conn.recv(i)
    conn.close()
    results = collect(svc, 5)
    assert all(r.buff is None and isinstance(r.err, goaio.ConnClosed) for r in results)
    assert pool.outstanding == 0


def test_conn_context_manager(backend, svc, pairs, bind):
    sock, peer = pairs()
    with bind(sock) as conn:
        assert not conn.closed
        conn.recv("r", bytearray(4))
    assert conn.closed and sock.fileno() == -1
    assert isinstance(collect_one(svc).err, goaio.ConnClosed)
    with pytest.raises(KeyError):
        sock2, _ = pairs()
        with bind(sock2) as conn2:
            raise KeyError
    assert conn2.closed


# ---------------------------------------------------------------- service close

def test_service_close_closes_every_connection(backend, pairs):
    svc = backend.AIOService(workers=2)
    socks = [pairs() for _ in range(5)]
    conns = [svc.bind(s) for s, _ in socks]
    close_service(svc)
    for conn, (sock, peer) in zip(conns, socks):
        assert conn.closed and conn.fd == -1 and sock.fileno() == -1
        assert recv_until_eof(peer) == b""
    assert_service_drained(svc)


def test_service_close_with_ops_pending(backend, pairs):
    pool = backend.BufferPool(1024)
    svc = backend.AIOService(workers=2)
    conns = []
    for i in range(4):
        sock, peer = pairs(small=True)
        conn = svc.bind(sock, share_buff=pool)
        conn.recv(("r", i))
        conn.recv(("rb", i), bytearray(8))
        conn.send(("s", i), b"x" * (4 << 20))
        conns.append(conn)
    close_service(svc)
    assert pool.outstanding == 0
    assert all(c.closed for c in conns)
    assert_service_drained(svc)
    close_service(svc)  # idempotent


def test_service_close_returns_uncollected_share_buffers(backend, pairs):
    pool = backend.BufferPool(1024)
    svc = backend.AIOService()
    peers = []
    for i in range(10):
        sock, peer = pairs()
        svc.bind(sock, share_buff=pool).recv(i)
        peer.sendall(b"data %d" % i)
        peers.append(peer)
    # The receives complete (each took a pool buffer) but nobody collects.
    wait_until(lambda: pool.outstanding == 10, msg="10 pool buffers taken")
    time.sleep(0.05)
    close_service(svc)
    assert pool.outstanding == 0
    assert_service_drained(svc)


@pytest.mark.parametrize("method", ["get_complete_status", "get_complete_statuses"])
def test_service_close_wakes_blocked_collector(backend, method):
    svc = backend.AIOService()
    outcome = []
    started = threading.Event()

    def collector():
        started.set()
        try:
            getattr(svc, method)(timeout=None)
            outcome.append("returned")
        except goaio.ServiceClosed:
            outcome.append("closed")
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome.append(exc)

    t = threading.Thread(target=collector, daemon=True)
    t.start()
    started.wait(WAIT)
    time.sleep(0.1)
    t0 = time.monotonic()
    close_service(svc)
    t.join(WAIT)
    assert not t.is_alive(), "collector still blocked after close"
    assert outcome == ["closed"]
    assert time.monotonic() - t0 < 2
    assert_service_drained(svc)


def test_service_close_wakes_many_collectors(backend):
    svc = backend.AIOService(workers=2)
    outcome = []
    lock = threading.Lock()

    def collector(i):
        try:
            if i % 2:
                svc.get_complete_statuses(8, timeout=WAIT * 2)
            else:
                svc.get_complete_status(timeout=WAIT * 2)
            r = "returned"
        except goaio.ServiceClosed:
            r = "closed"
        with lock:
            outcome.append(r)

    ts = [threading.Thread(target=collector, args=(i,), daemon=True) for i in range(6)]
    for t in ts:
        t.start()
    time.sleep(0.2)
    close_service(svc)
    for t in ts:
        t.join(WAIT)
    assert outcome == ["closed"] * 6


def test_iteration_ends_quietly_on_close(backend, pairs):
    svc = backend.AIOService()
    sock, peer = pairs()
    conn = svc.bind(sock)
    seen = []
    done = threading.Event()

    def loop():
        for res in svc:
            seen.append(res.context)
        done.set()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    conn.send("one", b"1")
    conn.send("two", b"2")
    wait_until(lambda: len(seen) == 2, msg="two results iterated")
    close_service(svc)
    assert done.wait(WAIT), "iteration did not end when the service closed"
    assert seen == ["one", "two"]


def test_after_close_everything_raises_service_closed(backend, pairs):
    svc = backend.AIOService()
    sock, _peer = pairs()
    conn = svc.bind(sock)
    close_service(svc)
    sock2, _peer2 = pairs()
    with pytest.raises(goaio.ServiceClosed):
        svc.bind(sock2)
    with pytest.raises(goaio.ServiceClosed):
        svc.bind(sock2, recvq_size=0)  # service closed is checked first
    # Service closed is checked before connection closed.
    with pytest.raises(goaio.ServiceClosed):
        conn.recv(None, bytearray(4))
    with pytest.raises(goaio.ServiceClosed):
        conn.recv_full(None, bytearray(4))
    with pytest.raises(goaio.ServiceClosed):
        conn.send(None, b"x")
    with pytest.raises(goaio.ServiceClosed):
        conn.send(None, b"read-only and bad")
    with pytest.raises(goaio.ServiceClosed):
        svc.get_complete_status()
    with pytest.raises(goaio.ServiceClosed):
        svc.get_complete_status(timeout=0)
    with pytest.raises(goaio.ServiceClosed):
        svc.get_complete_statuses()
    with pytest.raises(goaio.ServiceClosed):
        svc.get_complete_statuses(4, timeout=0)
    assert list(svc) == []
    close_service(svc)
    # the refused socket is untouched and can be used elsewhere
    assert sock2.fileno() >= 0
    with backend.AIOService() as other:
        conn2 = other.bind(sock2)
        assert not conn2.closed


def test_service_close_discards_uncollected_results(backend, pairs):
    svc = backend.AIOService()
    sock, peer = pairs()
    conn = svc.bind(sock)
    for i in range(5):
        conn.send(i, b"x")
    peer.settimeout(WAIT)
    got = b""
    while len(got) < 5:
        got += peer.recv(5)
    close_service(svc)
    with pytest.raises(goaio.ServiceClosed):
        svc.get_complete_status(timeout=0)


def test_service_context_manager(backend, pairs):
    with backend.AIOService() as svc:
        assert isinstance(svc, backend.AIOService)
        sock, _peer = pairs()
        conn = svc.bind(sock)
    assert conn.closed
    with pytest.raises(goaio.ServiceClosed):
        svc.get_complete_status(timeout=0)
    with pytest.raises(RuntimeError):
        with backend.AIOService() as svc2:
            raise RuntimeError
    with pytest.raises(goaio.ServiceClosed):
        svc2.get_complete_status(timeout=0)
    assert_service_drained(svc)
    assert_service_drained(svc2)


def test_close_from_handler_thread_while_others_collect(backend, pairs):
    svc = backend.AIOService(workers=2)
    sock, peer = pairs()
    conn = svc.bind(sock)
    errors = []

    def collector():
        try:
            while True:
                svc.get_complete_status(timeout=WAIT)
        except goaio.ServiceClosed:
            pass
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    ts = [threading.Thread(target=collector, daemon=True) for _ in range(3)]
    for t in ts:
        t.start()
    conn.send("s", b"x")
    time.sleep(0.1)
    closer = threading.Thread(target=svc.close)
    closer.start()
    for t in ts:
        t.join(WAIT)
    closer.join(WAIT)
    assert not closer.is_alive(), "svc.close() did not return"
    assert not any(t.is_alive() for t in ts)
    assert not errors, errors
    assert_service_drained(svc)
