"""goaio.aio: loop.sock_connect and loop.sock_accept wait on goaio, on every
backend (goaio/_aio_sockconn.py, docs/aio.md "sock_* on goaio")."""

import asyncio
import os
import socket
import tempfile
import time

import pytest

import goaio.aio
from support import WAIT, on_asyncio_loop
from test_aio_net import loop, run, until  # noqa: F401 - the same fixture and helpers


def _watched(loop, sock):
    """Is sock's fd in asyncio's selector (a readiness wait)?"""
    return sock.fileno() in loop._selector.get_map()


def _full_listener():
    """A listener whose accept queue is full: a connect to it waits (the
    kernel drops its SYN and retries it a second later)."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(0)
    fillers = []
    port = ls.getsockname()[1]
    for _ in range(8):
        c = socket.socket()
        c.setblocking(False)
        try:
            c.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(c)
    return ls, fillers


async def _connect_waiting(loop, port):
    """A sock_connect to a full listener's port, waiting on goaio."""
    c = socket.socket()
    c.setblocking(False)
    task = asyncio.ensure_future(loop.sock_connect(c, ("127.0.0.1", port)))
    await until(lambda: loop.service.stats()["pending_connect"] == 1, "a goaio connect wait")
    return c, task


async def _accept_while(ls, busy):
    """Accept on ls (non-blocking) as long as busy() holds: room in its
    queue lets the kernel's SYN retry through. The sockets accepted."""
    ls.setblocking(False)
    accepted = []
    while busy():
        try:
            accepted.append(ls.accept()[0])
        except BlockingIOError:
            pass
        await asyncio.sleep(0.01)
    return accepted


# -- sock_connect --

def test_sock_connect_waits_on_goaio(loop):
    ls, fillers = _full_listener()
    port = ls.getsockname()[1]

    async def main():
        c, task = await _connect_waiting(loop, port)
        assert not task.done()
        assert not _watched(loop, c)        # no selector writer: goaio waits
        # room in the queue: the kernel's SYN retry gets through
        accepted = await _accept_while(ls, lambda: not task.done())
        assert await task is None
        assert c.getpeername() == ("127.0.0.1", port)
        # the socket is the user's, connected; goaio's duplicate is closed
        st = loop.service.stats()
        assert st["pending_connect"] == 0 and st["connections"] == 0
        await loop.sock_sendall(c, b"ping")
        mine = [a for a in accepted if a.getpeername() == c.getsockname()]
        while not mine:
            await asyncio.sleep(0.01)
            try:
                a = ls.accept()[0]
            except BlockingIOError:
                continue
            accepted.append(a)
            if a.getpeername() == c.getsockname():
                mine.append(a)
        mine[0].settimeout(WAIT)
        assert mine[0].recv(4) == b"ping"
        for s in [c] + accepted:
            s.close()

    try:
        run(loop, main())
    finally:
        for s in fillers + [ls]:
            s.close()


def test_sock_connect_at_once_and_data(loop):
    ls = socket.create_server(("127.0.0.1", 0))
    port = ls.getsockname()[1]

    async def main():
        c = socket.socket()
        c.setblocking(False)
        await loop.sock_connect(c, ("127.0.0.1", port))
        a, _ = ls.accept()
        a.sendall(b"hello")
        assert await loop.sock_recv(c, 5) == b"hello"
        assert loop.service.stats()["connections"] == 0
        a.close()
        c.close()
    try:
        run(loop, main())
    finally:
        ls.close()


def test_sock_connect_refused_is_asyncios_error(loop):
    ls = socket.create_server(("127.0.0.1", 0))
    addr = ls.getsockname()
    ls.close()

    async def attempt(lp):
        c = socket.socket()
        c.setblocking(False)
        try:
            await lp.sock_connect(c, addr)
        except OSError as exc:
            return type(exc), exc.errno, str(exc)
        finally:
            c.close()
        return None

    got = run(loop, attempt(loop))
    want = on_asyncio_loop(attempt)
    assert got == want
    assert got[0] is ConnectionRefusedError and "Connect call failed" in got[2]
    assert loop.service.stats()["connections"] == 0


def test_sock_connect_unix_refused_at_once(loop):
    path = os.path.join(tempfile.mkdtemp(prefix="goaio-sockconn"), "s")

    async def main():
        c = socket.socket(socket.AF_UNIX)
        c.setblocking(False)
        with pytest.raises(FileNotFoundError):
            await loop.sock_connect(c, path)
        c.close()
    run(loop, main())
    os.rmdir(os.path.dirname(path))


def test_cancelled_sock_connect_leaves_nothing(loop):
    ls, fillers = _full_listener()
    port = ls.getsockname()[1]

    async def main():
        c, task = await _connect_waiting(loop, port)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        c.close()
        # goaio's wait ends with the kernel's connect (let it through)
        accepted = await _accept_while(ls, lambda: loop.service.stats()["pending_connect"])
        try:
            # the connect's completion (a connection goaio then closes, nobody
            # waits for it) may still be on its way to the loop
            await until(lambda: loop.service.stats()["connections"] == 0,
                        "the cancelled connect's connection closed")
        finally:
            for s in accepted:
                s.close()
    try:
        run(loop, main())
    finally:
        for s in fillers + [ls]:
            s.close()


# -- sock_accept --

@pytest.mark.parametrize("family", ["tcp", "unix"])
def test_sock_accept_waits_on_goaio(loop, family):
    if family == "tcp":
        ls = socket.create_server(("127.0.0.1", 0))
        where = ls.getsockname()
    else:
        where = os.path.join(tempfile.mkdtemp(prefix="goaio-sockconn"), "s")
        ls = socket.socket(socket.AF_UNIX)
        ls.bind(where)
        ls.listen(8)
    ls.setblocking(False)

    async def main():
        task = asyncio.ensure_future(loop.sock_accept(ls))
        await until(lambda: loop.service.stats()["pending_accept"] == 1, "a goaio accept")
        assert loop.service.stats()["listeners"] == 1
        assert not _watched(loop, ls)
        c = socket.socket(ls.family)
        c.settimeout(WAIT)
        c.connect(where)
        s, addr = await task
        # the listener lived only as long as the call waited
        st = loop.service.stats()
        assert st["listeners"] == 0 and st["connections"] == 0
        assert isinstance(s, socket.socket) and s.gettimeout() == 0
        assert s.family == ls.family
        if family == "tcp":
            assert addr == c.getsockname()
        else:
            assert addr in ("", b"", None) or isinstance(addr, (str, bytes))
        c.sendall(b"abc")
        assert await loop.sock_recv(s, 3) == b"abc"
        await loop.sock_sendall(s, b"xyz")
        assert c.recv(3) == b"xyz"
        s.close()
        assert c.recv(1) == b""
        c.close()
    try:
        run(loop, main())
    finally:
        ls.close()
        if family == "unix":
            os.unlink(where)
            os.rmdir(os.path.dirname(where))


def test_sock_accept_ready_at_once(loop):
    ls = socket.create_server(("127.0.0.1", 0))
    ls.setblocking(False)
    c = socket.create_connection(ls.getsockname())

    async def main():
        s, addr = await loop.sock_accept(ls)
        assert addr == c.getsockname()
        assert loop.service.stats()["accepted"] == 0     # no goaio wait was needed
        s.close()
    try:
        run(loop, main())
    finally:
        c.close()
        ls.close()


def test_connection_accepted_for_a_cancelled_call_goes_to_the_next(loop):
    ls = socket.create_server(("127.0.0.1", 0))
    ls.setblocking(False)

    async def main():
        task = asyncio.ensure_future(loop.sock_accept(ls))
        await until(lambda: loop.service.stats()["pending_accept"] == 1, "a goaio accept")
        c = socket.create_connection(ls.getsockname())
        # goaio accepts it (the loop's collector does the IO and keeps the
        # completion, not yielding to the loop), the call is cancelled
        # before it is handed over
        deadline = time.monotonic() + WAIT
        while not loop._goaio.take():
            assert time.monotonic() < deadline, "goaio's accept"
            time.sleep(0.001)       # (pure: its worker accepts)
        loop._goaio.dirty = True
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.01)
        assert len(loop._goaio_accepted[ls]) == 1       # kept, not closed
        # the kernel's queue is empty now: the next call gets the one goaio holds
        s, addr = await loop.sock_accept(ls)
        assert addr == c.getsockname()
        c.sendall(b"kept")
        assert await loop.sock_recv(s, 4) == b"kept"
        s.close()
        c.close()
        assert loop.service.stats()["listeners"] == 0
    try:
        run(loop, main())
    finally:
        ls.close()


def test_loop_closed_with_a_sock_accept_waiting(backend):
    lp = goaio.aio.Loop(backend=backend.module)
    ls = socket.create_server(("127.0.0.1", 0))
    ls.setblocking(False)
    task = lp.create_task(lp.sock_accept(ls))
    lp.run_until_complete(asyncio.sleep(0.02))
    assert lp.service.stats()["listeners"] == 1
    task.cancel()
    lp.run_until_complete(asyncio.sleep(0))
    lp.close()
    assert lp.service.closed
    ls.close()


def test_switched_off_is_asyncios_readiness_code(loop):
    loop.goaio_sock = False
    ls = socket.create_server(("127.0.0.1", 0))
    ls.setblocking(False)

    async def main():
        task = asyncio.ensure_future(loop.sock_accept(ls))
        await asyncio.sleep(0.02)
        assert _watched(loop, ls) and loop.service.stats()["listeners"] == 0
        c = socket.socket()
        c.setblocking(False)
        await loop.sock_connect(c, ls.getsockname())
        s, _ = await task
        s.close()
        c.close()
    try:
        run(loop, main())
    finally:
        ls.close()
