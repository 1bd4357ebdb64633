"""goaio.aio: loop.sock_recv / sock_recv_into / sock_sendall on goaio, on
every backend (goaio/_aio_sock.py; docs/aio.md, "sock_* on goaio")."""

import asyncio
import os
import socket
import struct
import threading
import time

import pytest

import goaio.aio
from support import WAIT, close_aio_loop


@pytest.fixture
def loop(backend):
    lp = goaio.aio.Loop(backend=backend.module)
    asyncio.set_event_loop(lp)
    yield lp
    asyncio.set_event_loop(None)
    close_aio_loop(lp)
    assert " out=0 " in repr(lp._pool), repr(lp._pool)


@pytest.fixture
def pair():
    """A connected TCP pair over loopback: (ours, non-blocking; peer, blocking with a timeout)."""
    lst = socket.create_server(("127.0.0.1", 0))
    a = socket.create_connection(lst.getsockname())
    b, _ = lst.accept()
    lst.close()
    a.setblocking(False)
    b.settimeout(WAIT)
    yield a, b
    a.close()
    b.close()


def run(loop, coro):
    return loop.run_until_complete(asyncio.wait_for(coro, WAIT))


def ops(loop):
    return loop.service.stats()["ops_completed"]


async def settle(loop):
    """Until the borrowed connections are released (one iteration after idle)."""
    for _ in range(100):
        if not loop.service.stats()["connections"]:
            return
        await asyncio.sleep(0)
    raise AssertionError(loop.service.stats())


def test_sock_recv_waits_on_goaio(loop, pair):
    a, b = pair

    async def main():
        t = asyncio.ensure_future(loop.sock_recv(a, 100))
        await asyncio.sleep(0.05)
        assert not t.done()
        assert loop.service.stats()["connections"] == 1   # the borrowed connection
        b.sendall(b"hello")
        assert await t == b"hello"
        assert ops(loop) == 1
        await settle(loop)
        # the socket is the user's, still open and working
        b.sendall(b"again")
        assert await loop.sock_recv(a, 100) == b"again"
    run(loop, main())


def test_sock_recv_into_waits_on_goaio(loop, pair):
    a, b = pair

    async def main():
        buf = bytearray(10)
        t = asyncio.ensure_future(loop.sock_recv_into(a, memoryview(buf)[2:]))
        await asyncio.sleep(0.02)
        b.sendall(b"abcdef")
        assert await t == 6
        assert buf == b"\0\0abcdef\0\0"
        assert ops(loop) == 1
        # larger than a pool buffer: a share-buffer receive for sock_recv
        t = asyncio.ensure_future(loop.sock_recv(a, 1 << 20))
        await asyncio.sleep(0.02)
        b.sendall(b"x" * 1000)
        got = await t
        assert got and got == b"x" * len(got)
        assert ops(loop) == 2
        await settle(loop)
    run(loop, main())


def test_sock_recv_at_once_when_data_is_there(loop, pair):
    a, b = pair
    b.sendall(b"ready")
    time.sleep(0.05)

    async def main():
        assert await loop.sock_recv(a, 100) == b"ready"
    run(loop, main())
    assert ops(loop) == 0 and loop.service.stats()["connections"] == 0


def test_user_close_really_closes(loop, pair):
    a, b = pair

    async def main():
        t = asyncio.ensure_future(loop.sock_recv(a, 100))
        await asyncio.sleep(0.02)
        b.sendall(b"1")
        assert await t == b"1"
        # close while the borrowed connection is still there, and after
        a.close()
        assert b.recv(10) == b""      # the peer sees the FIN
        await settle(loop)
    run(loop, main())


def test_user_close_after_release(loop, pair):
    a, b = pair

    async def main():
        t = asyncio.ensure_future(loop.sock_sendall(a, b"z" * (8 << 20)))
        got = 0
        while got < 8 << 20:
            got += len(await loop.run_in_executor(None, b.recv, 1 << 20))
        await t
        await settle(loop)
        fd = a.fileno()
        a.close()
        assert b.recv(10) == b""
        with pytest.raises(OSError):
            os.fstat(fd)
    run(loop, main())


@pytest.mark.parametrize("into", [False, True])
def test_cancelled_recv_before_data_loses_nothing(loop, pair, into):
    a, b = pair

    async def recv(n):
        if into:
            buf = bytearray(n)
            k = await loop.sock_recv_into(a, buf)
            return bytes(buf[:k])
        return await loop.sock_recv(a, n)

    async def main():
        t = asyncio.ensure_future(recv(100))
        await asyncio.sleep(0.02)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        b.sendall(b"kept")
        assert await recv(100) == b"kept"
        await settle(loop)
    run(loop, main())


@pytest.mark.parametrize("into", [False, True])
def test_cancelled_recv_after_goaio_read_loses_nothing(loop, pair, into):
    a, b = pair

    async def recv(n):
        if into:
            buf = bytearray(n)
            k = await loop.sock_recv_into(a, buf)
            return bytes(buf[:k])
        return await loop.sock_recv(a, n)

    async def main():
        t = asyncio.ensure_future(recv(3))
        await asyncio.sleep(0.02)
        b.sendall(b"abcdefg")
        time.sleep(0.05)
        # goaio reads now (the loop thread does the IO) and the result waits
        # undispatched: the caller is cancelled after the bytes left the kernel
        for _ in range(50):
            loop._goaio.take()
            if ops(loop):
                break
            time.sleep(0.01)
        assert ops(loop) == 1
        loop._goaio.dirty = True          # (dispatched before the loop next waits)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        assert await recv(2) == b"ab"     # the cancelled receive's bytes come first
        assert await recv(1) == b"c"
        assert await recv(100) == b"defg"
        await settle(loop)
    run(loop, main())


@pytest.mark.parametrize("into", [False, True])
def test_task_cancelled_after_its_result_loses_nothing(loop, pair, into):
    # the receive completed, its task is cancelled before it resumes: asyncio's
    # own loop would drop those bytes with the task; goaio's keeps them
    a, b = pair

    async def recv(n):
        if into:
            buf = bytearray(n)
            k = await loop.sock_recv_into(a, buf)
            return bytes(buf[:k])
        return await loop.sock_recv(a, n)

    async def main():
        t = asyncio.ensure_future(recv(3))
        await asyncio.sleep(0.02)
        b.sendall(b"abcdef")
        time.sleep(0.05)
        for _ in range(50):
            if loop._goaio.take():
                break
            time.sleep(0.01)
        loop._goaio.dispatch()        # the result is the future's now
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        assert await recv(100) == b"abc"
        assert await recv(100) == b"def"
        await settle(loop)
    run(loop, main())


def test_concurrent_recvs_in_order(loop, pair):
    a, b = pair

    async def main():
        ts = [asyncio.ensure_future(loop.sock_recv(a, 3)) for _ in range(4)]
        await asyncio.sleep(0.02)
        b.sendall(b"aaabbbcccddd")
        assert await asyncio.gather(*ts) == [b"aaa", b"bbb", b"ccc", b"ddd"]
        await settle(loop)
    run(loop, main())


def test_sendall_many_mib_to_slow_reader(loop, pair):
    a, b = pair
    payload = os.urandom(16 << 20)
    got = bytearray()

    def reader():
        while len(got) < len(payload):
            chunk = b.recv(256 * 1024)
            if not chunk:
                return
            got.extend(chunk)
            time.sleep(0.002)

    th = threading.Thread(target=reader)
    th.start()

    async def main():
        await loop.sock_sendall(a, payload)
        assert ops(loop) >= 1          # the rest went as a goaio send
        await settle(loop)
    try:
        run(loop, main())
    finally:
        th.join(WAIT)
    assert bytes(got) == payload


def test_concurrent_sendalls_in_order(loop, pair):
    a, b = pair
    parts = [bytes([65 + i]) * (3 << 20) for i in range(3)]
    got = bytearray()

    def reader():
        while len(got) < sum(map(len, parts)):
            chunk = b.recv(1 << 20)
            if not chunk:
                return
            got.extend(chunk)

    th = threading.Thread(target=reader)
    th.start()

    async def main():
        await asyncio.gather(*(loop.sock_sendall(a, p) for p in parts))
    try:
        run(loop, main())
    finally:
        th.join(WAIT)
    assert bytes(got) == b"".join(parts)


def test_sendall_cancelled_then_next_sendall(loop, pair):
    a, b = pair

    async def main():
        t = asyncio.ensure_future(loop.sock_sendall(a, b"q" * (16 << 20)))
        await asyncio.sleep(0.05)
        assert not t.done()
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        t2 = asyncio.ensure_future(loop.sock_sendall(a, b"END"))
        data = bytearray()
        while not data.endswith(b"END"):
            chunk = await loop.run_in_executor(None, b.recv, 1 << 20)
            assert chunk
            data += chunk
        await t2
        body = bytes(data[:-3])
        assert body == b"q" * len(body)
        assert len(body) < 16 << 20
        await settle(loop)
    run(loop, main())


def test_recv_eof_and_reset(loop, pair, backend):
    a, b = pair

    async def main():
        t = asyncio.ensure_future(loop.sock_recv(a, 10))
        await asyncio.sleep(0.02)
        b.shutdown(socket.SHUT_WR)
        assert await t == b""
        buf = bytearray(4)
        assert await loop.sock_recv_into(a, buf) == 0
    run(loop, main())


def test_recv_reset(loop, pair):
    a, b = pair

    async def main():
        t = asyncio.ensure_future(loop.sock_recv(a, 10))
        await asyncio.sleep(0.02)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        b.close()
        with pytest.raises(ConnectionResetError):
            await t
        await settle(loop)
    run(loop, main())


def test_sendall_to_closed_peer_raises(loop, pair):
    a, b = pair

    async def main():
        b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        b.close()
        await asyncio.sleep(0.02)
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            for _ in range(100):
                await loop.sock_sendall(a, b"x" * 65536)
        await settle(loop)
    run(loop, main())


def test_socket_with_transport_raises(loop, pair):
    a, b = pair

    async def main():
        tr, _ = await loop.create_connection(asyncio.Protocol, sock=a)
        with pytest.raises(RuntimeError, match="is used by transport"):
            await loop.sock_recv(a, 10)
        with pytest.raises(RuntimeError, match="is used by transport"):
            await loop.sock_recv_into(a, bytearray(10))
        tr.close()
        await asyncio.sleep(0.02)
    run(loop, main())


def test_transport_after_sock_calls(loop, pair):
    a, b = pair

    class P(asyncio.Protocol):
        def __init__(self):
            self.data = bytearray()
            self.got = loop.create_future()

        def data_received(self, data):
            self.data += data
            if self.data.endswith(b"!") and not self.got.done():
                self.got.set_result(None)

    async def main():
        t = asyncio.ensure_future(loop.sock_recv(a, 10))
        await asyncio.sleep(0.02)
        b.sendall(b"first")
        assert await t == b"first"
        # taken over at once, before the borrowed connection was released
        tr, pr = await loop.create_connection(P, sock=a)
        b.sendall(b"second!")
        await pr.got
        assert pr.data == b"second!"
        tr.close()
        await asyncio.sleep(0.02)
    run(loop, main())


def test_add_reader_after_sock_recv(loop, pair):
    a, b = pair

    async def main():
        t = asyncio.ensure_future(loop.sock_recv(a, 10))
        await asyncio.sleep(0.02)
        b.sendall(b"one")
        assert await t == b"one"
        ready = loop.create_future()
        loop.add_reader(a, lambda: ready.done() or ready.set_result(a.recv(10)))
        b.sendall(b"two")
        assert await ready == b"two"
        loop.remove_reader(a)
        # and sock_recv again after
        t = asyncio.ensure_future(loop.sock_recv(a, 10))
        await asyncio.sleep(0.02)
        b.sendall(b"three")
        assert await t == b"three"
        await settle(loop)
    run(loop, main())


def test_unix_socketpair(loop):
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)

    async def main():
        t = asyncio.ensure_future(loop.sock_recv(a, 10))
        await asyncio.sleep(0.02)
        await loop.sock_sendall(b, b"unix")
        assert await t == b"unix"
        await settle(loop)
    try:
        run(loop, main())
    finally:
        a.close()
        b.close()


def test_datagram_socket_stays_asyncio(loop):
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b.connect(a.getsockname())
    a.setblocking(False)
    b.setblocking(False)

    async def main():
        t = asyncio.ensure_future(loop.sock_recv(a, 100))
        await asyncio.sleep(0.02)
        await loop.sock_sendall(b, b"dgram")
        assert await t == b"dgram"
    try:
        run(loop, main())
    finally:
        a.close()
        b.close()
    assert ops(loop) == 0


def test_debug_blocking_socket(loop, pair):
    a, b = pair
    a.setblocking(True)
    loop.set_debug(True)

    async def main():
        with pytest.raises(ValueError, match="non-blocking"):
            await loop.sock_recv(a, 1)
        with pytest.raises(ValueError, match="non-blocking"):
            await loop.sock_sendall(a, b"x")
    run(loop, main())


def test_loop_close_leaves_socket_open(loop, pair):
    a, b = pair

    async def main():
        t = asyncio.ensure_future(loop.sock_recv(a, 10))
        await asyncio.sleep(0.02)
        return t
    t = run(loop, main())
    assert loop.service.stats()["connections"] == 1
    t.cancel()
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    assert a.fileno() >= 0
    a.setblocking(True)
    a.settimeout(WAIT)
    b.sendall(b"after")
    assert a.recv(10) == b"after"


def test_fd_reused_by_another_socket(loop):
    # a socket closed behind a pending call: its fd number, reused, is never
    # read by the old call
    async def main():
        lst = socket.create_server(("127.0.0.1", 0))
        a = socket.create_connection(lst.getsockname())
        b, _ = lst.accept()
        a.setblocking(False)
        t = asyncio.ensure_future(loop.sock_recv(a, 10))
        await asyncio.sleep(0.02)
        fd = a.fileno()
        a.close()
        c = socket.create_connection(lst.getsockname())
        d, _ = lst.accept()
        try:
            c.setblocking(False)
            if c.fileno() == fd:
                t2 = asyncio.ensure_future(loop.sock_recv(c, 10))
                await asyncio.sleep(0.02)
                d.sendall(b"new")
                assert await t2 == b"new"
                with pytest.raises(OSError):
                    await t
            else:
                t.cancel()
        finally:
            for s in (b, c, d, lst):
                s.close()
        await settle(loop)
    run(loop, main())


def test_loop_keeps_no_socket_alive(loop):
    import gc
    import weakref

    lst = socket.create_server(("127.0.0.1", 0))
    a = socket.create_connection(lst.getsockname())
    b, _ = lst.accept()
    lst.close()
    a.setblocking(False)

    async def main():
        t = asyncio.ensure_future(loop.sock_recv(a, 10))
        await asyncio.sleep(0.02)
        b.sendall(b"x")
        assert await t == b"x"
        await settle(loop)
    run(loop, main())
    ref = weakref.ref(a)
    a.close()
    del a
    gc.collect()
    assert ref() is None
    b.settimeout(WAIT)
    assert b.recv(10) == b""
    b.close()


def test_closed_loop(backend, pair):
    # as asyncio's: the call that would block raises RuntimeError on a closed loop
    a, b = pair
    lp = goaio.aio.Loop(backend=backend.module)
    lp.close()
    for coro in (lp.sock_recv(a, 10), lp.sock_recv_into(a, bytearray(10)),
                 lp.sock_sendall(a, b"x" * (64 << 20))):
        with pytest.raises(RuntimeError, match="closed"):
            coro.send(None)
        coro.close()
    ref = asyncio.SelectorEventLoop()
    ref.close()
    with pytest.raises(RuntimeError, match="closed"):
        ref.sock_recv(a, 10).send(None)
