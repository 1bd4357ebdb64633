"""Echo servers built the way a Python user would without goaio, for comparison.

    python peers.py KIND [--port P] [--host H]

KIND is one of:

- ``asyncio``: an ``asyncio.Protocol`` that writes back what it receives;
- ``asyncio-streams``: ``asyncio.start_server`` with a read/write/drain loop;
- ``uvloop``: the same Protocol on uvloop's event loop;
- ``threads``: a thread per connection doing blocking ``recv``/``sendall``;
- ``raw-epoll``: the least a Python server can do, one thread, level-triggered
  ``select.epoll``, ``recv_into`` one 64 KiB buffer and ``send`` it back: the
  ceiling for an echo server written in Python.

Each sets TCP_NODELAY on every connection, reads up to 64 KiB at a time,
binds 127.0.0.1 by default (port 0 picks a free one) and prints
``<kind> echo server listening on HOST:PORT`` when ready. SIGINT and SIGTERM
end it with status 0. The file is run as a script and imports nothing of
goaio, so the servers' memory holds only what they need.
"""

import argparse
import signal
import socket
import sys

READ_SIZE = 65536
BACKLOG = 4096


def _nodelay(sock):
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:  # the peer may already be gone
        pass


def _listener(host, port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    ls = socket.socket(family, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, port))
    ls.listen(BACKLOG)
    return ls


def _ready(kind, sock):
    host, port = sock.getsockname()[:2]
    print(f"{kind} echo server listening on {host}:{port}", flush=True)


def run_asyncio(kind, host, port):
    import asyncio

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            _nodelay(transport.get_extra_info("socket"))

        def data_received(self, data):
            self.transport.write(data)

    async def echo_stream(reader, writer):
        _nodelay(writer.get_extra_info("socket"))
        try:
            while data := await reader.read(READ_SIZE):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def main():
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
        ls = _listener(host, port)
        if kind == "asyncio-streams":
            server = await asyncio.start_server(echo_stream, sock=ls, backlog=BACKLOG)
        else:
            server = await loop.create_server(Echo, sock=ls, backlog=BACKLOG)
        _ready(kind, ls)
        async with server:
            await stop

    if kind == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def run_threads(kind, host, port):
    import threading

    # A realistic choice for many threads: small stacks (the default 8 MiB is
    # only address space, but caps how many threads fit).
    threading.stack_size(256 * 1024)
    ls = _listener(host, port)

    def serve(conn):
        _nodelay(conn)
        with conn:
            try:
                while data := conn.recv(READ_SIZE):
                    conn.sendall(data)
            except OSError:
                pass

    def accept():
        while True:
            try:
                conn, _ = ls.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    _ready(kind, ls)
    _wait_for_signal()


def run_raw_epoll(kind, host, port):
    import select

    ls = _listener(host, port)
    ls.setblocking(False)
    ep = select.epoll()
    ep.register(ls.fileno(), select.EPOLLIN)
    conns = {}
    pending = {}  # fd -> bytes not yet written (the connection is not read meanwhile)
    buf = bytearray(READ_SIZE)
    view = memoryview(buf)
    IN, OUT = select.EPOLLIN, select.EPOLLOUT
    lfd = ls.fileno()
    stopping = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.append(1))
    _ready(kind, ls)

    def drop(fd):
        ep.unregister(fd)
        conns.pop(fd).close()
        pending.pop(fd, None)

    while not stopping:
        try:
            events = ep.poll(0.5)
        except InterruptedError:
            continue
        for fd, ev in events:
            if fd == lfd:
                while True:
                    try:
                        c, _ = ls.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        break
                    _nodelay(c)
                    c.setblocking(False)
                    conns[c.fileno()] = c
                    ep.register(c.fileno(), IN)
                continue
            c = conns.get(fd)
            if c is None:
                continue
            if ev & OUT:
                rest = pending[fd]
                try:
                    n = c.send(rest)
                except BlockingIOError:
                    continue
                except OSError:
                    drop(fd)
                    continue
                if n < len(rest):
                    pending[fd] = rest[n:]
                    continue
                del pending[fd]
                ep.modify(fd, IN)
                continue
            try:
                n = c.recv_into(buf)
            except BlockingIOError:
                continue
            except OSError:
                drop(fd)
                continue
            if n == 0:
                drop(fd)
                continue
            try:
                sent = c.send(view[:n])
            except BlockingIOError:
                sent = 0
            except OSError:
                drop(fd)
                continue
            if sent < n:
                pending[fd] = bytes(view[sent:n])
                ep.modify(fd, OUT)
    for c in conns.values():
        c.close()
    ls.close()


def _wait_for_signal():
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(1))
    while not stop:
        signal.pause() if hasattr(signal, "pause") else __import__("time").sleep(0.5)


KINDS = {
    "asyncio": run_asyncio,
    "asyncio-streams": run_asyncio,
    "uvloop": run_asyncio,
    "threads": run_threads,
    "raw-epoll": run_raw_epoll,
}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="peers.py", description="comparison echo servers")
    ap.add_argument("kind", choices=sorted(KINDS))
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args(argv)
    if __package__:
        from .client import raise_nofile_limit
    else:  # run as a script (as the bench does): client.py sits beside us
        from client import raise_nofile_limit

    raise_nofile_limit()
    try:
        KINDS[args.kind](args.kind, args.host, args.port)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
