"""HTTP servers built the way a Python user would without goaio, for the
bench's HTTP rows (``python -m goaio bench --http``).

    python http_peers.py KIND [--host H] [--port P]

KIND: ``asyncio`` (the default loop) or ``uvloop``; both are a ``Protocol``
on ``loop.create_server()``: an HTTP/1.1 keep-alive server answering every
request with ``Hello, World!``, the twin of examples/http_server.py: the
same parsing, line for line (pipelining, HEAD, HTTP/1.0 and ``Connection:
close``; a request with a body answered 400 and the connection closed).

Binds 127.0.0.1 by default (port 0 picks a free one) and prints ``<kind>
http server listening on HOST:PORT`` when ready. SIGINT and SIGTERM end it
with status 0. Runs as a script and imports nothing of goaio.
"""

import argparse
import signal
import socket
import sys

BACKLOG = 4096
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\n"
            b"Hello, World!")
HEAD_RESPONSE = RESPONSE[:-13]
BAD = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
MAX_HEAD = 65536
PIPELINE = 16
ANSWERS = RESPONSE * PIPELINE


def run(kind, host, port):
    import asyncio

    class Hello(asyncio.Protocol):
        # The parsing is examples/http_server.py's answer(), line for line, so
        # that both servers do the same work per request: pipelining, HEAD,
        # HTTP/1.0 and Connection: close, a request with a body refused.
        def connection_made(self, transport):
            self.transport = transport
            self.pending = b""
            self.closing = False

        def data_received(self, data):
            if self.closing:
                return
            if self.pending:
                data = self.pending + data
                self.pending = b""
            out = []
            n_plain = 0
            start = 0
            end = data.find(b"\r\n\r\n")
            while end >= 0:
                head = data[start:end]
                start = end + 4
                line_end = head.find(b"\r\n")
                line = head if line_end < 0 else head[:line_end]
                lower = head.lower() if line_end >= 0 else b""
                if lower.find(b"content-length:") >= 0 or lower.find(b"transfer-encoding:") >= 0:
                    self.closing = True
                    out.append(ANSWERS[:len(RESPONSE) * n_plain])
                    out.append(BAD)
                    self.transport.write(b"".join(out))
                    self.transport.close()
                    return
                if lower.find(b"connection: close") >= 0 or line.endswith(b"HTTP/1.0"):
                    self.closing = True
                if line.startswith(b"HEAD "):
                    out.append(ANSWERS[:len(RESPONSE) * n_plain])
                    n_plain = 0
                    out.append(HEAD_RESPONSE)
                else:
                    n_plain += 1
                if self.closing:
                    break
                end = data.find(b"\r\n\r\n", start)
            if not self.closing and start < len(data):
                self.pending = data[start:]
                if len(self.pending) > MAX_HEAD:
                    self.closing = True
                    self.pending = b""
                    out.append(ANSWERS[:len(RESPONSE) * n_plain])
                    out.append(BAD)
            if not out:
                if n_plain:
                    self.transport.write(ANSWERS[:len(RESPONSE) * n_plain] if n_plain <= PIPELINE
                                         else RESPONSE * n_plain)
            else:
                out.append(ANSWERS[:len(RESPONSE) * n_plain] if n_plain <= PIPELINE else RESPONSE * n_plain)
                self.transport.write(b"".join(out))
            if self.closing:
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
        server = await loop.create_server(Hello, sock=ls, backlog=BACKLOG)
        h, p = ls.getsockname()[:2]
        print(f"{kind} http server listening on {h}:{p}", flush=True)
        async with server:
            await stop

    if kind == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def main(argv=None):
    ap = argparse.ArgumentParser(prog="http_peers.py", description="comparison HTTP servers")
    ap.add_argument("kind", choices=("asyncio", "uvloop"))
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        run(args.kind, args.host, args.port)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
