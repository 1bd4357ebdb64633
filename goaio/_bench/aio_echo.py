"""Servers for the asyncio-on-goaio figures (README, "asyncio on goaio").

    python -P -m goaio._bench.aio_echo KIND MODE PORT [CERT KEY]

KIND: goaio (the auto backend), goaio-epoll, goaio-pure, uvloop, asyncio (the
default loop). MODE: echo (an asyncio Protocol: data_received ->
transport.write), tls-echo (the same through ``create_server(ssl=)`` with
the certificate CERT and key KEY) or hello (aiohttp "Hello, World!"). The
same code runs on every loop; only the loop factory differs. Prints
"listening" when it serves.
"""

import asyncio
import os
import sys


def loop_factory(kind):
    if kind.startswith("goaio"):
        import goaio.aio
        backend = None
        if kind == "goaio-pure":
            from goaio import _pure as backend
        elif kind == "goaio-epoll":
            from goaio import _epoll as backend
        return lambda: goaio.aio.Loop(backend=backend)
    if kind == "uvloop":
        import uvloop
        return uvloop.new_event_loop
    if kind == "asyncio":
        return asyncio.SelectorEventLoop
    raise SystemExit(f"unknown kind {kind!r}")


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


async def serve_echo(port):
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(Echo, "127.0.0.1", port, backlog=4096)
    print("listening", flush=True)
    await srv.serve_forever()


async def serve_tls_echo(port, cert, key):
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(Echo, "127.0.0.1", port, backlog=4096, ssl=ctx)
    print("listening", flush=True)
    await srv.serve_forever()


async def serve_hello(port):
    from aiohttp import web

    async def hello(request):
        return web.Response(text="Hello, World!")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    print("listening", flush=True)
    await asyncio.Event().wait()


def main(argv):
    kind, mode, port = argv[1], argv[2], int(argv[3])
    fn = {"echo": serve_echo, "tls-echo": serve_tls_echo, "hello": serve_hello}[mode]
    with asyncio.Runner(loop_factory=loop_factory(kind)) as r:
        if os.environ.get("AIO_ECHO_SHOW_LOOP"):
            print(type(r.get_loop()), file=sys.stderr)
        try:
            r.run(fn(port, *argv[4:6]))
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main(sys.argv)
