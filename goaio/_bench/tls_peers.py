"""TLS servers built the way a Python user would without goaio, for the bench's
TLS rows.

    python tls_peers.py KIND MODE CERT KEY [--host H] [--port P]

KIND: ``asyncio`` (the default loop) or ``uvloop``; both are a
``Protocol`` on ``loop.create_server(..., ssl=ctx)``. MODE:

- ``echo``: writes back what it receives;
- ``https``: an HTTP/1.1 keep-alive server answering every request with
  ``Hello, World!`` (requests may be pipelined; ``Connection: close`` is
  honoured), the twin of examples/https_server.py.

TCP_NODELAY on every connection; binds 127.0.0.1 by default (port 0 picks a
free one) and prints ``<kind> tls <mode> server listening on HOST:PORT``
when ready. SIGINT and SIGTERM end it with status 0. Runs as a script and
imports nothing of goaio.
"""

import argparse
import signal
import socket
import ssl
import sys

BACKLOG = 4096
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\n"
            b"Hello, World!")


def context(cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _nodelay(transport):
    sock = transport.get_extra_info("socket")
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass


def run(kind, mode, host, port, ctx):
    import asyncio

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            _nodelay(transport)

        def data_received(self, data):
            self.transport.write(data)

    class Hello(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            self.pending = b""
            _nodelay(transport)

        def data_received(self, data):
            data = self.pending + data if self.pending else data
            start = 0
            close = False
            out = []
            while True:
                end = data.find(b"\r\n\r\n", start)
                if end < 0:
                    break
                head = data[start:end].lower()
                out.append(RESPONSE)
                start = end + 4
                if b"\r\nconnection: close" in head:
                    close = True
                    break
            self.pending = data[start:] if not close else b""
            if out:
                self.transport.write(b"".join(out))
            if close:
                self.transport.close()

    async def main():
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        ls = socket.socket(family, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((host, port))
        ls.listen(BACKLOG)
        server = await loop.create_server(Echo if mode == "echo" else Hello, sock=ls, ssl=ctx,
                                          backlog=BACKLOG)
        h, p = ls.getsockname()[:2]
        print(f"{kind} tls {mode} server listening on {h}:{p}", flush=True)
        async with server:
            await stop

    if kind == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def main(argv=None):
    ap = argparse.ArgumentParser(prog="tls_peers.py", description="comparison TLS servers")
    ap.add_argument("kind", choices=("asyncio", "uvloop"))
    ap.add_argument("mode", choices=("echo", "https"))
    ap.add_argument("cert")
    ap.add_argument("key")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args(argv)
    if __package__:
        from .client import raise_nofile_limit
    else:  # run as a script (as the bench does): client.py sits beside us
        from client import raise_nofile_limit

    raise_nofile_limit()
    try:
        run(args.kind, args.mode, args.host, args.port, context(args.cert, args.key))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
