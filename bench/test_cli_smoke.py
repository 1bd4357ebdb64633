"""Smoke tests of ``python -m goaio echo|bench`` and of the bench machinery
(plain tests, no timing): the echo server answers byte for byte and stops
cleanly, both load clients agree with a server, a short bench run writes
its table and JSON. Quick: ``python -m pytest bench/test_cli_smoke.py``.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from goaio._bench import client as clientmod
from goaio._bench import native
from goaio._bench import servers as srvmod

ROOT = srvmod.PACKAGE_ROOT
TIMEOUT = 60


def _env(**extra):
    """The environment of a child ``python -P -m goaio`` (run in
    srvmod.SERVER_CWD): it imports the goaio these tests import."""
    pythonpath = os.pathsep.join([ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    env = dict(os.environ, PYTHONPATH=pythonpath, **extra)
    return env


def _goaio(*args):
    return [sys.executable, "-P", "-m", "goaio", *args]


@pytest.mark.parametrize("name", ["goaio-pure", "goaio-pure-share", "goaio-epoll", "goaio-epoll-share"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_echo_answers_and_stops_cleanly(name, sig):
    ok, why = srvmod.availability(name)
    if not ok:
        pytest.skip(why)
    spec = srvmod.BY_NAME[name]
    with srvmod.Server(spec) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as c:
            data = os.urandom(300_000)
            c.sendall(data)
            got = bytearray()
            while len(got) < len(data):
                chunk = c.recv(65536)
                assert chunk, "EOF before the whole echo"
                got += chunk
            assert got == data
        server.proc.send_signal(sig)
        assert server.proc.wait(TIMEOUT) == 0
        out = server.output()
    assert f"backend {spec.backend}" in out
    assert "Traceback" not in out


def test_echo_recv_timeout_closes_idle_connection():
    if not srvmod.availability("goaio-pure")[0]:
        pytest.skip("no pure backend")
    proc = subprocess.Popen(_goaio("echo", "--port", "0", "--recv-timeout", "0.2"), cwd=srvmod.SERVER_CWD,
                            env=_env(GOAIO_BACKEND="pure"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        port = int(proc.stdout.readline().rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            c.sendall(b"ping")
            assert c.recv(4) == b"ping"
            assert c.recv(1) == b""  # closed by the server after 0.2 s of silence
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0
        assert "RecvTimeout" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize("kind", ["c", "python"])
def test_clients_check_every_byte(kind):
    if kind == "c" and native.build("loadgen") is None:
        pytest.skip(native.why_not("loadgen"))
    prefix, used, _ = clientmod.client_command(kind)
    assert used == kind
    with srvmod.Server(srvmod.BY_NAME["raw-epoll"]) as server:
        res = clientmod.run_timed(prefix, server.port, 8, 5000, 0.3, 0.1)
        assert res["exit"] == 0 and res["bad_bytes"] == 0 and res["errors"] == 0, res
        assert res["msgs"] > 0 and res["p99_us"] >= res["p50_us"] > 0
        with clientmod.CommandClient(prefix, server.port, 4, 64) as cc:
            res = cc.run(1000)
            assert res["msgs"] == 1000 and res["bad_bytes"] == 0, res


def test_client_detects_wrong_bytes():
    """A server that answers with different bytes fails the run."""
    prefix, _, _ = clientmod.client_command("auto")
    with socket.create_server(("127.0.0.1", 0)) as ls:
        port = ls.getsockname()[1]
        proc = subprocess.Popen(prefix + ["127.0.0.1", str(port), "1", "16", "0"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            conn, _ = ls.accept()
            with conn:
                assert proc.stdout.readline().strip() == "ready"
                proc.stdin.write("run 1\n")
                proc.stdin.flush()
                msg = conn.recv(16)
                conn.sendall(bytes(b ^ 1 for b in msg))  # every byte wrong
                head, fields = clientmod.parse_line(proc.stdout.readline())
            assert head == "result" and fields["bad_bytes"] == 16, fields
        finally:
            proc.kill()
            proc.communicate()


def test_bench_short_run_writes_table_and_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        _goaio("bench", "--seconds", "0.3", "--warmup", "0.1", "--conns", "4",
               "--servers", "goaio-pure,asyncio,goaio-pure-share", "--idle", "200", "--json", str(out)),
        cwd=srvmod.SERVER_CWD, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| goaio pure " in proc.stdout and "| asyncio Protocol" in proc.stdout
    data = json.loads(out.read_text())
    rows = {r["name"]: r for r in data["results"]}
    assert rows["goaio-pure"]["rps"] > 0 and rows["asyncio"]["bad_bytes"] == 0
    # share-buffer mode keeps no receive buffer per idle connection
    assert rows["goaio-pure-share"]["idle"]["bytes_per_conn"] < rows["goaio-pure"]["idle"]["bytes_per_conn"]


def test_bench_skips_unknown_and_missing_servers():
    proc = subprocess.run(_goaio("bench", "--servers", "nonsense"), cwd=srvmod.SERVER_CWD,
                          env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 2 and "unknown server" in proc.stderr
    proc = subprocess.run(_goaio("bench", "--list"), cwd=srvmod.SERVER_CWD,
                          env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0 and "raw-epoll" in proc.stdout


def test_servers_import_a_compiled_goaio_over_a_bare_source_tree(tmp_path):
    """Run from a source tree with nothing compiled (a checkout), the bench
    starts its goaio servers on the goaio that has the compiled backend (the
    installed one), instead of skipping them."""
    native = srvmod._native_backend()
    if native is None or not srvmod.availability(f"goaio-{native}")[0]:
        pytest.skip(f"no compiled {native} backend next to these tests")
    checkout = tmp_path / "checkout"
    shutil.copytree(os.path.join(ROOT, "goaio"), checkout / "goaio",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__", "_epoll.py", "_kqueue.py"))
    env = _env()
    env["PYTHONPATH"] = os.pathsep.join([str(checkout), env["PYTHONPATH"]])
    proc = subprocess.run(_goaio("bench", "--list"), cwd=srvmod.SERVER_CWD, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith(f"goaio-{native} "))
    assert line.split()[-1] == "available", proc.stdout
    assert f"has no compiled {native!r} backend" in proc.stdout, proc.stdout
    out = tmp_path / "b.json"
    proc = subprocess.run(_goaio("bench", "--seconds", "0.2", "--warmup", "0", "--conns", "2",
                                 "--servers", f"goaio-{native}", "--json", str(out)),
                          cwd=srvmod.SERVER_CWD, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"| goaio {native} " in proc.stdout, proc.stdout
    assert json.loads(out.read_text())["results"][0]["rps"] > 0


def test_plot_marks_a_missing_server(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install '.[plot]')")
    from goaio._bench import harness

    rows = [{"name": "goaio-pure", "label": "goaio pure", "rps": 1000.0, "p99_us": 50.0, "runs": [{}]},
            {"name": "uvloop", "label": "uvloop Protocol", "skipped": "uvloop is not installed", "runs": []},
            {"name": "asyncio", "label": "asyncio Protocol", "failed": "2 wrong bytes", "runs": []}]
    meta = {"conns": 2, "size": 64, "client": "python", "date": "now", "idle": 0}
    path = tmp_path / "chart.png"
    labels = harness.plot(rows, meta, str(path))
    assert path.stat().st_size > 0
    assert labels[0] == ["goaio pure", "uvloop Protocol ✗", "asyncio Protocol ✗"], labels
