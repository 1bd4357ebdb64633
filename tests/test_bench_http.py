"""``python -m goaio bench --http`` and its asyncio twin of the HTTP example
(goaio/_bench/http_peers.py): the twin gives the example's answers byte for
byte, so the bench compares servers doing the same work."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from support import CHILD_CWD, REPO_ROOT, WAIT, recv_until_eof, subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = os.path.join(ROOT, "goaio", "_bench", "http_peers.py")
BODY = b"Hello, World!"
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\n"
ANSWER = HEAD + BODY
GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def _recv_exact(sock, n):
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        assert chunk, f"closed after {out!r}"
        out += chunk
    return out


def test_asyncio_twin_answers_as_the_example():
    proc = subprocess.Popen([sys.executable, PEERS, "asyncio"], env=subprocess_env(), cwd=CHILD_CWD,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        m = re.search(r"listening on (\S+):(\d+)", proc.stdout.readline())
        assert m, proc.stderr.read() if proc.poll() is not None else "no listening line"
        addr = (m.group(1), int(m.group(2)))
        with socket.create_connection(addr, timeout=WAIT) as c:
            c.sendall(GET)
            assert _recv_exact(c, len(ANSWER)) == ANSWER
            c.sendall(GET * 20)                          # pipelined, more than PIPELINE
            assert _recv_exact(c, 20 * len(ANSWER)) == 20 * ANSWER
            c.sendall(GET[:10])                          # a request in pieces
            c.sendall(GET[10:])
            assert _recv_exact(c, len(ANSWER)) == ANSWER
            c.sendall(b"HEAD / HTTP/1.1\r\n\r\n" + GET)
            assert _recv_exact(c, len(HEAD) + len(ANSWER)) == HEAD + ANSWER
        with socket.create_connection(addr, timeout=WAIT) as c:
            c.sendall(GET + b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n" + GET)
            assert recv_until_eof(c) == 2 * ANSWER
        with socket.create_connection(addr, timeout=WAIT) as c:
            c.sendall(GET + b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
            got = recv_until_eof(c)
            assert got.startswith(ANSWER) and b" 400 " in got[len(ANSWER):]
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=WAIT)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_bench_http_short_run():
    proc = subprocess.run([sys.executable, "-m", "goaio", "bench", "--http", "--seconds", "0.5",
                           "--conns", "4", "--servers", "goaio-pure,asyncio"],
                          env=dict(subprocess_env(), GOAIO_EXAMPLES=os.path.join(REPO_ROOT, "examples")),
                          cwd=CHILD_CWD, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [ln for ln in proc.stdout.splitlines()
            if ln.startswith("| goaio pure") or ln.startswith("| asyncio")]
    assert len(rows) == 2, proc.stdout
    assert not any("FAILED" in r for r in rows), proc.stdout
