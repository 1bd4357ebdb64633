"""BufferPool and share-buffer receives: accounting on every path."""

import threading
import time

import pytest

import goaio
from support import (
    close_service,
    WAIT,
    assert_no_result,
    collect,
    collect_one,
    reset,
)


# ---------------------------------------------------------------- BufferPool itself

def test_pool_hands_out_bytearrays_of_its_size(backend):
    pool = backend.BufferPool(buffer_size=4096)
    a, b = pool.acquire(), pool.acquire()
    assert type(a) is bytearray and len(a) == 4096
    assert a is not b
    assert pool.outstanding == 2
    pool.release(a)
    pool.release(b)
    assert pool.outstanding == 0
    c = pool.acquire()  # reuses a released buffer
    assert c is a or c is b
    pool.release(c)


def test_pool_grows_on_demand(backend):
    pool = backend.BufferPool(64)
    bufs = [pool.acquire() for _ in range(1000)]
    assert len({id(b) for b in bufs}) == 1000
    assert pool.outstanding == 1000
    for b in bufs:
        pool.release(b)
    assert pool.outstanding == 0


def test_pool_release_foreign_is_value_error(backend):
    pool = backend.BufferPool(64)
    with pytest.raises(ValueError):
        pool.release(bytearray(64))
    with pytest.raises(ValueError):
        pool.release(b"x" * 64)
    other = backend.BufferPool(64)
    b = other.acquire()
    with pytest.raises(ValueError):
        pool.release(b)
    other.release(b)
    assert pool.outstanding == 0


def test_pool_double_release_is_value_error(backend):
    pool = backend.BufferPool(64)
    b = pool.acquire()
    pool.release(b)
    with pytest.raises(ValueError):
        pool.release(b)
    assert pool.outstanding == 0


@pytest.mark.parametrize("size", [0, -1])
def test_pool_bad_size(backend, size):
    with pytest.raises(ValueError):
        backend.BufferPool(size)


def test_pool_is_thread_safe(backend):
    pool = backend.BufferPool(32)
    held = set()
    lock = threading.Lock()
    errors = []

    def worker():
        try:
            for _ in range(3000):
                b = pool.acquire()
                with lock:
                    assert id(b) not in held, "one buffer handed to two holders"
                    held.add(id(b))
                b[0] = 1
                with lock:
                    held.discard(id(b))
                pool.release(b)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    ts = [threading.Thread(target=worker) for _ in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(WAIT * 3)
    assert not errors, errors
    assert pool.outstanding == 0


# ---------------------------------------------------------------- share-buffer receives

def test_share_recv_takes_a_pool_buffer(backend, svc, connect):
    pool = backend.BufferPool(1024)
    conn, peer = connect(share_buff=pool)
    conn.recv("r")
    assert pool.outstanding == 0
    peer.sendall(b"hello")
    res = collect_one(svc)
    assert res.err is None and res.bytes_transferred == 5
    assert type(res.buff) is bytearray and len(res.buff) == 1024
    assert res.buff[:5] == b"hello"
    assert pool.outstanding == 1  # the user owns it now
    pool.release(res.buff)
    assert pool.outstanding == 0


def test_share_recv_explicit_buffer_ignores_pool(backend, svc, connect):
    pool = backend.BufferPool(1024)
    conn, peer = connect(share_buff=pool)
    buf = bytearray(8)
    conn.recv("r", buf)
    peer.sendall(b"mine")
    res = collect_one(svc)
    assert res.buff is buf
    assert pool.outstanding == 0


def test_recv_none_without_share_buff_makes_4096_bytearray(backend, svc, connect):
    conn, peer = connect()
    conn.recv("r")
    conn.recv("r2", None)
    peer.sendall(b"x" * 5000)
    r1, r2 = collect(svc, 2)
    for r in (r1, r2):
        assert type(r.buff) is bytearray and len(r.buff) == goaio.DEFAULT_RECV_BUFF_SIZE == 4096
    assert r1.buff is not r2.buff
    assert r1.bytes_transferred + r2.bytes_transferred == 5000
    assert r1.bytes_transferred == 4096


class Counting:
    """A custom share_buff recording calls."""

    def __init__(self, make=lambda: bytearray(100)):
        self.make = make
        self.acquired = 0
        self.released = []
        self.lock = threading.Lock()

    def acquire(self):
        with self.lock:
            self.acquired += 1
        return self.make()

    def release(self, buff):
        with self.lock:
            self.released.append(buff)


def test_share_buffer_taken_only_when_data_is_ready(backend, svc, connect):
    sb = Counting()
    conn, peer = connect(share_buff=sb)
    for i in range(5):
        conn.recv(i)
    time.sleep(0.2)
    assert sb.acquired == 0, "acquire() called before the socket was readable"
    peer.sendall(b"abc")
    res = collect_one(svc)
    assert res.err is None and res.buff[:3] == b"abc"
    assert sb.acquired == 1
    assert sb.released == []


def test_custom_share_buff_returning_none_falls_back(backend, svc, connect):
    sb = Counting(make=lambda: None)
    conn, peer = connect(share_buff=sb)
    conn.recv("r")
    peer.sendall(b"data")
    res = collect_one(svc)
    assert res.err is None
    assert type(res.buff) is bytearray and len(res.buff) == 4096
    assert res.buff[:4] == b"data"
    assert sb.acquired == 1
    assert sb.released == []


def test_custom_share_buff_acquire_raises(backend, svc, connect):
    class Boom(Exception):
        pass

    def make():
        raise Boom("no buffers")

    sb = Counting(make=make)
    conn, peer = connect(share_buff=sb)
    conn.recv("r")
    peer.sendall(b"data")
    res = collect_one(svc)
    assert isinstance(res.err, Boom)
    assert res.buff is None
    assert not conn.closed


@pytest.mark.parametrize("bad", [b"readonly", 42, "text"])
def test_custom_share_buff_returning_non_writable(backend, svc, connect, bad):
    sb = Counting(make=lambda: bad)
    conn, peer = connect(share_buff=sb)
    conn.recv("r")
    peer.sendall(b"data")
    res = collect_one(svc)
    assert isinstance(res.err, TypeError)
    assert res.buff is None


def test_custom_share_buff_released_on_failed_recv(backend, svc, connect):
    """A buffer taken for a receive that then fails goes back via release()."""
    sb = Counting()
    conn, peer = connect(share_buff=sb)
    peer.close()  # readable at once: EOF
    conn.recv("r")
    res = collect_one(svc)
    assert isinstance(res.err, EOFError) and res.buff is None
    assert len(sb.released) == sb.acquired


def test_fallback_buffer_is_not_released_to_share_buff(backend, svc, connect):
    sb = Counting(make=lambda: None)
    conn, peer = connect(share_buff=sb)
    peer.close()
    conn.recv("r")
    res = collect_one(svc)
    assert isinstance(res.err, EOFError) and res.buff is None
    assert sb.released == []


def test_pool_subclass_is_honoured(backend, svc, connect):
    base = backend.BufferPool
    try:
        class Sub(base):
            def __init__(self, *a, **k):
                super().__init__(*a, **k)
                self.calls = []

            def acquire(self):
                self.calls.append("acquire")
                return super().acquire()

            def release(self, buff):
                self.calls.append("release")
                return super().release(buff)
    except TypeError:
        pytest.fail(f"goaio._{backend.name}.BufferPool cannot be subclassed")
    pool = Sub(256)
    conn, peer = connect(share_buff=pool)
    conn.recv("r")
    peer.sendall(b"sub")
    res = collect_one(svc)
    assert res.buff[:3] == b"sub"
    assert pool.calls == ["acquire"]
    pool.release(res.buff)
    assert pool.calls == ["acquire", "release"]
    assert pool.outstanding == 0


# ---------------------------------------------------------------- accounting

def test_every_buffer_back_after_eof_error_close_and_service_close(backend, pairs):
    pool = backend.BufferPool(512)
    svc = backend.AIOService(workers=2)
    try:
        # EOF
        sock, peer = pairs()
        c1 = svc.bind(sock, share_buff=pool)
        peer.sendall(b"x")
        peer.close()
        for i in range(3):
            c1.recv(("eof", i))
        # reset
        sock, peer = pairs()
        c2 = svc.bind(sock, share_buff=pool)
        c2.recv("reset")
        time.sleep(0.05)
        reset(peer)
        # timeout
        sock, _peer = pairs()
        c3 = svc.bind(sock, share_buff=pool)
        c3.set_recv_timeout(0.05)
        c3.recv("timeout")
        # close
        sock, _peer = pairs()
        c4 = svc.bind(sock, share_buff=pool)
        c4.recv("close")
        c4.close()
        results = collect(svc, 6)
        by_ctx = {r.context: r for r in results}
        ok = by_ctx[("eof", 0)]
        assert ok.err is None and ok.buff[:1] == b"x"
        for ctx in [("eof", 1), ("eof", 2), "reset", "timeout", "close"]:
            assert by_ctx[ctx].err is not None, ctx
            assert by_ctx[ctx].buff is None, ctx
        assert pool.outstanding == 1
        pool.release(ok.buff)
        assert pool.outstanding == 0
        # service close with share receives pending on live connections
        for _ in range(5):
            sock, _peer = pairs()
            svc.bind(sock, share_buff=pool).recv("pending")
        for c in (c1, c2, c3):
            c.recv("late")
    finally:
        close_service(svc)
    assert pool.outstanding == 0


def test_idle_connections_hold_no_pool_buffer(backend, svc, pairs, bind):
    """1000 idle connections with share-buffer receives posted hold 0 pool buffers."""
    pool = backend.BufferPool(4096)
    ps = pairs.many(1000)
    conns = [bind(s, share_buff=pool) for s, _ in ps]
    for i, c in enumerate(conns):
        c.recv(i)
    time.sleep(0.3)
    assert pool.outstanding == 0
    assert svc._stats()["live_ops"] == 1000
    assert_no_result(svc, 0.05)
    # 10 of them get data: exactly 10 buffers go out
    for i in range(0, 1000, 100):
        ps[i][1].sendall(b"wake %d" % i)
    results = collect(svc, 10)
    assert sorted(r.context for r in results) == list(range(0, 1000, 100))
    assert pool.outstanding == 10
    for r in results:
        assert r.buff[: r.bytes_transferred] == b"wake %d" % r.context
        pool.release(r.buff)
    assert pool.outstanding == 0


def test_pool_reuse_never_leaks_bytes_between_connections(backend, svc, pairs, bind):
    pool = backend.BufferPool(64)
    ps = pairs.many(20)
    conns = [bind(s, share_buff=pool) for s, _ in ps]
    for rnd in range(10):
        for i, c in enumerate(conns):
            c.recv((rnd, i))
        for i, (_, peer) in enumerate(ps):
            peer.sendall(bytes([i]) * (1 + (rnd + i) % 64))
        for r in collect(svc, len(conns)):
            rnd_, i = r.context
            assert r.err is None
            assert r.buff[: r.bytes_transferred] == bytes([i]) * r.bytes_transferred
            pool.release(r.buff)
        # peers may have sent more than one read took: drain the rest
        for i, c in enumerate(conns):
            c.set_recv_timeout(0.02)
            c.recv(("drain", i), bytearray(64))
        collect(svc, len(conns))
        for c in conns:
            c.set_recv_timeout(None)
    assert pool.outstanding == 0


def test_share_buffers_from_many_threads(backend, pairs):
    """Collector threads releasing pool buffers while workers take them."""
    pool = backend.BufferPool(128)
    with backend.AIOService(workers=2) as svc:
        ps = pairs.many(16)
        conns = [svc.bind(s, share_buff=pool) for s, _ in ps]
        per_conn = 50
        got, errors = [], []
        lock = threading.Lock()
        deadline = time.monotonic() + WAIT * 2

        def collector():
            try:
                while time.monotonic() < deadline:
                    with lock:
                        if len(got) >= len(conns) * per_conn:
                            return
                    res = svc.get_complete_status(timeout=0.05)
                    if res is None:
                        continue
                    assert res.err is None, res.err
                    i, k = res.context
                    pool.release(res.buff)
                    if k + 1 < per_conn:
                        res.conn.recv((i, k + 1))
                        ps[i][1].sendall(b"m")
                    with lock:
                        got.append(res.context)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        for i, c in enumerate(conns):
            c.recv((i, 0))
            ps[i][1].sendall(b"m")
        ts = [threading.Thread(target=collector) for _ in range(3)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(WAIT * 2)
        assert not any(t.is_alive() for t in ts)
        assert not errors, errors
        assert len(got) == len(set(got)) == len(conns) * per_conn
    assert pool.outstanding == 0
