"""Misuse and hostile callbacks (issue 14: items 6, 7, 9, 10, 14, 15, 16, 17,
20): raising share buffers, resized pool buffers, unusable buffers, sockets
closed behind goaio's back, close racing bind or called from a callback, and
a reset with receives pending. Every test runs on every backend; where a
crash or a hang is possible the scenario runs in a child process.
"""

import errno
import gc
import mmap
import socket
import sys
import threading
import time

import pytest

from goaio import ConnClosed, ServiceClosed, _messages
from support import WAIT, collect, collect_one, fd_count, reset, run_python, wait_until


class RaisingShare:
    """A share_buff whose release() raises (the library calls it for a failed
    receive's buffer and at close)."""

    def __init__(self):
        self.acquired = 0
        self.released = 0

    def acquire(self):
        self.acquired += 1
        return bytearray(64)

    def release(self, buff):
        self.released += 1
        raise RuntimeError("release failed")


@pytest.fixture
def unraisable(monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u.exc_value))
    return seen


def _reset_receives(backend, svc, pairs, n, share):
    """n connections whose share-buffer receive fails (the peer resets) after
    the buffer was taken."""
    conns = []
    for i in range(n):
        sock, peer = pairs("tcp")
        conn = svc.bind(sock, share_buff=share)
        conn.recv(i, None)
        conns.append((conn, peer))
    for _, peer in conns:
        reset(peer)
    return [c for c, _ in conns]


# ---------------------------------------------------------------- item 6 / 20: release() raising

def test_raising_release_loses_no_result(backend, svc, pairs, unraisable):
    share = RaisingShare()
    conns = _reset_receives(backend, svc, pairs, 4, share)
    wait_until(lambda: svc._stats()["live_ops"] == 0, msg="the receives failed")
    got = []
    deadline = time.monotonic() + WAIT
    while len(got) < 4 and time.monotonic() < deadline:
        got += svc.get_complete_statuses(8, timeout=0.5)
    assert sorted(r.context for r in got) == [0, 1, 2, 3], got
    for r in got:
        assert isinstance(r.err, OSError) or isinstance(r.err, EOFError), r
        assert r.buff is None, r
    # every buffer taken and not handed over was given back, each release's
    # error reported, not raised
    assert share.released == share.acquired
    assert share.acquired >= 1
    assert len(unraisable) == share.released
    assert all(isinstance(e, RuntimeError) and str(e) == "release failed" for e in unraisable)
    for c in conns:
        c.close()


def test_raising_release_never_stops_close(backend, pairs, unraisable):
    share = RaisingShare()
    socks = [pairs("tcp") for _ in range(4)]
    base = fd_count()
    svc = backend.AIOService()
    conns = []
    for i, (sock, peer) in enumerate(socks):
        conns.append(svc.bind(sock, share_buff=share))
        conns[-1].recv(i, None)
    for _, peer in socks:
        reset(peer)
    # the failed receives wait uncollected, each holding its share buffer
    wait_until(lambda: svc._stats()["live_ops"] == 0, msg="the receives failed")
    svc.close()
    assert svc.closed
    svc.close()
    assert share.released == share.acquired >= 1
    assert len(unraisable) == share.released
    # the service's own fds and the bound sockets are closed; the peers too
    assert fd_count() == base - 2 * len(socks)
    with pytest.raises(ServiceClosed):
        svc.get_complete_status(timeout=0)


# ---------------------------------------------------------------- item 7: resized pool buffer

RESIZED_CHILD = r"""
import importlib, socket, sys
mod = importlib.import_module("goaio._" + sys.argv[1])
svc = mod.AIOService()
pool = mod.BufferPool(4096)
out = []
for how in ("clear", "shrink", "grow"):
    b = pool.acquire()
    pool.release(b)
    try:
        if how == "clear":
            del b[:]
        elif how == "shrink":
            del b[16:]
        else:
            b.extend(b"z" * 100)
        resized = True
    except BufferError:
        resized = False
    a, peer = socket.socketpair()
    conn = svc.bind(a, share_buff=pool)
    conn.recv(how, None)
    peer.sendall(b"x" * 4096)
    res = svc.get_complete_status(timeout=5)
    assert res is not None, "no result"
    blen = None if res.buff is None else len(res.buff)
    # never more bytes than the buffer holds, and a pool buffer handed over
    # is one of buffer_size
    if res.err is None:
        assert res.bytes_transferred <= blen, (how, res.bytes_transferred, blen)
        assert blen == 4096, (how, blen)
        pool.release(res.buff)
    else:
        assert res.buff is None, res
    out.append((how, resized, type(res.err).__name__))
    conn.close()
    peer.close()
svc.close()
print("OK", out)
"""


def test_resized_pool_buffer_is_never_overrun(backend):
    proc = run_python(RESIZED_CHILD, argv=[backend.name], args=("-X", "dev"), timeout=60)
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr[-3000:])
    assert proc.stdout.startswith("OK"), proc.stdout


# ---------------------------------------------------------------- item 15: acquire() non-contiguous

class StridedShare:
    def __init__(self):
        self.given = []
        self.back = []

    def acquire(self):
        mv = memoryview(bytearray(256))[::2]
        self.given.append(mv)
        return mv

    def release(self, buff):
        self.back.append(buff)


def test_noncontiguous_share_buffer_is_buffer_error(backend, svc, connect):
    share = StridedShare()
    conn, peer = connect(share_buff=share)
    conn.recv("r", None)
    peer.sendall(b"data")
    res = collect_one(svc)
    assert type(res.err) is BufferError, res
    assert str(res.err) == _messages.NOT_CONTIGUOUS
    assert res.buff is None
    assert share.back == share.given, "the unusable buffer was not given back"
    conn.close()


# ---------------------------------------------------------------- item 16: released buffers

def _released_memoryview():
    m = memoryview(bytearray(16))
    m.release()
    return m


def _closed_mmap():
    mm = mmap.mmap(-1, 16)
    mm.close()
    return mm


@pytest.mark.parametrize("make", [_released_memoryview, _closed_mmap], ids=["memoryview", "mmap"])
@pytest.mark.parametrize("method", ["recv", "recv_full", "send"])
@pytest.mark.parametrize("in_list", [False, True], ids=["single", "list"])
def test_released_buffer_is_value_error(backend, svc, connect, make, method, in_list):
    conn, peer = connect()
    buff = make()
    with pytest.raises(ValueError) as expected:
        memoryview(buff)
    arg = [bytearray(4), buff] if in_list else buff
    with pytest.raises(ValueError) as info:
        getattr(conn, method)("ctx", arg)
    assert type(info.value) is ValueError
    assert str(info.value) == str(expected.value)
    assert svc._stats()["live_ops"] == 0, "a refused post left an op behind"
    conn.close()


# ---------------------------------------------------------------- item 9: bind racing close

def test_bind_racing_close_is_service_closed(backend):
    """bind() while another thread closes the service: every bind returns a
    connection (closed by the close) or raises ServiceClosed; never an
    OSError from a poller being closed."""
    errors = []
    bound = []
    for _ in range(120):
        socks = [socket.socketpair() for _ in range(12)]
        svc = backend.AIOService()
        go = threading.Barrier(2)

        def closer():
            go.wait()
            svc.close()

        t = threading.Thread(target=closer)
        t.start()
        go.wait()
        for a, b in socks:
            try:
                bound.append(svc.bind(a))
            except ServiceClosed:
                a.close()
            except BaseException as exc:  # noqa: BLE001 - collected and asserted
                errors.append(exc)
                a.close()
        t.join(WAIT)
        assert not t.is_alive(), "close() did not return"
        for a, b in socks:
            b.close()
        for c in bound:
            assert c.closed, "a connection bound while closing stayed open"
        bound.clear()
    assert errors == [], errors[:3]


# ---------------------------------------------------------------- item 14: close from a callback

CLOSE_IN_CALLBACK = r"""
import importlib, socket, sys, threading, time
mod = importlib.import_module("goaio._" + sys.argv[1])
where = sys.argv[2]
ServiceClosed = importlib.import_module("goaio").ServiceClosed


class ClosingShare:
    def __init__(self):
        self.threads = []

    def acquire(self):
        self.threads.append(threading.current_thread().name)
        if where == "racing":
            other = threading.Thread(target=svc.close)
            other.start()
            time.sleep(0.05)        # the other close() is now waiting for this round
        svc.close()
        if where == "racing":
            other.join(5)
            assert not other.is_alive(), "the other close() never returned"
        return bytearray(64)

    def release(self, buff):
        pass


svc = mod.AIOService()
share = ClosingShare()
a, b = socket.socketpair()
conn = svc.bind(a, share_buff=share)
conn.recv("r", None)
b.send(b"data")
if where in ("collector", "racing"):
    # the collecting thread polls: acquire() runs in it
    try:
        res = svc.get_complete_status(timeout=5)
        print("returned", res)
    except ServiceClosed:
        pass
else:
    # nobody collects: a worker polls and runs acquire()
    t0 = time.monotonic()
    while not svc.closed and time.monotonic() - t0 < 5:
        time.sleep(0.01)
assert svc.closed, "not closed"
svc.close()
assert share.threads, "acquire() never ran"
print("OK", where, share.threads[0].startswith("goaio"))
"""


@pytest.mark.parametrize("where", ["collector", "worker", "racing"])
def test_close_from_inside_acquire(backend, where):
    proc = run_python(CLOSE_IN_CALLBACK, argv=[backend.name, where], timeout=30)
    assert proc.returncode == 0, (proc.stdout, proc.stderr[-3000:])
    assert f"OK {where}" in proc.stdout, proc.stdout


# ---------------------------------------------------------------- item 10: socket closed behind our back

def _socket_on(fd):
    """A new socket pair whose first socket got fd (the number just freed)."""
    held = []
    try:
        for _ in range(64):
            x, y = socket.socketpair()
            if x.fileno() == fd:
                return x, y
            if y.fileno() == fd:
                return y, x
            held += [x, y]
        pytest.skip(f"fd {fd} was not reused")
    finally:
        for s in held:
            s.close()


def _assert_bad_fd_or_closed(err):
    assert isinstance(err, (OSError, ConnClosed)), err
    if isinstance(err, OSError) and not isinstance(err, ConnClosed):
        assert err.errno == errno.EBADF, err


def test_post_after_socket_closed_behind_our_back(backend, svc, pairs):
    sock, peer = pairs("tcp")
    conn = svc.bind(sock)
    conn.recv("pending", bytearray(8))
    fd = sock.fileno()
    sock.close()                      # behind goaio's back
    new, new_peer = _socket_on(fd)    # an unrelated socket gets the number
    try:
        try:
            conn.send("leak", b"LEAKED BYTES")
        except ConnClosed:
            pass
        else:
            res = collect_one(svc)
            if res.context == "leak":
                _assert_bad_fd_or_closed(res.err)
        new_peer.settimeout(0.3)
        with pytest.raises(socket.timeout):
            data = new_peer.recv(64)
            pytest.fail(f"the closed connection's bytes reached another socket: {data!r}")
        # the receive that was pending completes, with EBADF or ConnClosed
        got = {}
        deadline = time.monotonic() + WAIT
        while "pending" not in got and time.monotonic() < deadline:
            for r in svc.get_complete_statuses(8, timeout=0.2):
                got[r.context] = r
        if "pending" not in got:
            conn.close()
            got["pending"] = collect_one(svc)
        _assert_bad_fd_or_closed(got["pending"].err)
    finally:
        conn.close()
        new.close()
        new_peer.close()


def test_rebinding_a_number_freed_behind_our_back(backend, svc, pairs):
    sock, peer = pairs("tcp")
    conn = svc.bind(sock)
    conn.recv("pending", bytearray(8))
    fd = sock.fileno()
    sock.close()                      # behind goaio's back
    new, new_peer = _socket_on(fd)
    try:
        conn2 = svc.bind(new)         # not "already bound"
    except BaseException:
        conn.close()                  # (frees the number for the tests that follow)
        new.close()
        new_peer.close()
        raise
    assert conn2.fd == fd
    # the stale connection is closed; its receive completed with EBADF
    res = collect_one(svc)
    assert res.context == "pending", res
    _assert_bad_fd_or_closed(res.err)
    assert conn.closed
    with pytest.raises(ConnClosed):
        conn.send("x", b"x")
    # the new connection works, and only it reaches its peer
    conn2.send("s", b"hello")
    conn2.recv("r", bytearray(8))
    new_peer.sendall(b"back")
    got = {r.context: r for r in collect(svc, 2)}
    assert got["s"].err is None and got["r"].err is None, got
    assert new_peer.recv(64) == b"hello"
    conn2.close()
    new_peer.close()


# ---------------------------------------------------------------- item 17: reset with receives pending

def test_reset_fails_every_pending_receive_alike(backend, svc, connect):
    """Every receive pending when the peer resets completes with the reset
    error; one posted afterwards gets what the socket then says (EOF)."""
    conn, peer = connect("tcp")
    for i in range(3):
        conn.recv(i, bytearray(8))
    assert svc.get_complete_status(timeout=0.1) is None
    reset(peer)
    got = sorted(collect(svc, 3), key=lambda r: r.context)
    assert [type(r.err) for r in got] == [ConnectionResetError] * 3, got
    assert [r.bytes_transferred for r in got] == [0, 0, 0]
    conn.recv("later", bytearray(8))
    res = collect_one(svc)
    assert type(res.err) is EOFError, res
    assert str(res.err) == _messages.PEER_CLOSED
    conn.close()
