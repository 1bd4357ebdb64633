"""An unchanged aiohttp web app on goaio's event loop.

    python examples/aio_hello.py [PORT]      # then: curl http://127.0.0.1:PORT/

GET / answers "Hello, World!"; POST /echo answers the request body. The only
goaio line is the last one: goaio.aio.run() in place of asyncio.run().
"""

import asyncio
import sys

from aiohttp import web

import goaio.aio


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="Hello, World!")


async def echo(request: web.Request) -> web.Response:
    return web.Response(body=await request.read(), content_type="application/octet-stream")


async def main(port: int) -> None:
    app = web.Application()
    app.router.add_get("/", hello)
    app.router.add_post("/echo", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    host, port = site._server.sockets[0].getsockname()[:2]
    print(f"listening on http://{host}:{port}/", flush=True)
    try:
        await asyncio.Event().wait()          # serve until interrupted
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    goaio.aio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8080))
