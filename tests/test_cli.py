"""``python -m goaio echo`` and ``python -m goaio bench`` (SPEC: Command line)."""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from support import CHILD_CWD, WAIT, recv_exactly, subprocess_env


def _start_echo(backend_name, *args):
    proc = subprocess.Popen(
        [sys.executable, "-m", "goaio", "echo", "--port", "0", *args],
        env=subprocess_env(backend_name),
        cwd=CHILD_CWD,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    m = re.search(r"listening on (\S+):(\d+)", line)
    if not m:
        proc.kill()
        out, err = proc.communicate(timeout=WAIT)
        pytest.fail(f"echo server did not start: {line!r} {out!r} {err!r}")
    return proc, line, (m.group(1), int(m.group(2)))


@pytest.mark.parametrize("args", [(), ("--share-buff",), ("--workers", "2", "--buffer-size", "512")],
                         ids=["plain", "share-buff", "workers2"])
def test_echo_server(backend, args):
    proc, banner, addr = _start_echo(backend.name, *args)
    try:
        assert f"backend {backend.name}" in banner, banner
        clients = [socket.create_connection(addr, timeout=WAIT) for _ in range(5)]
        try:
            for rnd in range(3):
                for i, c in enumerate(clients):
                    msg = os.urandom(1 + (i * 997 + rnd * 131) % 3000)
                    c.sendall(msg)
                    assert recv_exactly(c, len(msg)) == msg
            big = os.urandom(1 << 20)
            clients[0].sendall(big)
            assert recv_exactly(clients[0], len(big)) == big
        finally:
            for c in clients:
                c.close()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=WAIT)
        assert proc.returncode == 0, err
        assert "Traceback" not in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_echo_server_sigint_exits_zero(backend):
    proc, _banner, addr = _start_echo(backend.name)
    try:
        with socket.create_connection(addr, timeout=WAIT) as c:
            c.sendall(b"x")
            assert recv_exactly(c, 1) == b"x"
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=WAIT)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_echo_server_cannot_listen_exits_one(backend):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "goaio", "echo", "--port", str(port)],
            env=subprocess_env(backend.name), cwd=CHILD_CWD, capture_output=True, text=True,
            timeout=WAIT * 3, stdin=subprocess.DEVNULL,
        )
    assert proc.returncode == 1, (proc.stdout, proc.stderr)


def test_cli_usage_error_exits_two():
    proc = subprocess.run([sys.executable, "-m", "goaio", "nonsense"], env=subprocess_env(),
                          cwd=CHILD_CWD, capture_output=True, text=True, timeout=WAIT * 3)
    assert proc.returncode == 2


def test_bench_list():
    proc = subprocess.run([sys.executable, "-m", "goaio", "bench", "--list"], env=subprocess_env(),
                          cwd=CHILD_CWD, capture_output=True, text=True, timeout=WAIT * 6)
    assert proc.returncode == 0, proc.stderr
    assert "asyncio" in proc.stdout
    assert "pure" in proc.stdout


@pytest.mark.slow
def test_bench_short_run():
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "goaio", "bench", "--seconds", "0.5", "--warmup", "0", "--conns", "4"],
        env=subprocess_env(), cwd=CHILD_CWD, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "asyncio" in proc.stdout
    assert time.monotonic() - t0 < 600
