"""goaio.aio's servers accept through a goaio Listener and its client
connects are goaio's posted connect (goaio/_aio_net.py): on every backend."""

import asyncio
import errno
import os
import socket
import sys
import tempfile
import types

import pytest

import goaio.aio
from support import WAIT, close_aio_loop, on_asyncio_loop


@pytest.fixture
def loop(backend):
    lp = goaio.aio.Loop(backend=backend.module)
    asyncio.set_event_loop(lp)
    yield lp
    asyncio.set_event_loop(None)
    close_aio_loop(lp)


def run(loop, coro):
    return loop.run_until_complete(asyncio.wait_for(coro, WAIT))


async def until(pred, what="condition"):
    for _ in range(int(WAIT / 0.005)):
        if pred():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


class Echo(asyncio.Protocol):
    made = 0

    def connection_made(self, transport):
        type(self).made += 1
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


def _active(srv):
    # the Server's count of its transports (3.13: the set of them)
    clients = getattr(srv, "_clients", None)
    return len(clients) if clients is not None else srv._active_count


def _closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def _echo_once(port, data=b"ping"):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(data)
    got = await r.readexactly(len(data))
    w.close()
    await w.wait_closed()
    return got


# -- servers --

def test_server_accepts_through_a_goaio_listener(loop):
    svc = loop.service

    async def main():
        srv = await loop.create_server(Echo, "127.0.0.1", 0)
        st = svc.stats()
        assert st["listeners"] == 1
        assert st["pending_accept"] >= 1
        assert loop._selector.get_map() is not None
        # asyncio's selector does not watch the listening socket: goaio does
        fd = srv.sockets[0].fileno()
        assert fd not in loop._selector.get_map()
        port = srv.sockets[0].getsockname()[1]
        assert await _echo_once(port) == b"ping"
        assert svc.stats()["accepted"] == 1
        srv.close()
        await srv.wait_closed()
        st = svc.stats()
        assert st["listeners"] == 0 and st["pending_accept"] == 0
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
    run(loop, main())


def test_accepted_transport_is_the_loops_transport(loop):
    made = []

    class P(asyncio.Protocol):
        def connection_made(self, transport):
            made.append((transport, loop._transports.get(
                transport.get_extra_info("socket").fileno())))

    async def main():
        srv = await loop.create_server(P, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        c = socket.create_connection(("127.0.0.1", port))
        await until(lambda: made, "connection_made")
        tr, mapped = made[0]
        assert isinstance(tr, goaio.aio.GoaioTransport) and mapped is tr
        assert tr.get_extra_info("peername") == c.getsockname()
        assert tr.get_extra_info("sockname") == ("127.0.0.1", port)
        s = tr.get_extra_info("socket")
        assert s.family == socket.AF_INET and s.type == socket.SOCK_STREAM
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert _active(srv) == 1          # the Server counts it (_attach)
        tr.close()
        c.close()
        await until(lambda: _active(srv) == 0, "detach")
        srv.close()
        await srv.wait_closed()
    run(loop, main())


def test_connection_made_one_iteration_after_the_accept(loop):
    order = []

    class P(asyncio.Protocol):
        def connection_made(self, transport):
            order.append("made")

    async def main():
        srv = await loop.create_server(P, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        orig = loop._goaio_tcls

        def spy(*args):
            tr = orig(*args)
            order.append("transport")
            loop.call_soon(order.append, "next")
            return tr
        loop._goaio_tcls = spy
        try:
            c = socket.create_connection(("127.0.0.1", port))
            await until(lambda: "made" in order, "connection_made")
        finally:
            loop._goaio_tcls = orig
        # asyncio's transports call connection_made with call_soon: after
        # what the accept's own iteration queued before it, never inline
        assert order[0] == "transport" and order.index("made") > 0
        c.close()
        srv.close()
        await srv.wait_closed()
    run(loop, main())


def test_start_serving_false_then_serve_forever(loop):
    svc = loop.service

    async def main():
        srv = await loop.create_server(Echo, "127.0.0.1", 0, start_serving=False)
        assert not srv.is_serving()
        assert svc.stats()["listeners"] == 0
        port = srv.sockets[0].getsockname()[1]
        await srv.start_serving()
        assert srv.is_serving() and svc.stats()["listeners"] == 1
        assert await _echo_once(port) == b"ping"
        task = asyncio.ensure_future(srv.serve_forever())
        await asyncio.sleep(0.02)
        assert await _echo_once(port, b"again") == b"again"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not srv.is_serving()
        await srv.wait_closed()
        assert svc.stats()["listeners"] == 0
        assert srv.sockets == () or srv.sockets == [] or not srv.sockets
    run(loop, main())


def test_serve_forever_on_a_server_not_started(loop):
    async def main():
        srv = await loop.create_server(Echo, "127.0.0.1", 0, start_serving=False)
        port = srv.sockets[0].getsockname()[1]
        task = asyncio.ensure_future(srv.serve_forever())
        await until(lambda: loop.service.stats()["listeners"] == 1, "listener")
        assert await _echo_once(port) == b"ping"
        srv.close()
        with pytest.raises(asyncio.CancelledError):
            await task
        await srv.wait_closed()
    run(loop, main())


def test_close_stops_accepting_and_leaks_nothing(loop):
    svc = loop.service

    async def main():
        Echo.made = 0
        srv = await loop.create_server(Echo, "127.0.0.1", 0, backlog=64)
        port = srv.sockets[0].getsockname()[1]
        assert await _echo_once(port) == b"ping"
        await until(lambda: svc.stats()["connections"] == 0, "first connection gone")
        # connections the kernel completed, some accepted by goaio, some not
        # handed over yet: closing the server serves none of them
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
        srv.close()
        made_at_close = Echo.made
        await srv.wait_closed()
        await asyncio.sleep(0.05)
        assert Echo.made == made_at_close
        # the served ones are open transports, nothing else is left
        await until(lambda: svc.stats()["connections"] == made_at_close - 1, "no leak")
        assert svc.stats()["listeners"] == 0
        for tr in [t for t in list(loop._transports.values())
                   if isinstance(t, goaio.aio.GoaioTransport)]:
            tr.close()
        for c in clients:
            c.settimeout(WAIT)
            try:
                assert c.recv(1) == b""     # closed by the server, or never served
            except ConnectionResetError:
                pass
            c.close()
        await until(lambda: svc.stats()["connections"] == 0, "all closed")
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
    run(loop, main())


def test_many_connections(loop):
    n = 200

    async def one(port, i):
        data = b"%d" % i
        return await _echo_once(port, data) == data

    async def main():
        srv = await loop.create_server(Echo, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        oks = await asyncio.gather(*(one(port, i) for i in range(n)))
        assert all(oks)
        assert loop.service.stats()["accepted"] == n
        srv.close()
        await srv.wait_closed()
    run(loop, main())


def test_factory_that_raises(loop):
    calls = []
    errors = []

    def factory():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("no protocol")
        return Echo()

    async def main():
        loop.set_debug(True)
        loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
        srv = await loop.create_server(factory, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        c = socket.create_connection(("127.0.0.1", port))
        c.settimeout(WAIT)
        await until(lambda: errors, "the factory's error reported")
        assert errors[0]["message"] == "Error on transport creation for incoming connection"
        assert isinstance(errors[0]["exception"], RuntimeError)
        # that connection is closed, the server goes on
        await loop.run_in_executor(None, c.recv, 1)
        c.close()
        assert await _echo_once(port) == b"ping"
        await until(lambda: loop.service.stats()["connections"] == 0, "closed")
        srv.close()
        await srv.wait_closed()
        loop.set_debug(False)
    run(loop, main())


def test_streams_start_server(loop):
    async def handle(r, w):
        w.write(await r.readline())
        await w.drain()
        w.close()

    async def main():
        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        assert loop.service.stats()["listeners"] == 1
        port = srv.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"line\n")
        assert await r.readline() == b"line\n"
        assert await r.read() == b""
        w.close()
        async with srv:
            pass
        await srv.wait_closed()
    run(loop, main())


def test_unix_server_and_connection(loop):
    path = os.path.join(tempfile.mkdtemp(prefix="goaio-aionet"), "s")

    async def main():
        srv = await loop.create_unix_server(Echo, path)
        assert loop.service.stats()["listeners"] == 1
        before = loop.service.stats()["accepted"]
        tr, pr = await loop.create_unix_connection(asyncio.Protocol, path)
        assert isinstance(tr, goaio.aio.GoaioTransport)
        assert tr.get_extra_info("socket").family == socket.AF_UNIX
        await until(lambda: loop.service.stats()["accepted"] == before + 1, "accepted")
        tr.close()
        r, w = await asyncio.open_unix_connection(path)
        w.write(b"unix")
        assert await r.readexactly(4) == b"unix"
        w.close()
        await w.wait_closed()
        srv.close()
        await srv.wait_closed()
        with pytest.raises((FileNotFoundError, ConnectionRefusedError)):
            await loop.create_unix_connection(asyncio.Protocol, path)
    run(loop, main())
    os.rmdir(os.path.dirname(path)) if not os.path.exists(path) else None


def test_two_loops_two_servers_same_protocol(backend):
    # a server on each of two loops: each loop's service serves its own
    loops = [goaio.aio.Loop(backend=backend.module) for _ in range(2)]
    try:
        for lp in loops:
            async def main():
                srv = await lp.create_server(Echo, "127.0.0.1", 0)
                port = srv.sockets[0].getsockname()[1]
                assert await _echo_once(port) == b"ping"
                srv.close()
                await srv.wait_closed()
            lp.run_until_complete(asyncio.wait_for(main(), WAIT))
            assert lp.service.stats()["accepted"] == 1
    finally:
        for lp in loops:
            close_aio_loop(lp)


def _tls_echo_server_check(loop, srv_ctx, cli_ctx, through_goaio):
    import ssl
    made = []

    class P(Echo):
        def connection_made(self, transport):
            super().connection_made(transport)
            made.append(transport)

    async def main():
        srv = await loop.create_server(P, "127.0.0.1", 0, ssl=srv_ctx)
        assert loop.service.stats()["listeners"] == (1 if through_goaio else 0)
        port = srv.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=cli_ctx,
                                             server_hostname="localhost")
        w.write(b"tls")
        assert await r.readexactly(3) == b"tls"
        tr = made[0]
        assert tr.get_extra_info("sslcontext") is srv_ctx
        assert tr.get_extra_info("peername") == w.get_extra_info("sockname")
        s = tr.get_extra_info("socket")
        assert s is not None and s.getsockname() == ("127.0.0.1", port)
        assert _active(srv) == 1
        if through_goaio:
            assert loop.service.stats()["accepted"] == 1
        w.close()
        try:
            await w.wait_closed()
        except (ssl.SSLError, ConnectionError):
            pass
        await until(lambda: _active(srv) == 0, "detach")
        # a client that is not TLS: the handshake fails, the transport is
        # closed, nothing reaches the protocol, the error is reported in debug
        errors = []
        loop.set_debug(True)
        loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
        c = socket.create_connection(("127.0.0.1", port))
        c.sendall(b"GET / HTTP/1.0\r\n\r\n" * 4)
        c.settimeout(WAIT)
        await loop.run_in_executor(None, c.recv, 100)
        c.close()
        if through_goaio:
            await until(lambda: errors, "the handshake error reported")
            assert errors[0]["message"] == "Error on transport creation for incoming connection"
        assert len(made) == 1
        loop.set_debug(False)
        loop.set_exception_handler(None)
        srv.close()
        await srv.wait_closed()
        await until(lambda: loop.service.stats()["connections"] == 0, "all closed")
    run(loop, main())


def test_tls_server_accepts_through_goaio(loop):
    from test_aio import _ssl_contexts
    if not getattr(loop, "goaio_tls", False) or \
            not hasattr(goaio.aio, "_tls_transport_from_conn"):
        pytest.skip("goaio's TLS is not this loop's ssl=")
    srv_ctx, cli_ctx = _ssl_contexts()
    _tls_echo_server_check(loop, srv_ctx, cli_ctx, True)


def test_tls_server_on_asyncios_tls_keeps_asyncios_accept(backend):
    from test_aio import _ssl_contexts
    lp = goaio.aio.Loop(backend=backend.module, goaio_tls=False)
    asyncio.set_event_loop(lp)
    try:
        srv_ctx, cli_ctx = _ssl_contexts()
        _tls_echo_server_check(lp, srv_ctx, cli_ctx, False)
    finally:
        asyncio.set_event_loop(None)
        close_aio_loop(lp)


# -- create_connection --

class _ConnectSpy:
    """Stands for loop._svc: records the connects the loop posts."""

    def __init__(self, svc):
        self._real = svc
        self.connects = []

    def connect(self, ctx, address, **kw):
        self.connects.append(address)
        return self._real.connect(ctx, address, **kw)

    def __getattr__(self, name):
        return getattr(self._real, name)


def test_create_connection_is_a_goaio_connect(loop):
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]
    svc = loop.service
    spy = loop._svc = _ConnectSpy(svc)

    async def main():
        try:
            tr, pr = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        finally:
            loop._svc = svc
        assert spy.connects == [("127.0.0.1", port)]
        assert isinstance(tr, goaio.aio.GoaioTransport)
        assert tr.get_extra_info("peername") == ("127.0.0.1", port)
        sock = tr.get_extra_info("socket")
        assert sock.getpeername() == ("127.0.0.1", port)
        assert tr.get_extra_info("sockname") == sock.getsockname()
        c, _ = lsock.accept()
        tr.write(b"hi")
        c.settimeout(WAIT)
        assert await loop.run_in_executor(None, c.recv, 2) == b"hi"
        tr.close()
        await until(lambda: svc.stats()["connections"] == 0, "closed")
        c.close()
    try:
        run(loop, main())
    finally:
        lsock.close()


@pytest.mark.parametrize("how", ["on the loop", "in a subclass"])
def test_create_connection_goes_through_a_replaced_sock_connect(backend, how):
    # asyncio's create_connection connects through loop.sock_connect; an
    # application (or CPython's test_base_events) that replaces it keeps
    # that: goaio's loop then takes asyncio's path, over the replacement,
    # for create_connection and create_unix_connection alike
    calls = []

    async def sock_connect(self, sock, address):
        calls.append(address)
        raise ConnectionRefusedError(f"refused by the replacement: {address}")

    if how == "on the loop":
        lp = goaio.aio.Loop(backend=backend.module)
        lp.sock_connect = types.MethodType(sock_connect, lp)
    else:
        cls = type("MyLoop", (goaio.aio.Loop,), {"sock_connect": sock_connect})
        lp = cls(backend=backend.module)
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]

    async def main():
        with pytest.raises(ConnectionRefusedError, match="refused by the replacement"):
            await lp.create_connection(asyncio.Protocol, "127.0.0.1", port)
        with pytest.raises(ConnectionRefusedError, match="refused by the replacement"):
            await lp.create_unix_connection(asyncio.Protocol, "/nonexistent/goaio.sock")
        assert lp.service.stats()["pending_connect"] == 0
    try:
        lp.run_until_complete(asyncio.wait_for(main(), WAIT))
    finally:
        lsock.close()
        close_aio_loop(lp)
    assert calls == [("127.0.0.1", port), "/nonexistent/goaio.sock"]


def test_create_connection_refused(loop):
    port = _closed_port()

    async def main():
        with pytest.raises(ConnectionRefusedError) as ei:
            await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        assert str(ei.value) == f"[Errno {errno.ECONNREFUSED}] Connect call failed " \
                                f"('127.0.0.1', {port})"
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        assert loop.service.stats()["connections"] == 0
        assert loop.service.stats()["pending_connect"] == 0
    run(loop, main())


@pytest.mark.parametrize("port", [-1, 70000])
def test_create_connection_port_out_of_range_is_asyncios_error(loop, port):
    async def attempt(lp):
        try:
            await lp.create_connection(asyncio.Protocol, "127.0.0.1", port)
        except Exception as exc:    # noqa: BLE001 - compared below
            return type(exc), str(exc)
        return None

    got = run(loop, attempt(loop))
    want = on_asyncio_loop(attempt)
    assert got == want == (OverflowError, "connect(): port must be 0-65535.")
    assert loop.service.stats()["pending_connect"] == 0


def test_create_connection_tries_each_address(loop):
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]
    bad1, bad2 = _closed_port(), _closed_port()
    answers = {}

    async def getaddrinfo(host, p, *args, **kwargs):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", q))
                for q in answers[host]]

    async def main():
        loop.getaddrinfo = getaddrinfo
        answers["good"] = [bad1, port]
        tr, _ = await loop.create_connection(asyncio.Protocol, "good", 1)
        assert tr.get_extra_info("peername") == ("127.0.0.1", port)
        tr.close()
        answers["bad"] = [bad1, bad2]
        with pytest.raises(OSError) as ei:
            await loop.create_connection(asyncio.Protocol, "bad", 1)
        assert str(ei.value) == (
            f"Multiple exceptions: [Errno {errno.ECONNREFUSED}] Connect call failed "
            f"('127.0.0.1', {bad1}), [Errno {errno.ECONNREFUSED}] Connect call failed "
            f"('127.0.0.1', {bad2})")
        answers["none"] = []
        with pytest.raises(OSError, match="getaddrinfo"):
            await loop.create_connection(asyncio.Protocol, "none", 1)
        if sys.version_info >= (3, 12):
            with pytest.raises(ExceptionGroup) as eg:  # noqa: F821
                await loop.create_connection(asyncio.Protocol, "bad", 1, all_errors=True)
            assert [type(e) for e in eg.value.exceptions] == [ConnectionRefusedError] * 2
        await until(lambda: loop.service.stats()["connections"] == 0, "closed")
    try:
        run(loop, main())
    finally:
        lsock.close()


def test_create_connection_local_addr(loop):
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]

    async def main():
        tr, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port,
                                             local_addr=("127.0.0.1", 0))
        sn = tr.get_extra_info("sockname")
        assert sn[0] == "127.0.0.1" and sn[1] != 0
        c, peer = lsock.accept()
        assert peer == sn
        tr.close()
        c.close()
        lport = _closed_port()
        tr, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port,
                                             local_addr=("127.0.0.1", lport))
        assert tr.get_extra_info("sockname") == ("127.0.0.1", lport)
        tr.close()
        lsock.accept()[0].close()
        # in use: asyncio's error and words
        with pytest.raises(OSError) as ei:
            await loop.create_connection(asyncio.Protocol, "127.0.0.1", port,
                                         local_addr=("127.0.0.1", port))
        assert ei.value.errno == errno.EADDRINUSE
        assert str(("127.0.0.1", port)) in ei.value.strerror
        assert ei.value.strerror.startswith("error while attempting to bind on address")
        # no local address of the family
        with pytest.raises(OSError, match="no matching local address"):
            await loop.create_connection(asyncio.Protocol, "127.0.0.1", port,
                                         local_addr=("::1", 0))
        await until(lambda: loop.service.stats()["connections"] == 0, "closed")
    try:
        run(loop, main())
    finally:
        lsock.close()


def test_cancelled_connect_closes_the_connection(loop):
    # a listener whose queue is full and that never accepts: a connect to it
    # stays in progress (the SYN is dropped and sent again later)
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    addr = lsock.getsockname()
    fillers = []
    svc = loop.service

    async def main():
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(addr)
            fillers.append(s)
        await asyncio.sleep(0.05)
        task = asyncio.ensure_future(loop.create_connection(asyncio.Protocol, *addr))
        await until(lambda: svc.stats()["pending_connect"] == 1, "connect pending")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # make room: the connect completes later (SYN retried), and the loop
        # closes the connection nobody waits for any more
        lsock.setblocking(False)
        accepted = []

        async def drain():
            while svc.stats()["pending_connect"]:
                try:
                    accepted.append(lsock.accept()[0])
                except BlockingIOError:
                    pass
                await asyncio.sleep(0.01)
        await asyncio.wait_for(drain(), WAIT)
        await until(lambda: svc.stats()["connections"] == 0, "the late connection closed")
        assert not [t for t in list(loop._transports.values())
                    if isinstance(t, goaio.aio.GoaioTransport)]
        for s in accepted:
            s.close()
    try:
        run(loop, main())
    finally:
        for s in fillers:
            s.close()
        lsock.close()


def test_sock_and_happy_eyeballs_keep_asyncios_path(loop):
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]
    svc = loop.service
    spy = loop._svc = _ConnectSpy(svc)

    async def main():
        try:
            s = socket.create_connection(("127.0.0.1", port))
            s.setblocking(False)
            tr, _ = await loop.create_connection(asyncio.Protocol, sock=s)
            tr.close()
            tr, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port,
                                                 happy_eyeballs_delay=0.25)
            assert isinstance(tr, goaio.aio.GoaioTransport)
            tr.close()
        finally:
            loop._svc = svc
        assert spy.connects == []
    try:
        run(loop, main())
    finally:
        lsock.close()


def test_switches_off(loop):
    loop.goaio_accept = False
    loop.goaio_connect = False

    async def main():
        srv = await loop.create_server(Echo, "127.0.0.1", 0)
        assert loop.service.stats()["listeners"] == 0
        port = srv.sockets[0].getsockname()[1]
        assert await _echo_once(port) == b"ping"
        assert loop.service.stats()["accepted"] == 0
        srv.close()
        await srv.wait_closed()
    run(loop, main())


EMFILE_CHILD = r"""
import asyncio, errno, importlib, json, os, resource, socket, sys, time
import goaio.aio
mod = importlib.import_module("goaio._" + sys.argv[1])
loop = goaio.aio.Loop(backend=mod)
errors = []
loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
made = []

class P(asyncio.Protocol):
    def connection_made(self, tr):
        made.append(tr)

async def until(pred):
    t0 = time.monotonic()
    while not pred() and time.monotonic() - t0 < 10:
        await asyncio.sleep(0.01)

async def main():
    out = {}
    srv = await loop.create_server(P, "127.0.0.1", 0)
    addr = srv.sockets[0].getsockname()
    clients = [socket.socket() for _ in range(3)]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 16, hard))
    hog = []
    try:
        while True:
            hog.append(os.open(os.devnull, os.O_RDONLY))
    except OSError as e:
        assert e.errno == errno.EMFILE, e
    for c in clients:
        c.setblocking(False)
        c.connect_ex(addr)
    exhausted = lambda: [c for c in errors
                         if c.get("message") == "socket.accept() out of system resource"]
    await until(exhausted)
    out["exhausted"] = len(exhausted())
    out["errno"] = exhausted()[0]["exception"].errno if exhausted() else None
    out["made_at_limit"] = len(made)
    # the back-off: no thread spins on the readable listener meanwhile
    cpu0 = time.process_time()
    await asyncio.sleep(0.5)
    out["cpu_at_limit"] = time.process_time() - cpu0
    for fd in hog:
        os.close(fd)
    await until(lambda: len(made) == 3)
    out["made_after"] = len(made)
    out["other_errors"] = [c.get("message") for c in errors if c not in exhausted()]
    for tr in made:
        tr.close()
    for c in clients:
        c.close()
    srv.close()
    await srv.wait_closed()
    print(json.dumps(out))

loop.run_until_complete(main())
loop.close()
"""


def test_out_of_descriptors_backs_off_and_resumes(backend):
    import json
    from support import run_python
    p = run_python(EMFILE_CHILD, argv=[backend.name], timeout=60)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["exhausted"] >= 1 and out["errno"] == errno.EMFILE, out
    assert out["made_at_limit"] == 0, out
    assert out["cpu_at_limit"] < 0.25, out
    assert out["made_after"] == 3, out
    assert out["other_errors"] == [], out


def test_loop_closed_with_a_server_still_serving(backend):
    lp = goaio.aio.Loop(backend=backend.module)
    srv = lp.run_until_complete(lp.create_server(Echo, "127.0.0.1", 0))
    sock = srv.sockets[0]
    port = sock.getsockname()[1]
    assert lp.service.stats()["listeners"] == 1
    lp.close()          # closes the Listener with the service
    assert lp.service.closed
    # the Server's own socket is asyncio's: still open until Server.close()
    assert sock.fileno() >= 0
    srv.close()
    assert sock.fileno() == -1
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=WAIT).close()


def test_connections_accepted_before_close_handed_over_after_are_closed(loop):
    svc = loop.service

    async def main():
        Echo.made = 0
        srv = await loop.create_server(Echo, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
        # goaio accepts them now (the loop's collector does the IO and keeps
        # the completions), the server closes before they are handed over
        loop._goaio.take()
        srv.close()
        await srv.wait_closed()
        await asyncio.sleep(0.05)
        assert Echo.made == 0
        await until(lambda: svc.stats()["connections"] == 0, "accepted connections closed")
        st = svc.stats()
        assert st["listeners"] == 0 and st["pending_accept"] == 0
        for c in clients:
            c.settimeout(WAIT)
            try:
                assert c.recv(1) == b""
            except ConnectionResetError:
                pass
            c.close()
    run(loop, main())
