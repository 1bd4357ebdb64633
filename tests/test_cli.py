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


def _stop_cleanly(proc, sig):
    """Stop the server with ``sig``: it must exit 0 without a traceback."""
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err


@pytest.mark.parametrize("args", [(), ("--share-buff",), ("--workers", "2", "--buffer-size", "512"),
                                  ("--loop-thread", "--share-buff")],
                         ids=["plain", "share-buff", "workers2", "loop-thread"])
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
        _stop_cleanly(proc, signal.SIGTERM)
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
        _stop_cleanly(proc, signal.SIGINT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _stop_and_time(proc, sig):
    """Send ``sig``; returns (seconds until the process exited, stderr)."""
    t0 = time.monotonic()
    proc.send_signal(sig)
    proc.wait(timeout=WAIT)
    elapsed = time.monotonic() - t0
    _out, err = proc.communicate(timeout=WAIT)
    return elapsed, err


@pytest.mark.parametrize("loop_thread", [False, True], ids=["main-loop", "loop-thread"])
@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_echo_server_stops_at_once_on_signal(backend, signame, loop_thread):
    """The collector waits with no timeout (no polling workaround): a signal
    reaches it there on every backend, and the server closes everything and
    exits 0 well within a second, with idle clients connected and accepts
    pending. (The bound is generous for a loaded machine: the wait itself
    ends within 100 ms, then the service is closed and the interpreter exits.)"""
    proc, _banner, addr = _start_echo(backend.name, "--share-buff", *(["--loop-thread"] if loop_thread else []))
    try:
        idle = [socket.create_connection(addr, timeout=WAIT) for _ in range(3)]
        try:
            idle[0].sendall(b"ping")
            assert recv_exactly(idle[0], 4) == b"ping"
            time.sleep(0.3)  # the server is blocked in its wait now
            elapsed, err = _stop_and_time(proc, getattr(signal, signame))
            assert proc.returncode == 0, err
            assert "Traceback" not in err, err
            assert f"stopped ({signame})" in err, err
            assert elapsed < 1.5, f"{elapsed:.3f} s from {signame} to exit"
            for c in idle:  # every connection was closed by the server
                c.settimeout(WAIT)
                try:
                    assert c.recv(1) == b""
                except ConnectionResetError:
                    pass
        finally:
            for c in idle:
                c.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts /proc/PID/task")
@pytest.mark.parametrize("workers,loop_thread", [(1, False), (2, False), (1, True)])
def test_echo_server_has_no_thread_of_its_own(backend, workers, loop_thread):
    """svc.listen and posted accepts: the process runs the main thread and
    the service's workers, nothing else (no accept thread); --loop-thread
    adds the loop's thread and nothing more."""
    proc, _banner, addr = _start_echo(backend.name, "--workers", str(workers),
                                      *(["--loop-thread"] if loop_thread else []))
    try:
        with socket.create_connection(addr, timeout=WAIT) as c:
            c.sendall(b"abc")
            assert recv_exactly(c, 3) == b"abc"
            threads = len(os.listdir(f"/proc/{proc.pid}/task"))
        assert threads == 1 + workers + loop_thread
        _stop_cleanly(proc, signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_echo_server_accept_storm(backend):
    """Short-lived clients in bursts of 50 at once (more than the accepts it
    keeps pending are queued in the kernel): every one is accepted and
    answered, and the server still serves afterwards."""
    proc, _banner, addr = _start_echo(backend.name)
    try:
        deadline = time.monotonic() + WAIT * 3
        for rnd in range(8):
            burst = [socket.create_connection(addr, timeout=WAIT) for _ in range(50)]
            try:
                for i, c in enumerate(burst):
                    c.sendall(b"%d.%d" % (rnd, i))
                for i, c in enumerate(burst):
                    want = b"%d.%d" % (rnd, i)
                    assert recv_exactly(c, len(want)) == want
            finally:
                for c in burst:
                    c.close()
            assert time.monotonic() < deadline
        with socket.create_connection(addr, timeout=WAIT) as c:
            c.sendall(b"after")
            assert recv_exactly(c, 5) == b"after"
        _stop_cleanly(proc, signal.SIGINT)
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


# --------------------------------------------------------------------------
# examples/echo_server.py and examples/echo_client.py (the README's examples)

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def _start_example_server(backend_name):
    proc = subprocess.Popen([sys.executable, os.path.join(EXAMPLES, "echo_server.py"), "0"],
                            env=subprocess_env(backend_name), cwd=CHILD_CWD, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    m = re.search(r"listening on (\S+):(\d+)", line)
    if not m:
        proc.kill()
        out, err = proc.communicate(timeout=WAIT)
        pytest.fail(f"example server did not start: {line!r} {out!r} {err!r}")
    return proc, (m.group(1), int(m.group(2)))


def _run_example_client(backend_name, port, message):
    return subprocess.run([sys.executable, os.path.join(EXAMPLES, "echo_client.py"), "127.0.0.1",
                           str(port), message], env=subprocess_env(backend_name), cwd=CHILD_CWD,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=WAIT * 3)


def _stop_example_server(proc):
    try:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: KeyboardInterrupt out of `for res in svc`
        try:
            _out, err = proc.communicate(timeout=3)
        except subprocess.TimeoutExpired:
            # CPython drops a KeyboardInterrupt that lands inside a __del__
            # (it prints "Exception ignored in ..."), in any Python program; on
            # the pure backend a dropped connection's __del__ is Python code,
            # so now and then the first Ctrl-C is lost there. A second one is
            # what a user does then: it must stop the server.
            proc.send_signal(signal.SIGINT)
            _out, err = proc.communicate(timeout=WAIT)
            assert "KeyboardInterrupt" in err and "Exception ignored in" in err, err
            assert err.count("Traceback") == err.count("Exception ignored in"), err
        else:
            assert "Traceback" not in err, err
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_example_client_against_example_server(backend):
    proc, (_host, port) = _start_example_server(backend.name)
    try:
        for message in ("hello", "x" * 5000):
            done = _run_example_client(backend.name, port, message)
            assert done.returncode == 0, (done.stdout, done.stderr)
            assert done.stdout.strip() == message
    finally:
        _stop_example_server(proc)


def test_example_server_against_plain_clients(backend):
    """The example server with ordinary blocking sockets as clients: echoes,
    several clients at once, a half-close answered by the server's close."""
    proc, addr = _start_example_server(backend.name)
    try:
        clients = [socket.create_connection(addr, timeout=WAIT) for _ in range(20)]
        try:
            for i, c in enumerate(clients):
                c.sendall(b"m%d" % i)
            for i, c in enumerate(clients):
                assert recv_exactly(c, len(b"m%d" % i)) == b"m%d" % i
            big = os.urandom(300_000)
            clients[0].sendall(big)
            assert recv_exactly(clients[0], len(big)) == big
            clients[1].shutdown(socket.SHUT_WR)
            assert clients[1].recv(1) == b""  # EOF seen: the server closed its side
        finally:
            for c in clients:
                c.close()
    finally:
        _stop_example_server(proc)


def test_example_client_against_plain_server(backend):
    """The example client against a plain socket server: it sends, reads the
    whole echo, and its half-close reaches the server as EOF after the data."""
    import threading

    got = []
    with socket.create_server(("127.0.0.1", 0)) as ls:
        ls.settimeout(WAIT)

        def serve():
            s, _ = ls.accept()
            with s:
                s.settimeout(WAIT)
                data = b""
                while chunk := s.recv(65536):  # until the client's half-close
                    data += chunk
                    s.sendall(chunk)
                got.append(data)

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        done = _run_example_client(backend.name, ls.getsockname()[1], "over plain TCP")
        t.join(WAIT)
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert done.stdout.strip() == "over plain TCP"
    assert got == [b"over plain TCP"]


def test_example_client_refused(backend):
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        done = _run_example_client(backend.name, port, "nobody")
    assert done.returncode == 1
    assert "cannot connect" in done.stderr and "ConnectionRefusedError" in done.stderr, done.stderr


def test_bench_accept_and_connect_storms():
    """``bench --accept-storm/--connect-storm``, tiny: every connection of
    every storm succeeds (the C storm client checks every echoed byte) and
    both tables are printed."""
    from goaio._bench import native

    if native.build("storm") is None or native.build("echo_epoll") is None:
        pytest.skip(f"no C helpers: {native.why_not('storm') or native.why_not('echo_epoll')}")
    proc = subprocess.run(
        [sys.executable, "-m", "goaio", "bench", "--accept-storm", "300", "--connect-storm", "300",
         "--conns", "10", "--servers", "goaio-pure,goaio-epoll,asyncio"],
        env=subprocess_env(), cwd=CHILD_CWD, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert "accept storm: 300 connections, 10 at a time" in proc.stdout
    assert "connect storm: 300 connections" in proc.stdout
    for label in ("goaio pure ", "asyncio Protocol", "goaio pure svc.connect", "asyncio create_connection"):
        assert label in proc.stdout, proc.stdout
    assert "FAILED" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("name", ["echo_server.py", "echo_client.py"])
def test_readme_shows_the_example_files(name):
    """The README's example code is the example file (without its docstring),
    so what the tests run is what the README shows."""
    with open(os.path.join(EXAMPLES, name)) as f:
        code = f.read()
    body = code[code.index('"""', 3) + 3:].lstrip("\n")
    with open(os.path.join(os.path.dirname(EXAMPLES), "README.md")) as f:
        readme = f.read()
    assert "```python\n" + body + "```\n" in readme
