"""svc.close() from several threads at once, and from inside a callback: every
call returns only once the service is closed (a second call waits for the
first), and none deadlocks.
"""

import textwrap
import threading
import time

import pytest

from support import WAIT, run_python, wait_until


class SlowAcquire:
    """acquire() blocks until ``go`` is set: the service thread running it
    holds the poll, and a close must wait for it."""

    def __init__(self):
        self.go = threading.Event()
        self.entered = threading.Event()
        self.returned = False

    def acquire(self):
        self.entered.set()
        self.go.wait(WAIT)
        self.returned = True
        return bytearray(16)

    def release(self, buff):
        pass


def test_second_close_returns_only_when_the_service_is_closed(backend, pairs):
    share = SlowAcquire()
    svc = backend.AIOService()
    conns = []
    for i in range(20):
        sock, peer = pairs("tcp")
        c = svc.bind(sock, share_buff=share if i == 0 else None)
        conns.append(c)
        c.recv(i) if i == 0 else c.recv(i, bytearray(8))
        if i == 0:
            peer.sendall(b"x")
    assert share.entered.wait(WAIT), "the worker never called acquire()"
    first = threading.Thread(target=svc.close)
    first.start()
    time.sleep(0.1)  # the first close now waits for the worker
    threading.Timer(0.3, share.go.set).start()
    t0 = time.monotonic()
    svc.close()  # the second call, while the first waits
    took = time.monotonic() - t0
    assert share.returned, f"the second close returned after {took:.3f}s, before the first ended"
    st = svc._stats()
    assert st["threads"] == 0 and st["conns"] == 0, st
    assert all(c.closed for c in conns)
    first.join(WAIT)
    assert not first.is_alive()


def test_concurrent_closes_all_wait(backend, pairs):
    svc = backend.AIOService(workers=2)
    conns = []
    for i in range(200):
        sock, _ = pairs("tcp")
        c = svc.bind(sock)
        c.recv(i, bytearray(8))
        conns.append(c)
    after = []
    barrier = threading.Barrier(4)

    def close():
        barrier.wait(WAIT)
        svc.close()
        after.append((sum(1 for c in conns if not c.closed), svc._stats()["threads"]))

    threads = [threading.Thread(target=close) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert after == [(0, 0)] * 4


@pytest.mark.parametrize("where", ["worker", "collector"])
def test_close_from_inside_acquire_does_not_deadlock(backend, where):
    """share_buff.acquire() (run by a service thread, holding the connection)
    calls svc.close(): no deadlock, the service ends closed with no thread
    left, and interpreter exit does not hang."""
    code = textwrap.dedent(f"""
        import socket, threading, time
        import goaio
        svc = goaio.AIOService()
        a, b = socket.socketpair()

        class CloseInAcquire:
            def acquire(self):
                svc.close()
                return bytearray(16)

            def release(self, buff):
                pass

        c = svc.bind(a, share_buff=CloseInAcquire())
        c.recv("r")
        if {where!r} == "collector":
            got = []
            def collect():
                try:
                    got.append(svc.get_complete_status(timeout=5))
                except goaio.ServiceClosed:
                    got.append("closed")
            t = threading.Thread(target=collect)
            t.start()
            time.sleep(0.1)
            b.send(b"x")
            t.join(5)
            assert got == ["closed"], got
        else:
            time.sleep(0.1)
            b.send(b"x")
        time.sleep(0.2)
        assert svc.closed
        svc.close()  # returns when the close the callback started is over
        st = svc._stats()
        assert st["threads"] == 0 and st["conns"] == 0, st
        print("ok")
    """)
    proc = run_python(code, backend_name=backend.name, timeout=8)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
