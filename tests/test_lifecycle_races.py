"""Races and churn around accept, connect, cancel and shutdown (issue 10).

Each test is short (well under 5 s) and checks an exactly-once or
nothing-lost property over many rounds.
"""

import socket
import threading
import time

import pytest

import goaio
from lifecycle_support import peers  # noqa: F401 - fixture
from support import WAIT, collect, collect_one, fd_count, recv_exactly


def test_accept_storm_closed_loop(backend, peers):
    """Clients connect and close as fast as they can, 50 at a time; every one
    is accepted once, reads EOF, and nothing is left open."""
    before = fd_count()
    svc = backend.AIOService()
    n, window = 600, 50
    try:
        ln = svc.listen(("127.0.0.1", 0))
        for i in range(window):
            ln.accept(i)
        made = 0
        done = 0
        open_conns = 0
        while done < n:
            while made < n and made - done < window:
                c = socket.create_connection(ln.address, timeout=WAIT)
                c.close()
                made += 1
            res = svc.get_complete_status(timeout=WAIT)
            assert res is not None, f"stuck after {done} of {n}"
            if res.context == "eof":
                assert isinstance(res.err, EOFError), res.err
                res.conn.close()
                open_conns -= 1
                continue
            assert res.err is None, res.err
            done += 1
            open_conns += 1
            res.conn.recv("eof", bytearray(8))
            if done + window <= n:
                ln.accept(done + window)
        # drain the EOFs still to come
        for res in collect(svc, open_conns):
            assert isinstance(res.err, EOFError)
            res.conn.close()
        st = svc.stats()
        assert st["accepted"] == n
        assert st["connections"] == 0
    finally:
        svc.close()
    assert fd_count() == before


def test_connect_churn_against_a_goaio_listener(backend, svc, peers):
    ln = peers.keep(svc.listen(("127.0.0.1", 0)))
    rounds = 200
    for i in range(rounds):
        ln.accept(("a", i))
        svc.connect(("c", i), ln.address)
        got = {r.context[0]: r for r in collect(svc, 2)}
        assert got["a"].err is None and got["c"].err is None
        a, c = got["a"].conn, got["c"].conn
        c.send("s", b"%d" % i)
        buf = bytearray(len(b"%d" % i))
        a.recv_full("r", buf)
        rs = {r.context: r for r in collect(svc, 2)}
        assert rs["r"].err is None and bytes(buf) == b"%d" % i
        a.close()
        c.close()
    st = svc.stats()
    assert st["connections"] == 0 and st["accepted"] == rounds


def test_cancel_racing_data_loses_nothing(backend, svc, connect):
    """recv_full racing its data and a cancel: either the data completes it, or
    the cancel carries every byte already copied; the stream stays whole."""
    conn, peer = connect()
    stream = bytearray()
    for i in range(300):
        msg = bytes([i % 251]) * 8
        buf = bytearray(8)
        ctx = ("rf", i)
        conn.recv_full(ctx, buf)
        peer.sendall(msg)
        if i % 3:
            time.sleep(0)  # vary the interleaving
        n = conn.cancel(ctx)
        res = collect_one(svc)
        assert res.context is ctx
        if res.err is None:
            assert n == 0 and res.bytes_transferred == 8
            stream += buf
            continue
        assert n == 1 and type(res.err) is goaio.Cancelled
        k = res.bytes_transferred
        stream += buf[:k]
        if k < 8:
            rest = bytearray(8 - k)
            conn.recv_full(("rest", i), rest)
            r2 = collect_one(svc)
            assert r2.err is None, r2.err
            stream += rest
    assert bytes(stream) == b"".join(bytes([i % 251]) * 8 for i in range(300))


def test_cancel_from_another_thread_while_sending(backend, svc, connect):
    """A send cancelled from another thread mid-transfer: one completion each,
    and the peer's stream holds exactly the bytes reported."""
    conn, peer = connect(small=True)
    total_reported = 0
    for i in range(20):
        ctx = object()
        conn.send(ctx, b"x" * (1 << 20))
        t = threading.Thread(target=conn.cancel, args=(ctx,))
        t.start()
        t.join(WAIT)
        res = collect_one(svc)
        assert res.context is ctx
        assert res.err is None or type(res.err) is goaio.Cancelled
        total_reported += res.bytes_transferred
    conn.send("end", b"E")
    reader_done = []

    def read():
        reader_done.append(recv_exactly(peer, total_reported + 1, timeout=WAIT * 2))

    r = threading.Thread(target=read, daemon=True)
    r.start()
    assert collect_one(svc).err is None
    r.join(WAIT * 2)
    assert reader_done and reader_done[0] == b"x" * total_reported + b"E"


def test_listener_close_racing_incoming_connections(backend, peers):
    """Closing a listener while clients arrive: each accept completes exactly
    once, with a connection or with the close reason."""
    for _ in range(10):
        svc = backend.AIOService()
        try:
            ln = svc.listen(("127.0.0.1", 0))
            for i in range(20):
                ln.accept(i)
            addr = ln.address
            stop = threading.Event()

            def dial():
                while not stop.is_set():
                    try:
                        socket.create_connection(addr, timeout=1).close()
                    except OSError:
                        return

            t = threading.Thread(target=dial, daemon=True)
            t.start()
            time.sleep(0.005)
            ln.close()
            stop.set()
            t.join(WAIT)
            results = collect(svc, 20)
            assert sorted(r.context for r in results) == list(range(20))
            for r in results:
                if r.err is None:
                    r.conn.close()
                else:
                    assert type(r.err) is goaio.ConnClosed and r.conn is None
            assert svc.get_complete_status(timeout=0.05) is None
        finally:
            svc.close()


@pytest.mark.parametrize("what", ["accepts", "connects", "resolving"])
def test_service_close_with_lifecycle_ops_pending(backend, peers, monkeypatch, what):
    before = threading.active_count()
    svc = backend.AIOService(2)
    if what == "accepts":
        ln = svc.listen(("127.0.0.1", 0))
        for i in range(10):
            ln.accept(i)
    elif what == "connects":
        lst = peers.listening("tcp", backlog=0)
        for i in range(10):
            svc.connect(i, lst.getsockname(), timeout=30)
    else:
        real = socket.getaddrinfo

        def slow(host, *a, **k):
            if host == "slow.goaio.test":
                time.sleep(0.3)
                return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 9))]
            return real(host, *a, **k)

        monkeypatch.setattr(socket, "getaddrinfo", slow)
        for i in range(3):
            svc.connect(i, ("slow.goaio.test", 9), timeout=30)
    time.sleep(0.05)
    t0 = time.monotonic()
    svc.close()
    assert time.monotonic() - t0 < 3.0
    st = svc.stats()
    assert st["threads"] == 0 and st["pending_accept"] == 0 and st["pending_connect"] == 0
    assert st["listeners"] == 0 and st["connections"] == 0
    deadline = time.monotonic() + WAIT
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() <= before


def test_shutdown_racing_a_cancel_of_the_sends_before_it(backend, svc, connect):
    """Sends then a shutdown, the sends cancelled at once: the shutdown either
    shut down after every byte reported, or failed with Cancelled and left the
    stream open."""
    conn, peer = connect(small=True)
    ctx = object()
    conn.send(ctx, b"a" * (4 << 20))
    conn.shutdown("sd")
    conn.cancel(ctx)
    results = {(r.context if r.context == "sd" else "send"): r for r in collect(svc, 2)}
    sent = results["send"].bytes_transferred
    sd = results["sd"]
    got = recv_exactly(peer, sent)
    assert got == b"a" * sent
    if sd.err is None:
        peer.settimeout(WAIT)
        assert peer.recv(1) == b""        # EOF right after the reported bytes
    else:
        assert type(sd.err) is goaio.Cancelled
        conn.send("more", b"!")           # not shut down
        assert collect_one(svc).err is None
        assert recv_exactly(peer, 1) == b"!"
