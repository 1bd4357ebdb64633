"""examples/http_server.py: keep-alive, pipelining, HEAD, Connection: close, a
request with a body refused, and a clean stop on SIGTERM and on Ctrl-C."""

import os
import re
import signal
import socket
import subprocess
import sys

import pytest

from support import CHILD_CWD, WAIT, recv_until_eof, subprocess_env

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
BODY = b"Hello, World!"
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\n"
ANSWER = HEAD + BODY
GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture
def server(backend):
    proc = subprocess.Popen([sys.executable, os.path.join(EXAMPLES, "http_server.py"), "0"],
                            env=subprocess_env(backend.name), cwd=CHILD_CWD,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    m = re.search(r"listening on (\S+):(\d+)", line)
    if not m:
        proc.kill()
        out, err = proc.communicate(timeout=WAIT)
        pytest.fail(f"http example did not start: {line!r} {out!r} {err!r}")
    yield proc, (m.group(1), int(m.group(2)))
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def recv_exact(sock, n):
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        assert chunk, f"closed after {out!r}"
        out += chunk
    return out


def stop(proc, sig):
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err


def test_keep_alive_and_pipelining(server):
    proc, addr = server
    with socket.create_connection(addr, timeout=WAIT) as c:
        for _ in range(3):                       # one connection, request after request
            c.sendall(GET)
            assert recv_exact(c, len(ANSWER)) == ANSWER
        c.sendall(GET * 20)                      # pipelined, more than one send's worth
        assert recv_exact(c, 20 * len(ANSWER)) == 20 * ANSWER
        c.sendall(GET[:10])                      # a request in pieces
        c.sendall(GET[10:])
        assert recv_exact(c, len(ANSWER)) == ANSWER
        c.sendall(b"HEAD / HTTP/1.1\r\n\r\n" + GET)
        assert recv_exact(c, len(HEAD) + len(ANSWER)) == HEAD + ANSWER
    stop(proc, signal.SIGTERM)


def test_connection_close_and_bodies(server):
    proc, addr = server
    with socket.create_connection(addr, timeout=WAIT) as c:
        c.sendall(GET + b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n" + GET)
        assert recv_until_eof(c) == 2 * ANSWER  # nothing after the closing request
    with socket.create_connection(addr, timeout=WAIT) as c:
        c.sendall(GET + b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
        got = recv_until_eof(c)
        assert got.startswith(ANSWER) and b" 400 " in got[len(ANSWER):]
    clients = [socket.create_connection(addr, timeout=WAIT) for _ in range(20)]
    try:
        for c in clients:
            c.sendall(GET)
        for c in clients:
            assert recv_exact(c, len(ANSWER)) == ANSWER
    finally:
        for c in clients:
            c.close()
    stop(proc, signal.SIGINT)
