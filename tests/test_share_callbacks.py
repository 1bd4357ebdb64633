"""share_buff callbacks that misbehave: acquire() raising anything (a
BaseException too), returning a buffer the library cannot use, release()
raising. Nothing is lost, no service thread dies, errors nobody can catch go
to sys.unraisablehook.
"""

import sys
import threading
import time

import pytest

from support import WAIT, collect_one, wait_until


class Stop(BaseException):
    """Not an Exception: what a KeyboardInterrupt or SystemExit looks like."""


class RaisingAcquire:
    def __init__(self, exc):
        self.exc = exc
        self.calls = 0

    def acquire(self):
        self.calls += 1
        raise self.exc

    def release(self, buff):
        pass


def service_threads_alive(svc):
    return svc._stats()["threads"]


@pytest.mark.parametrize("exc", [Stop("from acquire"), KeyboardInterrupt(), SystemExit(3)],
                         ids=["BaseException", "KeyboardInterrupt", "SystemExit"])
def test_acquire_raising_a_base_exception_completes_the_receive(backend, svc, connect, exc):
    """The receive completes with that very exception as err; the worker
    thread that ran acquire() lives on and serves the next receive."""
    share = RaisingAcquire(exc)
    conn, peer = connect(share_buff=share)
    conn.recv("r")
    time.sleep(0.05)  # the worker, not a collector, meets the data first
    peer.sendall(b"data")
    res = collect_one(svc)
    assert res.context == "r"
    assert res.err is exc
    assert res.buff is None and res.bytes_transferred == 0
    assert service_threads_alive(svc) == 1
    # the service still works, and the data is still there
    conn.recv("plain", bytearray(8))
    res = collect_one(svc)
    assert (res.context, res.err, bytes(res.buff[:4])) == ("plain", None, b"data")


def test_acquire_raising_in_a_collector_thread(backend, svc, connect):
    """A non-main collector that does the IO itself delivers the exception as
    the result too, and is not interrupted by it."""
    share = RaisingAcquire(Stop("in the collector"))
    conn, peer = connect(share_buff=share)
    got = []
    errors = []

    def run():
        try:
            got.append(svc.get_complete_status(timeout=WAIT))
        except BaseException as e:  # noqa: BLE001 - the test reports it
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    time.sleep(0.1)
    conn.recv("r")
    peer.sendall(b"x")
    t.join(WAIT)
    assert not errors, errors
    assert got and isinstance(got[0].err, Stop)


class Strided:
    """acquire() returns a non-contiguous view."""

    def __init__(self):
        self.raw = bytearray(64)

    def acquire(self):
        return memoryview(self.raw)[::2]

    def release(self, buff):
        pass


class ReadOnly:
    def acquire(self):
        return b"read-only bytes"

    def release(self, buff):
        pass


class Released:
    def acquire(self):
        m = memoryview(bytearray(16))
        m.release()
        return m

    def release(self, buff):
        pass


def test_acquire_non_contiguous_completes_with_buffer_error(backend, svc, connect):
    """Decided: a non-contiguous buffer from acquire() is BufferError (as
    posting one is)."""
    conn, peer = connect(share_buff=Strided())
    conn.recv("r")
    peer.sendall(b"x")
    res = collect_one(svc)
    assert type(res.err) is BufferError, repr(res.err)
    assert res.buff is None


def test_acquire_read_only_completes_with_type_error(backend, svc, connect):
    conn, peer = connect(share_buff=ReadOnly())
    conn.recv("r")
    peer.sendall(b"x")
    res = collect_one(svc)
    assert type(res.err) is TypeError, repr(res.err)
    assert "share_buff.acquire() returned an unusable buffer" in str(res.err)


class RaisingRelease:
    """A pool whose release() raises for the buffers it is given back."""

    def __init__(self):
        self.released = []

    def acquire(self):
        return bytearray(16)

    def release(self, buff):
        self.released.append(buff)
        raise RuntimeError("release failed")



@pytest.fixture
def unraisable(monkeypatch):
    got = []
    monkeypatch.setattr(sys, "unraisablehook", got.append)
    return got


def test_raising_release_of_a_failed_receive_reaches_unraisablehook(backend, svc, connect, unraisable):
    """The library gives back the buffer of a receive that failed (here: the
    peer reset); release() raises: the result is delivered all the same and
    the error goes to sys.unraisablehook."""
    import socket
    import struct

    share = RaisingRelease()
    conn, peer = connect(share_buff=share)
    conn.recv("r")
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()
    res = collect_one(svc)
    assert res.context == "r" and isinstance(res.err, OSError), res.err
    wait_until(lambda: unraisable, msg="release()'s error reached sys.unraisablehook")
    args = unraisable[0]
    assert isinstance(args.exc_value, RuntimeError) and str(args.exc_value) == "release failed"
    assert len(share.released) == 1
    assert service_threads_alive(svc) == 1


def test_raising_release_at_close_does_not_stop_the_close(backend, pairs, unraisable):
    """svc.close() gives back the share buffers of results never collected:
    a release() that raises is reported, and the close goes on to the end."""
    share = RaisingRelease()
    svc = backend.AIOService()
    try:
        conns = []
        for i in range(3):
            sock, peer = pairs("tcp")
            c = svc.bind(sock, share_buff=share)
            conns.append(c)
            c.recv(i)
            peer.sendall(b"x")
        wait_until(lambda: svc._stats()["live_ops"] == 0, msg="the receives completed")
    finally:
        svc.close()
    assert svc._stats()["threads"] == 0 and svc._stats()["conns"] == 0
    assert all(c.closed for c in conns)
    assert len(share.released) == 3
    assert len(unraisable) == 3
    assert all(str(a.exc_value) == "release failed" for a in unraisable)
