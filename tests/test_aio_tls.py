"""goaio.aio's ssl= and start_tls on goaio's own TLS (the default), on every
backend, against Python's ssl module and against itself over real loopback
sockets."""

import asyncio
import socket
import ssl
import threading

import pytest

import goaio.aio
from support import WAIT


@pytest.fixture
def loop(backend):
    lp = goaio.aio.Loop(backend=backend.module)
    asyncio.set_event_loop(lp)
    yield lp
    asyncio.set_event_loop(None)
    lp.close()
    assert lp.service.closed
    assert " out=0 " in repr(lp._pool), repr(lp._pool)


def run(loop, coro):
    return loop.run_until_complete(asyncio.wait_for(coro, WAIT))


def _rides_goaio_tls(tr):
    """The transport is goaio's and its connection a goaio TLS one."""
    return isinstance(tr, goaio.aio._TLSTransport) and tr._conn is not None \
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
            assert not isinstance(tr, goaio.aio._TLSTransport)
            assert isinstance(tr._ssl_protocol._transport, goaio.aio.GoaioTransport)
            tr.close()
            await asyncio.sleep(0.05)
        run(lp, main())
        peer.join()
    finally:
        lp.close()
