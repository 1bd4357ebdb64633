"""Ping-pong over many connections with connect/close churn (Go TestTCPStress,
netpoll TestParallelShortConnection). A quick run by default, a long one with -m slow."""

import os
import random
import threading
import time

import pytest

import goaio
from support import WAIT, Pairs, assert_service_drained, close_service, fd_count


def _stress(backend, seconds, n_conns, workers=2, collectors=2):
    pool = backend.BufferPool(256)
    pairs = Pairs()
    svc = backend.AIOService(workers=workers)
    errors = []
    stats = {"rounds": 0, "churned": 0}
    lock = threading.Lock()
    stop = threading.Event()
    try:
        def open_conn(i):
            sock, peer = pairs()
            return svc.bind(sock, share_buff=pool, user_data=i), peer

        def ping(conn):
            msg = os.urandom(random.randint(1, 200))
            conn.send(("s", msg), msg)
            if conn.user_data % 2:  # share-buffer receive; may bring part of msg
                conn.recv(("rs", msg))
            else:
                conn.recv_full(("r", msg), bytearray(len(msg)))

        conns = [open_conn(i) for i in range(n_conns)]

        def collector():
            try:
                while not stop.is_set():
                    res = svc.get_complete_status(timeout=0.05)
                    if res is None:
                        continue
                    kind, msg = res.context
                    if res.err is not None:
                        if isinstance(res.err, goaio.ConnClosed):
                            continue
                        raise AssertionError(f"{kind}: {res.err!r}")
                    if kind in ("s", "churn"):
                        continue
                    if kind == "rs":
                        n = res.bytes_transferred
                        data = bytes(res.buff[:n])
                        pool.release(res.buff)
                        assert data == msg[:n], "wrong bytes"
                        if n < len(msg):
                            res.conn.recv_full(("r", msg[n:]), bytearray(len(msg) - n))
                            continue
                    else:
                        assert bytes(res.buff) == msg, "wrong bytes"
                    with lock:
                        stats["rounds"] += 1
                    ping(res.conn)  # the next round on the same connection
            except goaio.ServiceClosed:
                pass
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
                stop.set()

        def echo_peers():
            # Each peer echoes whatever it receives (a blocking thread per batch
            # of peers would be costly: poll them with select instead).
            import selectors

            sel = selectors.DefaultSelector()
            for conn, peer in conns:
                peer.setblocking(False)
                sel.register(peer, selectors.EVENT_READ)
            try:
                while not stop.is_set():
                    for key, _ in sel.select(0.05):
                        p = key.fileobj
                        try:
                            data = p.recv(65536)
                        except (BlockingIOError, InterruptedError):
                            continue
                        except OSError:
                            data = b""
                        if not data:
                            sel.unregister(p)
                            continue
                        p.setblocking(True)
                        p.sendall(data)
                        p.setblocking(False)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
                stop.set()
            finally:
                sel.close()

        ts = [threading.Thread(target=collector) for _ in range(collectors)]
        ts.append(threading.Thread(target=echo_peers))
        for t in ts:
            t.start()
        for conn, _peer in conns:
            ping(conn)
        # churn: short connections opened, used once and closed, meanwhile
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not stop.is_set():
            sock, peer = pairs()
            c = svc.bind(sock)
            c.send(("churn", b""), b"hello")
            got = b""
            peer.settimeout(WAIT)
            while len(got) < 5:
                got += peer.recv(5)
            assert got == b"hello"
            if stats["churned"] % 2:
                c.close(ConnectionAbortedError("churn"))
            else:
                c.close()
            peer.close()
            stats["churned"] += 1
        stop.set()
        for t in ts:
            t.join(WAIT)
        assert not any(t.is_alive() for t in ts)
        assert not errors, errors[:3]
        assert stats["rounds"] > n_conns, stats
        assert stats["churned"] > 10, stats
    finally:
        stop.set()
        close_service(svc)
        pairs.close()
    assert pool.outstanding == 0
    assert_service_drained(svc)
    return stats


def test_stress_quick(backend):
    fds, threads = fd_count(), threading.active_count()
    _stress(backend, seconds=2, n_conns=100)
    assert threading.active_count() == threads
    assert fd_count() <= fds + 2


@pytest.mark.slow
def test_stress_long(backend):
    fds, threads = fd_count(), threading.active_count()
    _stress(backend, seconds=30, n_conns=1000, workers=2, collectors=3)
    assert threading.active_count() == threads
    assert fd_count() <= fds + 2
