"""goaio.aio's ssl= and start_tls on goaio's own TLS (the default), on every
backend, against Python's ssl module and against itself over real loopback
sockets."""

import asyncio
import math
import socket
import ssl
import threading
import time
import warnings

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


def run(loop, coro):
    return loop.run_until_complete(asyncio.wait_for(coro, WAIT))


def _rides_goaio_tls(tr):
    """The transport is goaio's and its connection a goaio TLS one."""
    return isinstance(tr, goaio.aio._TLS_CLASSES) and tr._conn is not None \
        and tr._conn.tls is not None


class _SSLServer:
    """A Python ssl-module server in a thread: accepts one client, runs
    ``fn(ssock)`` on it, keeps what it raised."""

    def __init__(self, ctx, fn):
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        self.ctx, self.fn = ctx, fn
        self.exc = None
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        try:
            self.lsock.settimeout(WAIT)
            sock, _ = self.lsock.accept()
            sock.settimeout(WAIT)
            try:
                ssock = self.ctx.wrap_socket(sock, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                self.exc = exc
                sock.close()
                return
            with ssock:
                self.fn(ssock)
        except BaseException as exc:   # reported by join()
            self.exc = exc
        finally:
            self.lsock.close()

    def join(self):
        self.t.join(WAIT)
        assert not self.t.is_alive()


def test_server_echo_with_ssl_socket_client(loop, tls_certs):
    made = []

    class Echo(asyncio.Protocol):
        def connection_made(self, tr):
            made.append((tr, _rides_goaio_tls(tr),
                         tr.get_extra_info("ssl_object") is tr._conn.tls.ssl_object))
            self.tr = tr

        def data_received(self, data):
            self.tr.write(data)

    got = {}

    def client(port):
        ctx = tls_certs.client_context()
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                for i in range(20):
                    msg = bytes([65 + i]) * (1 + i * 997)
                    s.sendall(msg)
                    buf = b""
                    while len(buf) < len(msg):
                        chunk = s.recv(65536)
                        assert chunk
                        buf += chunk
                    assert buf == msg
                got["version"] = s.version()
                s.unwrap()       # close_notify both ways
                got["unwrapped"] = True

    async def main():
        srv = await loop.create_server(Echo, "127.0.0.1", 0, ssl=tls_certs.server_context())
        async with srv:
            port = srv.sockets[0].getsockname()[1]
            await loop.run_in_executor(None, client, port)
            tr, rides, same_obj = made[0]
            assert rides and same_obj
            assert tr.get_extra_info("cipher") is not None
            assert tr.get_extra_info("peercert") is None      # the client sent none
            assert isinstance(tr.get_extra_info("sslcontext"), ssl.SSLContext)
            assert not tr.can_write_eof()
            tr.close()
    run(loop, main())
    assert got == {"version": got["version"], "unwrapped": True}


def test_create_connection_to_ssl_server(loop, tls_certs):
    def serve(ssock):
        data = b""
        while len(data) < 5:
            data += ssock.recv(5 - len(data))
        ssock.sendall(data.upper())
        ssock.unwrap()      # answers our close_notify

    peer = _SSLServer(tls_certs.server_context(), serve)

    async def main():
        ctx = tls_certs.client_context()
        r, w = await asyncio.open_connection("localhost", peer.port, ssl=ctx)
        tr = w.transport
        assert _rides_goaio_tls(tr)
        assert tr.get_extra_info("sslcontext") is ctx
        assert tr.get_extra_info("peercert")["subject"]
        assert tr.get_extra_info("cipher") is not None
        assert tr.get_extra_info("cipher") == tr._conn.tls.cipher()
        w.write(b"hello")
        assert await r.readexactly(5) == b"HELLO"
        w.close()           # sends close_notify
        await w.wait_closed()
    run(loop, main())
    peer.join()
    assert peer.exc is None, peer.exc


def test_connection_made_only_after_handshake(loop, tls_certs):
    events = []

    class P(asyncio.Protocol):
        def connection_made(self, tr):
            events.append(("made", tr.get_extra_info("cipher") is not None))

        def connection_lost(self, exc):
            events.append(("lost", exc))

    peer = _SSLServer(tls_certs.server_context(), lambda s: s.unwrap())

    async def main():
        tr, _ = await loop.create_connection(P, "localhost", peer.port,
                                             ssl=tls_certs.client_context())
        assert events == [("made", True)]
        tr.close()
        for _ in range(200):
            if len(events) == 2:
                break
            await asyncio.sleep(0.01)
    run(loop, main())
    peer.join()
    assert events == [("made", True), ("lost", None)]


def test_untrusted_certificate_fails_create_connection(loop, tls_certs):
    made = []

    class P(asyncio.Protocol):
        def connection_made(self, tr):
            made.append(tr)

    peer = _SSLServer(tls_certs.server_context("untrusted"), lambda s: None)

    async def main():
        with pytest.raises(ssl.SSLCertVerificationError):
            await loop.create_connection(P, "localhost", peer.port,
                                         ssl=tls_certs.client_context())
    run(loop, main())
    peer.join()
    assert made == []
    assert isinstance(peer.exc, (ssl.SSLError, OSError))


def test_handshake_timeout(loop):
    # a server that accepts and says nothing
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    async def main():
        with pytest.raises(ConnectionAbortedError, match="SSL handshake is taking longer"):
            await loop.create_connection(asyncio.Protocol, "127.0.0.1", port, ssl=ctx,
                                         ssl_handshake_timeout=0.3)
    try:
        run(loop, main())
    finally:
        lsock.close()


def test_peer_gone_during_handshake_is_connection_reset(loop):
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]

    def server():
        s, _ = lsock.accept()
        s.recv(1024)
        s.close()

    t = threading.Thread(target=server, daemon=True)
    t.start()
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    async def main():
        with pytest.raises(ConnectionResetError):
            await loop.create_connection(asyncio.Protocol, "127.0.0.1", port, ssl=ctx)
    try:
        run(loop, main())
    finally:
        t.join(WAIT)
        lsock.close()


def test_goaio_tls_false_keeps_sslprotocol(backend, tls_certs):
    # goaio_tls=False: ssl= is asyncio's SSLProtocol over a goaio transport
    lp = goaio.aio.Loop(backend=backend.module, goaio_tls=False)
    try:
        peer = _SSLServer(tls_certs.server_context(), lambda s: s.unwrap())

        async def main():
            tr, _ = await lp.create_connection(asyncio.Protocol, "localhost", peer.port,
                                               ssl=tls_certs.client_context())
            assert not isinstance(tr, goaio.aio._TLS_CLASSES)
            assert isinstance(tr._ssl_protocol._transport, goaio.aio.GoaioTransport)
            tr.close()
            await asyncio.sleep(0.05)
        run(lp, main())
        peer.join()
    finally:
        lp.close()


class _Sink(asyncio.Protocol):
    """A server protocol that counts what it gets and notes its EOF and loss."""

    def __init__(self):
        self.got = 0
        self.events = []
        self.transport = None

    def connection_made(self, tr):
        self.transport = tr
        self.events.append("made")

    def data_received(self, data):
        self.got += len(data)

    def eof_received(self):
        self.events.append(("eof", self.got))

    def connection_lost(self, exc):
        self.events.append(("lost", exc))


async def _until(pred):
    for _ in range(int(WAIT / 0.01)):
        if pred():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


def test_ssl_true_client_against_goaio_server(loop, tls_certs, monkeypatch):
    # ssl=True: the context asyncio would make (default verify paths, here the
    # test CA through SSL_CERT_FILE); both ends on goaio's TLS
    monkeypatch.setenv("SSL_CERT_FILE", tls_certs.ca)

    async def handle(r, w):
        w.write(await r.readexactly(4))
        await w.drain()
        w.close()

    async def main():
        srv = await asyncio.start_server(handle, "127.0.0.1", 0,
                                         ssl=tls_certs.server_context())
        async with srv:
            port = srv.sockets[0].getsockname()[1]
            r, w = await asyncio.open_connection("127.0.0.1", port, ssl=True,
                                                 server_hostname="localhost")
            tr = w.transport
            assert _rides_goaio_tls(tr)
            ctx = tr.get_extra_info("sslcontext")
            assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED
            w.write(b"ping")
            assert await r.readexactly(4) == b"ping"
            assert await r.read() == b""
            w.close()
            await w.wait_closed()
    run(loop, main())


def test_start_tls_both_sides_in_place(loop, tls_certs):
    server_side = {}

    async def handle(r, w):
        assert await r.readexactly(8) == b"STARTTLS"
        old = w.transport
        w.write(b"OK")
        await w.start_tls(tls_certs.server_context())
        server_side["old"], server_side["new"] = old, w.transport
        data = await r.readexactly(5)
        w.write(data.upper())
        await w.drain()
        w.close()

    async def main():
        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        async with srv:
            port = srv.sockets[0].getsockname()[1]
            r, w = await asyncio.open_connection("127.0.0.1", port)
            old = w.transport
            w.write(b"STARTTLS")
            assert await r.readexactly(2) == b"OK"
            await w.start_tls(tls_certs.client_context(), server_hostname="localhost")
            new = w.transport
            assert new is not old and _rides_goaio_tls(new)
            # the connection was upgraded in place: the same goaio connection
            assert old.is_closing() and old._conn is None
            assert new.get_extra_info("peercert")["subject"]
            assert new.get_extra_info("peername") == ("127.0.0.1", port)
            w.write(b"hello")
            assert await r.readexactly(5) == b"HELLO"
            assert await r.read() == b""
            w.close()
            await w.wait_closed()
            await _until(lambda: "new" in server_side)
            assert _rides_goaio_tls(server_side["new"]) or server_side["new"]._conn is None
            assert isinstance(server_side["new"], goaio.aio._TLS_CLASSES)
            assert server_side["old"].is_closing()
    run(loop, main())


def test_start_tls_protocol_sees_no_second_connection_made(loop, tls_certs):
    # asyncio's start_tls: the protocol is not told connection_made again;
    # its connection_lost comes from the new transport
    events = []

    class P(asyncio.Protocol):
        def connection_made(self, tr):
            events.append("made")

        def data_received(self, data):
            events.append(data)

        def connection_lost(self, exc):
            events.append(("lost", exc))

    async def handle(r, w):
        await r.readexactly(1)
        w.write(b"!")
        await w.start_tls(tls_certs.server_context())
        w.write(b"secret")
        await w.drain()
        w.close()

    async def main():
        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        async with srv:
            port = srv.sockets[0].getsockname()[1]
            tr, proto = await loop.create_connection(P, "127.0.0.1", port)
            tr.write(b"?")
            await _until(lambda: b"!" in events)
            new = await loop.start_tls(tr, proto, tls_certs.client_context(),
                                       server_hostname="localhost")
            assert isinstance(new, goaio.aio._TLS_CLASSES)
            await _until(lambda: events[-1:] == [("lost", None)])
    run(loop, main())
    assert events == ["made", b"!", b"secret", ("lost", None)]


def test_start_tls_untrusted_certificate_fails(loop, tls_certs):
    done = []

    async def handle(r, w):
        await r.readexactly(1)
        w.write(b"!")
        try:
            await w.start_tls(tls_certs.server_context("untrusted"))
        except (ssl.SSLError, OSError):
            pass
        finally:
            w.close()
            done.append(True)

    async def main():
        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        async with srv:
            port = srv.sockets[0].getsockname()[1]
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"?")
            await r.readexactly(1)
            with pytest.raises(ssl.SSLCertVerificationError):
                await w.start_tls(tls_certs.client_context(), server_hostname="localhost")
            await _until(lambda: done)      # (the server side's end)
    run(loop, main())


def test_start_tls_bad_arguments(loop, tls_certs):
    done = []

    async def handle(r, w):
        await r.read()
        w.close()
        await w.wait_closed()
        done.append(True)

    async def main():
        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        async with srv:
            port = srv.sockets[0].getsockname()[1]
            tr, proto = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
            with pytest.raises(TypeError):
                await loop.start_tls(tr, proto, object())
            with pytest.raises(ValueError, match="ssl_handshake_timeout"):
                await loop.start_tls(tr, proto, tls_certs.client_context(),
                                     ssl_handshake_timeout=-1)
            assert not tr.is_closing()      # still the plain transport's
            tr.close()
            await _until(lambda: done and tr._sock is None)
    run(loop, main())


@pytest.mark.parametrize("name", ["ssl_handshake_timeout", "ssl_shutdown_timeout"])
@pytest.mark.parametrize("value", [-1, 0, -math.inf, "1", math.nan, 1e-300, math.inf, 2**63])
def test_tls_timeouts_checked_as_asyncio_checks_them(loop, tls_certs, name, value):
    # create_connection(ssl=...): asyncio's errors (class and message) for a
    # value asyncio's SSLProtocol refuses, the call at the transport before
    # the socket is used; NaN is refused too (asyncio takes it, goaio does
    # not: docs/aio.md). A value it takes connects (a tiny handshake timeout
    # aborts the handshake, as on asyncio's loop)
    def outcome(lp):
        async def main():
            srv = await lp.create_server(asyncio.Protocol, "127.0.0.1", 0,
                                         ssl=tls_certs.server_context())
            async with srv:
                port = srv.sockets[0].getsockname()[1]
                try:
                    tr, _ = await lp.create_connection(
                        asyncio.Protocol, "localhost", port, ssl=tls_certs.client_context(),
                        **{name: value})
                except (ValueError, TypeError, ConnectionAbortedError) as exc:
                    return type(exc), str(exc)
                tr.close()
                return "connected"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)   # (asyncio's leak of the socket)
            return lp.run_until_complete(asyncio.wait_for(main(), WAIT))

    got = outcome(loop)
    if value != value:
        assert got == (ValueError, f"{name} should be a positive number, got nan")
        return
    ref = asyncio.new_event_loop()
    try:
        want = outcome(ref)
    finally:
        ref.close()
    if want != "connected" and want[0] is ConnectionAbortedError:
        assert got[0] is ConnectionAbortedError, got      # (the timeout as written)
    else:
        assert got == want


def test_sslcontext_freed_without_gc_after_close(loop, tls_certs):
    # CPython's test_create_connection_memory_leak: no reference cycle keeps
    # the connection (and its SSLContext) once it is closed
    import gc
    import weakref

    async def main():
        srv = await loop.create_server(_Sink, "127.0.0.1", 0, ssl=tls_certs.server_context())
        async with srv:
            port = srv.sockets[0].getsockname()[1]
            ctx = tls_certs.client_context()
            tr, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port,
                                                 ssl=ctx, server_hostname="localhost")
            tr.get_extra_info("cipher")     # conn.tls made (the guard's cycle)
            tr.close()
            await _until(lambda: tr._sock is None)   # (connection_lost ran)
            ref = weakref.ref(ctx)
            del ctx, tr
            await asyncio.sleep(0.05)
            return ref
    gc.disable()
    try:
        ref = run(loop, main())
        assert ref() is None
    finally:
        gc.enable()


def test_ssl_protocol_hook_holds_writes(loop, tls_certs):
    sinks = []

    def factory():
        sinks.append(_Sink())
        return sinks[-1]

    async def main():
        srv = await loop.create_server(factory, "127.0.0.1", 0, ssl=tls_certs.server_context())
        async with srv:
            port = srv.sockets[0].getsockname()[1]
            tr, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port,
                                                 ssl=tls_certs.client_context(),
                                                 server_hostname="localhost")
            await _until(lambda: sinks and sinks[0].events)
            gate = tr._ssl_protocol
            gate.pause_writing()
            for _ in range(8):
                tr.write(b"x" * 65536)
            await asyncio.sleep(0.2)
            assert sinks[0].got == 0            # held
            tr.close()                          # waits for the held writes
            await asyncio.sleep(0.1)
            assert sinks[0].events == ["made"]
            gate.resume_writing()
            await _until(lambda: len(sinks[0].events) == 3)
            assert sinks[0].events == ["made", ("eof", 8 * 65536), ("lost", None)]
    run(loop, main())


def test_append_write_backlog_hook_goes_before_close_notify(loop, tls_certs):
    sinks = []

    def factory():
        sinks.append(_Sink())
        return sinks[-1]

    class Quiet(asyncio.Protocol):
        def __init__(self):
            self.paused = 0

        def pause_writing(self):
            self.paused += 1

    async def main():
        srv = await loop.create_server(factory, "127.0.0.1", 0, ssl=tls_certs.server_context())
        async with srv:
            port = srv.sockets[0].getsockname()[1]
            tr, proto = await loop.create_connection(Quiet, "127.0.0.1", port,
                                                     ssl=tls_certs.client_context(),
                                                     server_hostname="localhost")
            for _ in range(32):
                tr._test__append_write_backlog(b"y" * 131072)
            assert tr.get_write_buffer_size() > 0
            tr.close()
            await _until(lambda: len(sinks[0].events) == 3)
            assert sinks[0].events == ["made", ("eof", 32 * 131072), ("lost", None)]
            assert proto.paused == 0            # no flow control for the hook
    run(loop, main())


class _Events(asyncio.Protocol):
    """A client protocol noting what it gets, its EOF and its loss (with the
    loop time of the loss)."""

    def __init__(self, loop):
        self.loop = loop
        self.events = []
        self.lost_at = None

    def data_received(self, data):
        self.events.append(data)

    def eof_received(self):
        self.events.append("eof")

    def connection_lost(self, exc):
        self.lost_at = self.loop.time()
        self.events.append(("lost", exc))


def _read_to_close_notify(ssock):
    """What the peer sent until its close_notify (the ssl module's b"")."""
    buf = b""
    while True:
        chunk = ssock.recv(65536)
        if not chunk:
            return buf
        buf += chunk


def test_close_waits_for_the_peers_close_notify(loop, tls_certs):
    # as asyncio's TLS transport: after our close_notify the connection stays
    # open, what the peer sends is dropped, until its close_notify comes;
    # connection_lost then, not at our close_notify nor at its FIN
    answered = threading.Event()
    lost = threading.Event()
    got = {}

    def serve(ssock):
        got["data"] = _read_to_close_notify(ssock)
        ssock.sendall(b"late")          # after the client's close: dropped there
        time.sleep(0.3)
        got["lost_early"] = lost.is_set()
        answered.set()
        ssock.unwrap()                  # our close_notify
        got["lost_before_fin"] = lost.wait(WAIT)

    peer = _SSLServer(tls_certs.server_context(), serve)

    async def main():
        tr, p = await loop.create_connection(lambda: _Events(loop), "localhost", peer.port,
                                             ssl=tls_certs.client_context())
        tr.write(b"bye")
        tr.close()
        await _until(lambda: p.lost_at is not None)
        lost.set()
        assert p.events == [("lost", None)]
    run(loop, main())
    peer.join()
    assert peer.exc is None, peer.exc
    assert got == {"data": b"bye", "lost_early": False, "lost_before_fin": True}


def _silent_peer(tls_certs):
    """A peer that reads to our close_notify and then neither answers nor
    closes until ``release`` is set: (peer, release, got)."""
    release = threading.Event()
    got = {}

    def serve(ssock):
        got["data"] = _read_to_close_notify(ssock)
        release.wait(WAIT)

    return _SSLServer(tls_certs.server_context(), serve), release, got


def test_ssl_shutdown_timeout_when_the_peer_never_answers(loop, tls_certs):
    # a peer that takes our close_notify and never answers nor closes: the
    # connection closes after ssl_shutdown_timeout, connection_lost gets
    # asyncio's TimeoutError
    peer, release, got = _silent_peer(tls_certs)

    async def main():
        tr, p = await loop.create_connection(lambda: _Events(loop), "localhost", peer.port,
                                             ssl=tls_certs.client_context(),
                                             ssl_shutdown_timeout=0.5)
        tr.write(b"x" * 100000)
        t0 = loop.time()
        tr.close()
        await _until(lambda: p.lost_at is not None)
        assert len(p.events) == 1
        exc = p.events[0][1]
        assert isinstance(exc, TimeoutError) and str(exc) == "SSL shutdown timed out", exc
        assert 0.45 <= p.lost_at - t0 < WAIT
        release.set()
    run(loop, main())
    peer.join()
    assert peer.exc is None, peer.exc
    assert got["data"] == b"x" * 100000


def test_abort_while_waiting_for_the_peers_close_notify(loop, tls_certs):
    # abort() after close(), the peer silent: connection_lost(None) now
    peer, release, got = _silent_peer(tls_certs)

    async def main():
        tr, p = await loop.create_connection(lambda: _Events(loop), "localhost", peer.port,
                                             ssl=tls_certs.client_context())
        tr.write(b"abc")
        tr.close()
        await asyncio.sleep(0.3)
        assert p.events == [] and tr.is_closing()
        t0 = loop.time()
        tr.abort()
        await _until(lambda: p.lost_at is not None)
        assert p.events == [("lost", None)]
        assert p.lost_at - t0 < 1.0
        release.set()
    run(loop, main())
    peer.join()
    assert peer.exc is None, peer.exc
    assert got["data"] == b"abc"


def test_peer_half_close_leaves_tls_writable(loop, tls_certs):
    # a TCP EOF without close_notify (the peer's SHUT_WR): our side can still
    # write, and closes without a close_notify (as asyncio's SSLProtocol)
    got = {}

    def serve(ssock):
        ssock.sendall(b"bye")
        ssock.shutdown(socket.SHUT_WR)      # no close_notify; ssl is dropped: plain from here
        buf = b""
        while True:
            chunk = ssock.recv(65536)
            if not chunk:
                break
            buf += chunk
        got["after"] = buf

    peer = _SSLServer(tls_certs.server_context(), serve)

    class P(asyncio.Protocol):
        def __init__(self):
            self.events = []

        def connection_made(self, tr):
            self.tr = tr

        def data_received(self, data):
            self.events.append(data)

        def eof_received(self):
            self.events.append("eof")
            return True

        def connection_lost(self, exc):
            self.events.append(("lost", exc))

    async def main():
        tr, p = await loop.create_connection(P, "localhost", peer.port,
                                             ssl=tls_certs.client_context())
        await _until(lambda: ("lost", None) in p.events)
        assert p.events == [b"bye", "eof", ("lost", None)]
    run(loop, main())
    peer.join()
    assert peer.exc is None, peer.exc
    assert got["after"] == b""      # no close_notify (nor an alert) after its EOF


def test_tls_transport_from_an_already_bound_conn(loop, tls_certs):
    # the interface for accepted goaio connections: a bound plain AIOConn
    # (no socket object given) becomes a TLS transport
    def serve(ssock):
        ssock.sendall(recv_n(ssock, 3)[::-1])
        ssock.unwrap()

    def recv_n(ssock, n):
        data = b""
        while len(data) < n:
            data += ssock.recv(n - len(data))
        return data

    peer = _SSLServer(tls_certs.server_context(), serve)
    got = []

    class P(asyncio.Protocol):
        def connection_made(self, tr):
            got.append("made")
            tr.write(b"abc")

        def data_received(self, data):
            got.append(data)

        def connection_lost(self, exc):
            got.append(("lost", exc))

    async def main():
        sock = socket.create_connection(("127.0.0.1", peer.port))
        sock.setblocking(False)
        conn = loop.service.bind(sock, recvq_size=2,
                                 sendq_size=goaio.aio.MAX_INFLIGHT_SENDS + 2,
                                 share_buff=loop._pool)
        waiter = loop.create_future()
        tr = goaio.aio._tls_transport_from_conn(loop, conn, P(), tls_certs.client_context(),
                                                False, "localhost", 10.0, waiter, None)
        await waiter
        assert _rides_goaio_tls(tr) and tr._conn is conn
        assert tr.get_extra_info("peername") == ("127.0.0.1", peer.port)
        await _until(lambda: got[-1:] == [("lost", None)])
    run(loop, main())
    peer.join()
    assert peer.exc is None, peer.exc
    assert got == ["made", b"cba", ("lost", None)]


class _Echo(asyncio.Protocol):
    def connection_made(self, tr):
        self.transport = tr

    def data_received(self, data):
        self.transport.write(data)


def test_compiled_backends_tls_transport_is_compiled(loop, backend, tls_certs):
    """On a compiled backend both ends' TLS transports are the compiled
    class (the plain transport's AioCore carries the messages; no
    per-transport __dict__); on pure they are goaio/aio.py's _SSLTransport."""
    compiled = hasattr(backend.module, "aio_transport_class")
    made = []

    class P(_Echo):
        def connection_made(self, tr):
            super().connection_made(tr)
            made.append(tr)

    async def main():
        srv = await loop.create_server(P, "127.0.0.1", 0, ssl=tls_certs.server_context())
        async with srv:
            port = srv.sockets[0].getsockname()[1]
            r, w = await asyncio.open_connection("127.0.0.1", port, ssl=tls_certs.client_context(),
                                                 server_hostname="localhost")
            for _ in range(3):
                w.write(b"x" * 1000)
                w.writelines([b"a", bytearray(b"b"), memoryview(b"c")])
                assert await r.readexactly(1003) == b"x" * 1000 + b"abc"
            for tr in (w.transport, made[0]):
                assert isinstance(tr, goaio.aio._TLS_CLASSES) and tr._conn.tls is not None
                assert "SSL" in type(tr).__name__
                if compiled:
                    assert type(tr).__name__ == f"GoaioSSLTransport_{backend.module.BACKEND_NAME}"
                    assert type(tr._c) is backend.module.AioCore
                    assert not hasattr(tr, "__dict__")
                else:
                    assert type(tr) is goaio.aio._SSLTransport
                assert tr.get_extra_info("ssl_object") is tr._conn.tls.ssl_object
                assert not tr.can_write_eof()
                with pytest.raises(NotImplementedError):
                    tr.write_eof()
            w.close()
            await w.wait_closed()
            await _until(lambda: made[0].is_closing())
    run(loop, main())
