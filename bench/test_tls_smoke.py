"""Smoke tests of the bench's TLS machinery (plain tests, no timing): the C TLS
client (loadgen_tls) checks every byte in its echo, handshake and idle
modes against a server of Python's own ssl module, catches a wrong byte, and
``python -m goaio bench --tls`` / ``--tls-handshake`` write their table and
JSON. Quick: ``python -m pytest bench/test_tls_smoke.py``.
"""

import json
import os
import socket
import ssl
import subprocess
import sys
import threading

import pytest

from goaio._bench import client as clientmod
from goaio._bench import native
from goaio._bench import servers as srvmod
from goaio._bench import tlscert

ROOT = srvmod.PACKAGE_ROOT
TIMEOUT = 60


@pytest.fixture(scope="module")
def lg():
    exe = native.build("loadgen_tls")
    if exe is None:
        pytest.skip(native.why_not("loadgen_tls"))
    return exe


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    try:
        return tlscert.make(str(tmp_path_factory.mktemp("cert")))
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot make a certificate: {exc}")


class SSLEcho:
    """A TLS echo server of blocking ssl sockets, a thread per connection;
    ``corrupt``: answers every byte XOR 1."""

    def __init__(self, cert, corrupt=False):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(*cert)
        self.corrupt = corrupt
        self.ls = socket.create_server(("127.0.0.1", 0), backlog=512)
        self.port = self.ls.getsockname()[1]
        self.accepted = 0
        self.threads = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()

    def _accept(self):
        while True:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            self.accepted += 1
            t = threading.Thread(target=self._serve, args=(c,), daemon=True)
            t.start()

    def _serve(self, c):
        c.settimeout(30)
        try:
            with self.ctx.wrap_socket(c, server_side=True) as s:
                while data := s.recv(65536):
                    s.sendall(bytes(b ^ 1 for b in data) if self.corrupt else data)
        except (OSError, ssl.SSLError):
            pass

    def close(self):
        self.ls.close()


def _run(lg, *args, timeout=TIMEOUT):
    proc = subprocess.run([lg, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("result ")]
    assert lines, (proc.returncode, proc.stdout[-500:], proc.stderr[-500:])
    return proc.returncode, clientmod.parse_line(lines[-1])[1], proc.stdout


@pytest.mark.parametrize("size", [64, 70_000])
def test_echo_mode_checks_every_byte(lg, cert, size):
    srv = SSLEcho(cert)
    try:
        rc, res, out = _run(lg, "127.0.0.1", srv.port, 4, size, 0.4, 0.1)
    finally:
        srv.close()
    assert rc == 0 and res["bad_bytes"] == 0 and res["errors"] == 0, res
    assert res["msgs"] > 0 and res["handshakes"] == 4 and res["live"] == 4
    assert "progress t=" in out


def test_handshake_mode_makes_a_connection_per_round_trip(lg, cert):
    srv = SSLEcho(cert)
    try:
        rc, res, _ = _run(lg, "-H", "127.0.0.1", srv.port, 2, 100, 0.5, 0.1)
    finally:
        srv.close()
    assert rc == 0 and res["bad_bytes"] == 0 and res["errors"] == 0, res
    # every completed round trip (warm-up included) had its own handshake
    assert res["msgs"] > 0 and res["handshakes"] >= res["msgs"]
    assert srv.accepted >= res["handshakes"]


def test_wrong_bytes_fail_the_run(lg, cert):
    srv = SSLEcho(cert, corrupt=True)
    try:
        rc, res, _ = _run(lg, "127.0.0.1", srv.port, 1, 16, 0.2, 0)
    finally:
        srv.close()
    assert rc == 1 and res["bad_bytes"] >= 16, res


def test_a_plain_server_is_a_failed_handshake(lg):
    """A server that is not TLS: the client says so (exit 2), no hang."""
    with socket.create_server(("127.0.0.1", 0)) as ls:
        port = ls.getsockname()[1]

        def answer():
            c, _ = ls.accept()
            with c:
                c.recv(4096)
                c.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")

        t = threading.Thread(target=answer, daemon=True)
        t.start()
        proc = subprocess.run([lg, "127.0.0.1", str(port), "1", "64", "0.2"], capture_output=True,
                              text=True, timeout=TIMEOUT)
    assert proc.returncode == 2 and "handshake" in proc.stderr, proc.stderr


def test_idle_mode_holds_connections_until_quit(lg, cert):
    srv = SSLEcho(cert)
    try:
        proc = subprocess.Popen([lg, "-i", "127.0.0.1", str(srv.port), "20"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().split() == ["held", "20"]
            assert srv.accepted == 20
            out, err = proc.communicate("quit\n", timeout=TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0, err
    finally:
        srv.close()


def _goaio(*args):
    return [sys.executable, "-P", "-m", "goaio", *args]


def _env():
    pythonpath = os.pathsep.join([ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    return dict(os.environ, PYTHONPATH=pythonpath)


def _tls_servers():
    """The TLS rows of this machine: asyncio's always; goaio's on each
    backend built here, uvloop's and the C ceiling's where available."""
    names = ["asyncio-tls"]
    for name in ("goaio-pure-tls-share", "goaio-epoll-tls-share"):
        if srvmod.availability(name)[0]:
            names.append(name)
    for name in ("uvloop-tls", "c-epoll-tls"):
        if srvmod.availability(name)[0]:
            names.append(name)
    return names


@pytest.mark.parametrize("mode", ["--tls", "--tls-handshake"])
def test_bench_tls_writes_table_and_json(lg, tmp_path, mode):
    if not srvmod.availability("asyncio-tls")[0]:
        pytest.skip(srvmod.availability("asyncio-tls")[1])
    out = tmp_path / "bench.json"
    names = _tls_servers()
    extra = ["--idle", "50"] if mode == "--tls" else []
    proc = subprocess.run(
        _goaio("bench", mode, "--seconds", "0.3", "--warmup", "0.1", "--conns", "4",
               "--servers", ",".join(names), "--json", str(out), *extra),
        cwd=srvmod.SERVER_CWD, env=_env(), capture_output=True, text=True, timeout=180)
    data = json.loads(out.read_text())
    rows = {r["name"]: r for r in data["results"]}
    failed = {n: r.get("failed") for n, r in rows.items() if r.get("failed")}
    # a goaio row may fail only where its backend has no TLS (the server says so)
    assert all("TLS is not available" in why for why in failed.values()), failed
    assert proc.returncode == (1 if failed else 0), proc.stderr
    assert "| asyncio Protocol, TLS" in proc.stdout
    assert data["meta"]["tls"] and data["meta"]["tls_handshake"] == (mode == "--tls-handshake")
    for name, r in rows.items():
        if name not in failed:
            assert r["rps"] > 0 and r["bad_bytes"] == 0 and r["errors"] == 0, r
            if mode == "--tls":
                assert r["idle"]["bytes_per_conn"] is not None
    if mode == "--tls-handshake":
        assert "handshakes/s" in proc.stdout
