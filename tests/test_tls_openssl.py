"""TLS against peers nobody here wrote: the ``openssl s_client`` and
``openssl s_server`` command line tools, over loopback."""

import subprocess

import pytest

from support import WAIT, collect, collect_one
from tls_support import openssl_available

pytestmark = pytest.mark.skipif(not openssl_available(), reason="needs the openssl command line tool")


def _stop(proc):
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=WAIT)


def test_openssl_s_client_against_a_goaio_listener(svc, pairs, tls_certs):
    ln = pairs.keep(svc.listen(("127.0.0.1", 0), ssl=tls_certs.server_context()))
    ln.accept("a")
    proc = subprocess.Popen(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{ln.address[1]}", "-servername", "localhost",
         "-CAfile", tls_certs.ca, "-verify_return_error", "-quiet"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        proc.stdin.write(b"hello from s_client\n")
        proc.stdin.flush()
        res = collect_one(svc)
        assert res.err is None, res.err
        conn = pairs.keep(res.conn)
        buf = bytearray(20)
        conn.recv_full("r", buf)
        assert collect_one(svc).err is None and bytes(buf) == b"hello from s_client\n"
        conn.send("s", b"echo:" + bytes(buf))
        conn.shutdown("sh")      # close_notify: s_client ends
        assert all(r.err is None for r in collect(svc, 2))
        out, err = proc.communicate(timeout=WAIT)
        assert out == b"echo:hello from s_client\n", err
        assert b"verify return:1" in err
        conn.recv("eof", bytearray(8))
        assert type(collect_one(svc).err) is EOFError
    finally:
        _stop(proc)


def test_goaio_connect_to_openssl_s_server(svc, pairs, tls_certs):
    proc = subprocess.Popen(
        ["openssl", "s_server", "-accept", "127.0.0.1:0", "-cert", tls_certs.server,
         "-key", tls_certs.server_key, "-naccept", "1", "-rev"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        port = None
        for _ in range(20):
            line = proc.stdout.readline()
            if line.startswith(b"ACCEPT"):
                port = int(line.rsplit(b":", 1)[1])
                break
        assert port, "s_server did not say where it listens"
        svc.connect("c", ("localhost", port), ssl=tls_certs.client_context())
        res = collect_one(svc)
        assert res.err is None, res.err
        conn = pairs.keep(res.conn)
        assert conn.tls.getpeercert()["subject"] == ((("commonName", "localhost"),),)
        conn.send("s", b"goaio\n")
        buf = bytearray(6)
        conn.recv_full("r", buf)
        got = {r.context: r for r in collect(svc, 2)}
        assert all(r.err is None for r in got.values())
        assert bytes(buf) == b"oiaog\n"      # -rev: each line back reversed
    finally:
        _stop(proc)
