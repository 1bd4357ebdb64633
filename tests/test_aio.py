"""goaio.aio: the asyncio event loop on goaio, on every backend."""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile

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
    # every receive buffer went back to the loop's pool
    assert " out=0 " in repr(lp._pool), repr(lp._pool)


def run(loop, coro):
    return loop.run_until_complete(asyncio.wait_for(coro, WAIT))


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def eof_received(self):
        return None   # close once the echoed bytes are written


class Recorder(asyncio.Protocol):
    """Records the callbacks it gets, in order."""

    def __init__(self, loop):
        self.events = []
        self.data = bytearray()
        self.done = loop.create_future()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def data_received(self, data):
        assert isinstance(data, bytes)
        if not self.events or self.events[-1] != "data":
            self.events.append("data")
        self.data += data

    def eof_received(self):
        self.events.append("eof")

    def connection_lost(self, exc):
        self.events.append(("lost", exc))
        if not self.done.done():
            self.done.set_result(None)


def test_loop_is_goaio(loop, backend):
    async def main():
        return asyncio.get_running_loop()
    assert run(loop, main()) is loop
    assert isinstance(loop, asyncio.SelectorEventLoop)
    assert type(loop.service).__module__ == backend.module.__name__


def test_echo_create_server_create_connection(loop):
    async def main():
        srv = await loop.create_server(Echo, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        tr, pr = await loop.create_connection(lambda: Recorder(loop), "127.0.0.1", port)
        assert isinstance(tr, asyncio.Transport)
        assert isinstance(tr, goaio.aio.GoaioTransport)
        assert loop.service.stats()["connections"] >= 1   # the client end is a goaio connection
        payload = os.urandom(1 << 20)
        tr.write(payload[:1000])
        tr.writelines([payload[1000:5000], bytearray(payload[5000:])])
        tr.write_eof()
        await pr.done
        assert bytes(pr.data) == payload
        assert pr.events == ["made", "data", "eof", ("lost", None)]
        srv.close()
        await srv.wait_closed()
    run(loop, main())


def test_streams_echo(loop):
    async def handle(r, w):
        while True:
            line = await r.readline()
            if not line:
                break
            w.write(line.upper())
            await w.drain()
        w.close()
        await w.wait_closed()

    async def main():
        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        async with srv:
            port = srv.sockets[0].getsockname()[1]
            r, w = await asyncio.open_connection("127.0.0.1", port)
            assert isinstance(w.transport, goaio.aio.GoaioTransport)
            for i in range(200):
                w.write(b"line %d\n" % i)
                await w.drain()
                assert await r.readline() == b"LINE %d\n" % i
            w.write_eof()
            assert await r.read() == b""
            w.close()
            await w.wait_closed()
    run(loop, main())


class Buffered(asyncio.BufferedProtocol):
    def __init__(self, loop, size=1000):
        self.buf = bytearray(size)
        self.given = []
        self.got = bytearray()
        self.done = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        self.given.append(sizehint)
        return self.buf

    def buffer_updated(self, nbytes):
        self.got += self.buf[:nbytes]
        # the bytes landed in our very buffer: clear it to be sure each
        # update is new data
        self.buf[:nbytes] = b"\0" * nbytes

    def eof_received(self):
        self.done.set_result(None)


def test_buffered_protocol_reads_into_its_buffer(loop):
    async def main():
        srv = await loop.create_server(Echo, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        tr, pr = await loop.create_connection(lambda: Buffered(loop), "127.0.0.1", port)
        payload = os.urandom(100_000)
        tr.write(payload)
        tr.write_eof()
        await pr.done
        assert bytes(pr.got) == payload
        assert len(pr.given) >= 100   # a 1000-byte buffer: filled in place, over and over
        tr.close()
        srv.close()
        await srv.wait_closed()
    run(loop, main())


def test_flow_control_pause_and_resume_writing(loop, pairs):
    sock, peer = pairs("tcp", small=True)
    events = []

    class P(asyncio.Protocol):
        def pause_writing(self):
            events.append("pause")

        def resume_writing(self):
            events.append("resume")

    async def main():
        tr, pr = await loop.connect_accepted_socket(P, sock)
        tr.set_write_buffer_limits(high=64 * 1024, low=16 * 1024)
        assert tr.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
        chunk = b"x" * 65536
        total = 0
        while "pause" not in events and total < (64 << 20):
            tr.write(chunk)
            total += len(chunk)
            await asyncio.sleep(0)
        assert events == ["pause"]
        assert tr.get_write_buffer_size() > 16 * 1024
        # the peer reads: everything drains, writing resumes
        got = await loop.run_in_executor(None, _read_n, peer, total)
        assert got == total
        for _ in range(100):
            if "resume" in events:
                break
            await asyncio.sleep(0.01)
        assert events == ["pause", "resume"]
        assert tr.get_write_buffer_size() == 0
        tr.close()
    run(loop, main())


def _read_n(sock, n):
    sock.settimeout(WAIT)
    got = 0
    while got < n:
        b = sock.recv(1 << 20)
        if not b:
            break
        got += len(b)
    return got


def test_pause_reading_holds_data(loop, pairs):
    sock, peer = pairs("tcp")

    async def main():
        tr, pr = await loop.connect_accepted_socket(lambda: Recorder(loop), sock)
        await asyncio.sleep(0)
        assert tr.is_reading()
        tr.pause_reading()
        assert not tr.is_reading()
        peer.sendall(b"hello")
        await asyncio.sleep(0.1)
        assert pr.data == b""
        tr.resume_reading()
        assert tr.is_reading()
        for _ in range(200):
            if pr.data:
                break
            await asyncio.sleep(0.005)
        assert pr.data == b"hello"
        tr.close()
        await pr.done
        assert pr.events == ["made", "data", ("lost", None)]
    run(loop, main())


def test_abort_and_extra_info(loop, pairs):
    sock, peer = pairs("tcp")

    async def main():
        tr, pr = await loop.connect_accepted_socket(lambda: Recorder(loop), sock)
        assert tr.get_extra_info("peername") == peer.getsockname()
        assert tr.get_extra_info("sockname") == peer.getpeername()
        assert tr.get_extra_info("socket").fileno() == sock.fileno()
        assert tr.get_extra_info("sslcontext") is None
        assert tr.get_extra_info("nothing", 42) == 42
        assert tr.can_write_eof()
        tr.abort()
        assert tr.is_closing()
        await pr.done
        assert pr.events == ["made", ("lost", None)]
        peer.settimeout(WAIT)
        assert peer.recv(10) == b""
        assert sock.fileno() == -1
    run(loop, main())


def test_peer_reset_reaches_connection_lost(loop, pairs):
    import struct
    sock, peer = pairs("tcp")

    async def main():
        tr, pr = await loop.connect_accepted_socket(lambda: Recorder(loop), sock)
        await asyncio.sleep(0)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()
        await pr.done
        assert pr.events[-1][0] == "lost"
        assert pr.events[-1][1] is None or isinstance(pr.events[-1][1], ConnectionError)
    run(loop, main())


def test_write_after_write_eof_and_type_errors(loop, pairs):
    sock, peer = pairs("tcp")

    async def main():
        tr, pr = await loop.connect_accepted_socket(lambda: Recorder(loop), sock)
        with pytest.raises(TypeError):
            tr.write("str")
        tr.write(b"abc")
        tr.write_eof()
        with pytest.raises(RuntimeError):
            tr.write(b"more")
        data = await loop.run_in_executor(None, _read_all, peer)
        assert data == b"abc"
        tr.close()
        await pr.done
    run(loop, main())


def _read_all(sock):
    sock.settimeout(WAIT)
    out = bytearray()
    while True:
        b = sock.recv(65536)
        if not b:
            return bytes(out)
        out += b


def test_server_lifecycle(loop):
    async def main():
        srv = await loop.create_server(Echo, "127.0.0.1", 0, start_serving=False)
        assert isinstance(srv, asyncio.AbstractServer)
        assert not srv.is_serving()
        assert srv.get_loop() is loop
        await srv.start_serving()
        assert srv.is_serving()
        port = srv.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"ping")
        assert await r.readexactly(4) == b"ping"
        w.close()
        await w.wait_closed()
        task = asyncio.ensure_future(srv.serve_forever())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not srv.is_serving()
        await srv.wait_closed()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
    run(loop, main())


def test_unix_streams(loop):
    path = os.path.join(tempfile.mkdtemp(prefix="goaio-aio"), "s")

    async def handle(r, w):
        w.write(await r.readexactly(5))
        await w.drain()
        w.close()

    async def main():
        srv = await asyncio.start_unix_server(handle, path)
        async with srv:
            r, w = await asyncio.open_unix_connection(path)
            assert isinstance(w.transport, goaio.aio.GoaioTransport)
            w.write(b"12345")
            assert await r.read() == b"12345"
            w.close()
            await w.wait_closed()
    try:
        run(loop, main())
    finally:
        if os.path.exists(path):
            os.unlink(path)
        os.rmdir(os.path.dirname(path))


def test_sock_methods(loop):
    async def main():
        lst = socket.socket()
        lst.bind(("127.0.0.1", 0))
        lst.listen()
        lst.setblocking(False)
        cli = socket.socket()
        cli.setblocking(False)
        with lst, cli:
            acc = asyncio.ensure_future(loop.sock_accept(lst))
            await loop.sock_connect(cli, lst.getsockname())
            srv, _ = await acc
            with srv:
                await loop.sock_sendall(cli, b"hello world")
                buf = bytearray(5)
                n = await loop.sock_recv_into(srv, buf)
                assert buf[:n] == b"hello world"[:n]
                rest = b""
                while n + len(rest) < 11:
                    rest += await loop.sock_recv(srv, 100)
                assert bytes(buf[:n]) + rest == b"hello world"
    run(loop, main())


def test_asyncio_features_still_work(loop):
    async def main():
        fut = loop.create_future()
        loop.call_later(0.01, fut.set_result, "late")
        assert await fut == "late"
        assert await loop.run_in_executor(None, sum, [1, 2, 3]) == 6
        r, w = os.pipe()
        try:
            got = loop.create_future()
            loop.add_reader(r, lambda: got.set_result(os.read(r, 10)))
            os.write(w, b"pipe")
            assert await got == b"pipe"
            loop.remove_reader(r)
        finally:
            os.close(r)
            os.close(w)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import sys; sys.stdout.write(sys.stdin.read())",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        out, _ = await proc.communicate(b"subprocess echo")
        assert out == b"subprocess echo"
        got = loop.create_future()
        loop.add_signal_handler(signal.SIGUSR1, got.set_result, "signal")
        try:
            os.kill(os.getpid(), signal.SIGUSR1)
            assert await got == "signal"
        finally:
            loop.remove_signal_handler(signal.SIGUSR1)
    run(loop, main())


def test_policy_and_run(backend):
    code = (
        "import asyncio, goaio.aio\n"
        "async def main():\n"
        "    return type(asyncio.get_running_loop()).__name__\n"
        "print(goaio.aio.run(main()))\n"
        "asyncio.set_event_loop_policy(goaio.aio.EventLoopPolicy())\n"
        "print(asyncio.run(main()))\n"
        "lp = goaio.aio.new_event_loop(); print(type(lp).__name__); lp.close()\n"
    )
    from support import run_python
    p = run_python(code, backend_name=backend.name)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["Loop", "Loop", "Loop"]


def test_many_writes_beyond_send_queue(loop, pairs):
    sock, peer = pairs("tcp")

    async def main():
        tr, pr = await loop.connect_accepted_socket(lambda: Recorder(loop), sock)
        for i in range(1000):
            tr.write(b"%05d" % i)
        tr.write_eof()
        data = await loop.run_in_executor(None, _read_all, peer)
        assert data == b"".join(b"%05d" % i for i in range(1000))
        tr.close()
        await pr.done
    run(loop, main())


def test_close_loop_closes_service(backend):
    lp = goaio.aio.Loop(backend=backend.module)
    svc = lp.service
    lp.close()
    assert svc.closed
    lp.close()


def _ssl_contexts():
    from test.test_asyncio import utils as tu
    return tu.simple_server_sslcontext(), tu.simple_client_sslcontext()


def test_tls_echo_and_extra_info(loop):
    server_ctx, client_ctx = _ssl_contexts()

    async def handle(r, w):
        w.write(await r.readexactly(5))
        await w.drain()
        w.close()

    async def main():
        srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
        async with srv:
            port = srv.sockets[0].getsockname()[1]
            r, w = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
            tr = w.transport
            assert tr.get_extra_info("sslcontext") is client_ctx
            assert tr.get_extra_info("ssl_object") is not None
            assert tr.get_extra_info("cipher") is not None
            assert tr.get_extra_info("peername")[1] == port
            # goaio's own TLS (the default): a goaio TLS connection
            assert isinstance(tr, goaio.aio._TLS_CLASSES) and tr._conn.tls is not None
            w.write(b"tls!!")
            assert await r.read() == b"tls!!"
            w.close()
            await w.wait_closed()
    run(loop, main())


def test_start_tls_upgrade(loop):
    server_ctx, client_ctx = _ssl_contexts()

    async def handle(r, w):
        assert await r.readexactly(8) == b"STARTTLS"
        w.write(b"OK")   # the client starts its handshake only after this
        await w.start_tls(server_ctx)
        w.write((await r.readexactly(4)).upper())
        await w.drain()
        w.close()

    async def main():
        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        async with srv:
            port = srv.sockets[0].getsockname()[1]
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"STARTTLS")
            assert await r.readexactly(2) == b"OK"
            await w.start_tls(client_ctx)
            w.write(b"ping")
            assert await r.read() == b"PING"
            w.close()
            await w.wait_closed()
    run(loop, main())


def test_callback_errors_reach_handler_and_connection_lost(loop, pairs):
    sock, peer = pairs("tcp")
    seen = []
    loop.set_exception_handler(lambda lp, ctx: seen.append(ctx))

    class Bad(Recorder):
        def data_received(self, data):
            raise ZeroDivisionError("boom")

    async def main():
        tr, pr = await loop.connect_accepted_socket(lambda: Bad(loop), sock)
        peer.sendall(b"x")
        await pr.done
        assert isinstance(pr.events[-1][1], ZeroDivisionError)
        assert seen and seen[0]["message"] == "Fatal error: protocol.data_received() call failed."
        assert seen[0]["transport"] is tr
    run(loop, main())


def test_results_come_back_on_the_loop_thread(loop):
    """Steady ping-pong: the loop thread does the IO itself (a worker wake-up
    only after the loop sat idle past WORKER_GRACE)."""
    if loop._goaio_poll_fd < 0:
        pytest.skip("this poller has no descriptor to watch (poll/select): workers deliver")
    rounds = 300

    class Client(asyncio.Protocol):
        def __init__(self):
            self.n = 0
            self.done = loop.create_future()

        def connection_made(self, tr):
            self.tr = tr
            tr.write(b"p" * 64)

        def data_received(self, data):
            self.n += 1
            if self.n == rounds:
                self.done.set_result(None)
            else:
                self.tr.write(b"p" * 64)

    async def main():
        srv = await loop.create_server(Echo, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        tr, pr = await loop.create_connection(Client, "127.0.0.1", port)
        before = dict(loop._goaio_stats)
        await pr.done
        st = loop._goaio_stats
        results = st["results"] - before["results"]
        wakeups = st["worker_wakeups"] - before["worker_wakeups"]
        assert results >= rounds
        assert wakeups <= results // 4, st
        tr.close()
        srv.close()
        await srv.wait_closed()
    run(loop, main())


def test_given_service_is_left_open(backend):
    svc = backend.AIOService()
    try:
        lp = goaio.aio.Loop(service=svc)
        assert lp.service is svc
        lp.close()
        assert not svc.closed
    finally:
        svc.close()


def test_buffered_pause_reading_holds_and_switch_protocol(loop, pairs):
    sock, peer = pairs("tcp")

    async def main():
        first = Buffered(loop, size=64)
        tr, _ = await loop.connect_accepted_socket(lambda: first, sock)
        await asyncio.sleep(0)
        tr.pause_reading()
        peer.sendall(b"abc")
        await asyncio.sleep(0.1)
        assert first.got == b""
        second = Recorder(loop)
        tr.set_protocol(second)
        tr.resume_reading()
        for _ in range(200):
            if second.data:
                break
            await asyncio.sleep(0.005)
        # read into the first protocol's buffer while it was current, handed
        # to the protocol that is current now
        assert bytes(second.data) == b"abc"
        assert first.got == b""
        tr.close()
        await second.done
    run(loop, main())


def test_sparse_requests_need_no_worker_hop(loop):
    """With the loop watching the poller's descriptor, the workers leave the
    poll to it even after the loop sat idle past WORKER_GRACE."""
    if loop._goaio_poll_fd < 0:
        pytest.skip("this poller has no descriptor to watch (poll/select): workers deliver")

    async def main():
        srv = await loop.create_server(Echo, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        before = dict(loop._goaio_stats)
        for _ in range(5):
            await asyncio.sleep(0.05)
            w.write(b"x")
            assert await r.readexactly(1) == b"x"
        st = loop._goaio_stats
        assert st["results"] > before["results"]
        assert st["worker_wakeups"] == before["worker_wakeups"], st
        w.close()
        await w.wait_closed()
        srv.close()
        await srv.wait_closed()
    run(loop, main())


def test_ipv6_and_debug_mode(loop):
    from support import family_available
    if not family_available("tcp6"):
        pytest.skip("no IPv6 loopback")
    loop.set_debug(True)

    async def handle(r, w):
        w.write(await r.readexactly(3))
        await w.drain()
        w.close()

    async def main():
        srv = await asyncio.start_server(handle, "::1", 0)
        async with srv:
            port = srv.sockets[0].getsockname()[1]
            r, w = await asyncio.open_connection("::1", port)
            assert w.get_extra_info("peername")[:2] == ("::1", port)
            w.write(b"six")
            assert await r.read() == b"six"
            w.close()
            await w.wait_closed()
    run(loop, main())


def test_closing_the_loop_with_open_connections_leaks_no_fd(backend):
    import gc
    import warnings
    from support import fd_count
    gc.collect()          # what earlier tests left is closed before counting
    before = fd_count()
    lp = goaio.aio.Loop(backend=backend.module)

    async def main():
        srv = await lp.create_server(Echo, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        conns = [await lp.create_connection(asyncio.Protocol, "127.0.0.1", port) for _ in range(5)]
        await asyncio.sleep(0.05)
        srv.close()
        return conns

    conns = lp.run_until_complete(asyncio.wait_for(main(), WAIT))
    lp.close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)   # unclosed transports, as asyncio warns
        del conns
        gc.collect()
    assert fd_count() == before


def test_close_while_paused_gives_pool_buffer_back(loop, pairs):
    sock, peer = pairs("tcp")

    async def main():
        tr, pr = await loop.connect_accepted_socket(lambda: Recorder(loop), sock)
        await asyncio.sleep(0)
        tr.pause_reading()
        peer.sendall(b"held")
        for _ in range(200):
            if tr._held is not None:
                break
            await asyncio.sleep(0.005)
        assert tr._held is not None       # the pending receive completed while paused
        tr.close()
        await pr.done
        assert pr.data == b""
    run(loop, main())
    # every pool buffer is back (the repr counts them on both backends)
    assert " out=0 " in repr(loop._pool), repr(loop._pool)


def test_compiled_backends_use_the_compiled_transport(loop, backend, pairs):
    """On a compiled backend the transport and the dispatch are the
    backend's compiled ones (core/transport.pxi), with no per-transport
    __dict__; on pure they are goaio/aio.py's."""
    sock, peer = pairs("tcp")
    compiled = hasattr(backend.module, "aio_transport_class")

    async def main():
        tr, pr = await loop.connect_accepted_socket(lambda: Recorder(loop), sock)
        assert isinstance(tr, goaio.aio.GoaioTransport)
        assert isinstance(tr, asyncio.Transport)
        if compiled:
            assert type(tr).__name__ == f"GoaioTransport_{backend.module.BACKEND_NAME}"
            assert type(loop._goaio) is backend.module.AioCollector
            assert not hasattr(tr, "__dict__")
            assert type(tr._c) is backend.module.AioCore
        else:
            assert type(tr) is goaio.aio._PyTransport
            assert type(loop._goaio) is goaio.aio._PyCollector
        # the write paths of each: bytes, a view, a list
        tr.write(b"ab")
        tr.write(memoryview(b"xcdex")[1:4])
        tr.writelines([b"f", bytearray(b"g")])
        peer.settimeout(WAIT)
        got = b""
        while len(got) < 7:
            got += peer.recv(100)
        assert got == b"abcdefg"
        peer.sendall(b"back")
        for _ in range(200):
            if pr.data:
                break
            await asyncio.sleep(0.005)
        assert pr.data == b"back"
        assert tr.get_extra_info("peername") == peer.getsockname()
        assert tr.get_extra_info("sockname") == peer.getpeername()
        assert tr.get_extra_info("socket").fileno() == tr._sock_fd
        assert tr.get_extra_info("nothing", 5) == 5
        tr.close()
        await pr.done
        assert pr.events == ["made", "data", ("lost", None)]
        assert tr.is_closing()
    run(loop, main())


def test_idle_connections_hold_no_receive_buffer(loop):
    """Share-buffer receives: connections that wait for data hold no pool
    buffer (the fixture checks every buffer came back at the end)."""
    async def main():
        srv = await loop.create_server(Echo, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
        for r, w in conns:
            w.write(b"x")
            assert await r.readexactly(1) == b"x"
        await asyncio.sleep(0.05)
        # 40 goaio connections (both ends), each with a receive posted
        assert loop.service.stats()["connections"] >= 40
        assert " out=0 " in repr(loop._pool), repr(loop._pool)
        for r, w in conns:
            w.close()
            await w.wait_closed()
        srv.close()
        await srv.wait_closed()
    run(loop, main())


def test_accept_makes_the_transport_and_survives_a_failing_factory(loop):
    """goaio's loop makes an accepted connection's transport in the accept
    callback; a protocol factory that raises closes that connection only."""
    made = []

    def factory():
        made.append(1)
        if len(made) == 1:
            raise RuntimeError("no protocol for you")
        return Echo()

    async def main():
        srv = await loop.create_server(factory, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        r1, w1 = await asyncio.open_connection("127.0.0.1", port)
        try:
            assert await r1.read() == b""      # closed at once: EOF
        except ConnectionResetError:
            pass
        w1.close()
        r2, w2 = await asyncio.open_connection("127.0.0.1", port)
        w2.write(b"ping")
        assert await r2.readexactly(4) == b"ping"
        assert w2.get_extra_info("sockname") is not None
        w2.close()
        await w2.wait_closed()
        srv.close()
        await srv.wait_closed()
        assert len(made) == 2
    run(loop, main())


def test_fd_of_a_transport_is_refused_to_add_reader_until_lost(loop, pairs):
    """loop._transports finds goaio's transports by fd (asyncio's
    _ensure_fd_no_transport), and forgets them once connection_lost ran."""
    sock, peer = pairs("tcp")

    async def main():
        tr, pr = await loop.connect_accepted_socket(lambda: Recorder(loop), sock)
        fd = tr._sock_fd
        assert loop._transports[fd] is tr
        assert tr in list(loop._transports.values())
        with pytest.raises(RuntimeError, match="is used by transport"):
            loop.add_reader(fd, lambda: None)
        tr.close()
        await pr.done
        if not isinstance(tr, goaio.aio._PyTransport):
            assert fd not in loop._transports
    run(loop, main())
