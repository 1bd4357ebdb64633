"""The pure backend's poller seam (goaio/_purepoll.py): every poller this
platform has serves the same IO, level-triggered ones never spin on an idle
ready socket, the wake-up works without eventfd, gather IO works without
sendmsg/recvmsg_into, and GOAIO_PURE_POLLER is strict.

These test the pure backend's own machinery, so they take a ``poller``
parameter instead of the ``backend`` fixture; the whole behavioural suite
runs once per poller in CI (``GOAIO_PURE_POLLER=poll|select pytest -k pure``,
``GOAIO_TEST_HIDE_EPOLL=1 pytest -k pure``). kqueue cannot run on Linux: its
case is skipped here.
"""

import os
import socket
import threading
import time

import pytest

from goaio import _purepoll, _pure
from support import GOAIO_PARENT, WAIT, collect, collect_one, recv_exactly, run_python

HAVE = _purepoll.available()


@pytest.fixture(params=_purepoll.POLLERS)
def poller(request, monkeypatch):
    name = request.param
    if name not in HAVE:
        pytest.skip(f"select.{name} does not exist here")
    monkeypatch.setenv("GOAIO_PURE_POLLER", name)
    return name


@pytest.fixture
def psvc(poller, pairs):
    s = _pure.AIOService()
    assert s._poller.name == poller
    yield s
    s.close()


def polls(svc):
    st = svc._stats()
    return st["collector_polls"] + st["worker_polls"]


def test_pure_poller_serves_io(psvc, pairs, poller):
    """recv, recv_full into a list, share-buffer recv, a send that must wait
    for the peer, EOF: the same results on every poller."""
    sock, peer = pairs("tcp", small=True)
    pool = _pure.BufferPool(64)
    conn = pairs.keep(psvc.bind(sock, share_buff=pool))
    conn.recv("r", bytearray(5))
    peer.sendall(b"hello")
    res = collect_one(psvc)
    assert (res.context, bytes(res.buff), res.err) == ("r", b"hello", None)

    parts = [bytearray(3), bytearray(0), bytearray(4)]
    conn.recv_full("full", parts)
    peer.sendall(b"abc")
    time.sleep(0.05)
    peer.sendall(b"defg")
    res = collect_one(psvc)
    assert (res.err, res.bytes_transferred, b"".join(parts)) == (None, 7, b"abcdefg")

    conn.recv("share")
    peer.sendall(b"pooled")
    res = collect_one(psvc)
    assert res.err is None and bytes(res.buff[:res.bytes_transferred]) == b"pooled"
    pool.release(res.buff)

    big = os.urandom(4 << 20)  # more than the small socket buffers hold
    conn.send("big", [big[:1000], big[1000:]])
    got = recv_exactly(peer, len(big))
    res = collect_one(psvc)
    assert (res.context, res.err, res.bytes_transferred) == ("big", None, len(big))
    assert got == big

    conn.recv("eof1", bytearray(8))
    conn.recv("eof2", bytearray(8))
    peer.shutdown(socket.SHUT_WR)
    errs = [type(r.err) for r in collect(psvc, 2)]
    assert errs == [EOFError, EOFError]


def test_pure_poller_idle_ready_sockets_do_not_spin(psvc, pairs, poller):
    """Readable sockets with no receive posted, hung-up sockets and writable
    ones cost the poller nothing: it wakes only once per MAX_WAIT slice."""
    conns = []
    peers = []
    for i in range(30):
        sock, peer = pairs("tcp")
        conns.append(pairs.keep(psvc.bind(sock)))
        peers.append(peer)
    # a receive waited on each first (so the poller watched the socket), and
    # a send went out
    for i, c in enumerate(conns):
        c.recv(i, bytearray(1))
    time.sleep(0.05)
    for i, c in enumerate(conns):
        peers[i].sendall(b"x")
        c.send(i, b"y")
    collect(psvc, 2 * len(conns))
    for i, peer in enumerate(peers):
        if i % 3 == 0:
            peer.sendall(b"unread data")
        elif i % 3 == 1:
            peer.close()
        # else: idle and writable
    time.sleep(0.1)
    before = polls(psvc)
    time.sleep(0.5)
    rounds = polls(psvc) - before
    # 0.5 s / 50 ms = 10 slices; a spinning poller does thousands
    assert rounds <= 40, f"{rounds} poll rounds in 0.5 s on idle connections ({poller})"


def test_pure_poller_blocked_send_does_not_spin(psvc, pairs, poller):
    """A send waiting for buffer space is watched for WRITE, without spinning."""
    sock, peer = pairs("tcp", small=True)
    conn = pairs.keep(psvc.bind(sock))
    conn.send("big", bytes(8 << 20))
    time.sleep(0.2)
    before = polls(psvc)
    time.sleep(0.5)
    rounds = polls(psvc) - before
    assert rounds <= 40, f"{rounds} poll rounds in 0.5 s while a send is blocked ({poller})"
    assert recv_exactly(peer, 8 << 20, timeout=WAIT * 3) == bytes(8 << 20)
    assert collect_one(psvc).err is None


def test_pure_poller_collector_is_woken(psvc, pairs, poller):
    """A collector blocked without a timeout gets a result posted by another
    thread (the wake-up descriptor), promptly."""
    sock, peer = pairs("tcp")
    conn = pairs.keep(psvc.bind(sock))
    got = []
    t = threading.Thread(target=lambda: got.append(psvc.get_complete_status(timeout=WAIT)))
    t.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    conn.send("s", b"ping")
    t.join(WAIT)
    assert got and got[0].context == "s"
    assert time.monotonic() - t0 < 1.0
    assert recv_exactly(peer, 4) == b"ping"


def test_pure_poller_without_eventfd_uses_a_pipe(poller, pairs, monkeypatch):
    """Where os.eventfd does not exist, the wake-up is a pipe."""
    for name in ("eventfd", "eventfd_read", "eventfd_write"):
        monkeypatch.delattr(os, name, raising=False)
    with _pure.AIOService() as s:
        waker = s._poller._waker
        assert waker.wake.__name__ == "_wake_pipe"
        sock, peer = pairs("tcp")
        conn = pairs.keep(s.bind(sock))
        time.sleep(0.1)  # the worker takes the poll over
        got = []
        t = threading.Thread(target=lambda: got.append(s.get_complete_status(timeout=WAIT)))
        t.start()
        time.sleep(0.1)  # ... and the collector, arriving, woke it through the pipe
        conn.recv("r", bytearray(4))
        peer.sendall(b"data")
        t.join(WAIT)
        assert got and got[0].buff == b"data"
        pipe = (waker.fd, waker._wfd)
    for fd in pipe:
        with pytest.raises(OSError):
            os.fstat(fd)


def test_pure_gather_io_without_sendmsg_and_recvmsg_into(psvc, pairs, poller, monkeypatch):
    """Where sendmsg/recvmsg_into do not exist, gather IO is send/recv_into
    per buffer, with the same results, partial transfers included."""
    monkeypatch.setattr(_pure, "_HAVE_SENDMSG", False)
    monkeypatch.setattr(_pure, "_HAVE_RECVMSG_INTO", False)
    sock, peer = pairs("tcp", small=True)
    conn = pairs.keep(psvc.bind(sock))
    data = os.urandom(3 << 20)
    conn.send("s", [data[:10], b"", data[10:1 << 20], data[1 << 20:]])
    assert recv_exactly(peer, len(data), timeout=WAIT * 3) == data
    res = collect_one(psvc)
    assert (res.err, res.bytes_transferred) == (None, len(data))

    bufs = [bytearray(2), bytearray(0), bytearray(5), bytearray(100)]
    conn.recv_full("f", bufs)
    peer.sendall(b"ab")
    time.sleep(0.05)
    peer.sendall(b"cdefg" + bytes(range(100)))
    res = collect_one(psvc)
    assert (res.err, res.bytes_transferred) == (None, 107)
    assert b"".join(bufs) == b"abcdefg" + bytes(range(100))

    conn.recv("r", [bytearray(4), bytearray(4)])
    peer.sendall(b"xyz")
    res = collect_one(psvc)
    assert (res.err, res.bytes_transferred, bytes(res.buff[0])) == (None, 3, b"xyz\0")


def test_pure_poller_switch_is_strict(monkeypatch):
    monkeypatch.setenv("GOAIO_PURE_POLLER", "bogus")
    with pytest.raises(ValueError) as info:
        _pure.AIOService()
    for name in _purepoll.POLLERS:
        assert name in str(info.value)
    missing = [n for n in _purepoll.POLLERS if n not in HAVE]
    if not missing:
        pytest.skip("every poller exists here")
    monkeypatch.setenv("GOAIO_PURE_POLLER", missing[0])
    with pytest.raises(OSError, match=missing[0]):
        _pure.AIOService()


def test_pure_poller_default_is_the_best_available(monkeypatch):
    monkeypatch.delenv("GOAIO_PURE_POLLER", raising=False)
    with _pure.AIOService() as s:
        assert s._poller.name == HAVE[0]


def test_pure_runs_where_select_has_no_epoll():
    """With select.epoll and os.eventfd gone before goaio is imported (as on
    macOS or Windows), ``import goaio`` works, the pure backend picks the
    next poller and serves IO."""
    code = (
        "import select, os, sys\n"
        "assert not hasattr(select, 'epoll') and not hasattr(os, 'eventfd')\n"
        "sys.modules['goaio._epoll'] = None\n"
        "import goaio, socket\n"
        "assert goaio.BACKEND == 'pure', goaio.BACKEND\n"
        "a, b = socket.socketpair()\n"
        "with goaio.AIOService() as svc:\n"
        "    print(svc._poller.name)\n"
        "    c = svc.bind(a)\n"
        "    c.recv('r', bytearray(4))\n"
        "    b.sendall(b'ping')\n"
        "    r = svc.get_complete_status(timeout=10)\n"
        "    print(bytes(r.buff), r.err)\n"
        "b.close()\n"
    )
    here = os.path.dirname(os.path.abspath(__file__))
    proc = run_python(code, GOAIO_TEST_HIDE_EPOLL="1",
                      PYTHONPATH=os.pathsep.join([os.path.join(here, "_hide_epoll"), GOAIO_PARENT]),
                      GOAIO_PURE_POLLER="")
    assert proc.returncode == 0, proc.stderr
    name, line = proc.stdout.split("\n")[:2]
    assert name == [n for n in HAVE if n != "epoll"][0]
    assert line == "b'ping' None"
