"""A real application on goaio's loop: an unchanged aiohttp web app, checked
with curl and with aiohttp's own client, on every backend (issue 12).

aiohttp is in the ``test`` extra; without it these tests skip.
"""

import asyncio
import hashlib
import os
import shutil

import pytest

import goaio.aio
from support import WAIT

aiohttp = pytest.importorskip("aiohttp", reason="aiohttp is not installed (pip install '.[test]')")
web = pytest.importorskip("aiohttp.web")

HELLO = b"Hello, World!"


def make_app(seen):
    """The application: nothing in it knows about goaio. ``seen`` records the
    transport class and the service's connection count per request."""

    async def hello(request):
        seen.append((type(request.transport), asyncio.get_running_loop().service.stats()["connections"]))
        return web.Response(body=HELLO, content_type="text/plain")

    async def echo(request):
        seen.append((type(request.transport), asyncio.get_running_loop().service.stats()["connections"]))
        body = await request.read()
        return web.Response(body=body, content_type="application/octet-stream")

    async def stream_echo(request):
        # chunked response written piece by piece as the request body streams in
        seen.append((type(request.transport), asyncio.get_running_loop().service.stats()["connections"]))
        resp = web.StreamResponse()
        await resp.prepare(request)
        async for chunk in request.content.iter_chunked(65536):
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/", hello)
    app.router.add_post("/echo", echo)
    app.router.add_post("/stream", stream_echo)
    return app


@pytest.fixture
def loop(backend):
    lp = goaio.aio.Loop(backend=backend.module)
    asyncio.set_event_loop(lp)
    yield lp
    if not lp.is_closed():
        lp.run_until_complete(lp.shutdown_asyncgens())
    asyncio.set_event_loop(None)
    lp.close()
    assert lp.service.closed
    assert " out=0 " in repr(lp._pool), repr(lp._pool)


async def _serve(app):
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, port


def _run(loop, coro):
    return loop.run_until_complete(asyncio.wait_for(coro, WAIT * 3))


def test_aiohttp_app_with_aiohttp_client(loop):
    seen = []

    async def main():
        runner, port = await _serve(make_app(seen))
        try:
            base = f"http://127.0.0.1:{port}"
            big = os.urandom(1000 * 1000 + 17)   # far past the write buffer limits (under aiohttp's 1 MiB warning)
            async with aiohttp.ClientSession() as session:
                for _ in range(5):                   # keep-alive: one connection, many requests
                    async with session.get(base + "/") as r:
                        assert r.status == 200
                        assert await r.read() == HELLO
                # the kept-alive client connection and its server side are
                # both goaio transports (asyncio's map of the loop's transports)
                live = [t for t in list(loop._transports.values()) if not t.is_closing()]
                assert len(live) >= 2, live
                assert all(isinstance(t, goaio.aio.GoaioTransport) for t in live), live
                async with session.post(base + "/echo", data=b"ping " * 1000) as r:
                    assert r.status == 200
                    assert await r.read() == b"ping " * 1000
                async with session.post(base + "/echo", data=big) as r:
                    assert r.status == 200
                    assert hashlib.sha256(await r.read()).digest() == hashlib.sha256(big).digest()
                async with session.post(base + "/stream", data=big) as r:
                    assert r.status == 200
                    assert hashlib.sha256(await r.read()).digest() == hashlib.sha256(big).digest()
                # many connections at once
                async def one(i):
                    async with aiohttp.ClientSession() as s:
                        async with s.post(base + "/echo", data=b"%d" % i) as r:
                            return await r.read()
                got = await asyncio.gather(*(one(i) for i in range(40)))
                assert got == [b"%d" % i for i in range(40)]
        finally:
            await runner.cleanup()

    _run(loop, main())
    assert len(seen) == 5 + 3 + 40
    # every request the app handled came through a goaio transport, while
    # goaio's service carried the connections (client and server side)
    assert all(issubclass(cls, goaio.aio.GoaioTransport) for cls, _ in seen), seen
    assert all(conns >= 2 for _, conns in seen), seen
    assert loop._goaio_stats["results"] > 0
    assert loop.service.stats()["connections"] == 0


def test_aiohttp_app_with_curl(loop, tmp_path):
    curl = shutil.which("curl")
    assert curl, "curl is needed on PATH for this test"
    seen = []
    body = os.urandom(200_000)
    src = tmp_path / "body.bin"
    src.write_bytes(body)

    async def curl_run(*args):
        p = await asyncio.create_subprocess_exec(
            curl, "-sS", "--noproxy", "*", "--max-time", str(int(WAIT)), *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await p.communicate()
        assert p.returncode == 0, err
        return out

    async def main():
        runner, port = await _serve(make_app(seen))
        try:
            base = f"http://127.0.0.1:{port}"
            assert await curl_run(base + "/") == HELLO
            # two URLs in one curl: the second request reuses the connection
            assert await curl_run(base + "/", base + "/") == HELLO * 2
            assert await curl_run("--data-binary", "hello curl", base + "/echo") == b"hello curl"
            assert await curl_run("--data-binary", "@" + str(src), base + "/echo") == body
            assert await curl_run("--data-binary", "@" + str(src), "-H", "Transfer-Encoding: chunked",
                                  base + "/stream") == body
            # a few curls at once
            outs = await asyncio.gather(*(curl_run(base + "/") for _ in range(6)))
            assert outs == [HELLO] * 6
        finally:
            await runner.cleanup()

    _run(loop, main())
    assert len(seen) == 1 + 2 + 3 + 6
    assert all(issubclass(cls, goaio.aio.GoaioTransport) for cls, _ in seen), seen
    assert all(conns >= 1 for _, conns in seen), seen
    assert loop.service.stats()["connections"] == 0


def test_aiohttp_example_runs(backend, tmp_path):
    """examples/aio_hello.py serves on goaio's loop and answers curl."""
    import subprocess
    import sys

    from support import REPO_ROOT, subprocess_env
    env = subprocess_env(backend.name)
    with subprocess.Popen([sys.executable, os.path.join(REPO_ROOT, "examples", "aio_hello.py"), "0"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True) as p:
        try:
            line = p.stdout.readline()
            assert line.startswith("listening on http://127.0.0.1:"), \
                (line, p.stderr.read() if p.poll() is not None else "")
            url = line.split()[-1]
            curl = ["curl", "-sS", "--noproxy", "*", "--max-time", str(int(WAIT))]
            out = subprocess.run(curl + [url], capture_output=True, timeout=WAIT * 2)
            assert out.returncode == 0, out.stderr
            assert out.stdout == HELLO
            out = subprocess.run(curl + ["--data-binary", "abc", url + "echo"],
                                 capture_output=True, timeout=WAIT * 2)
            assert out.returncode == 0, out.stderr
            assert out.stdout == b"abc"
        finally:
            p.terminate()
            try:
                p.wait(WAIT)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        err = p.stderr.read()
    # SIGTERM ends it (no handler): killed by the signal, nothing else on stderr
    assert p.returncode == -15, err
    assert err == "", err
