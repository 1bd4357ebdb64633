"""``python -m goaio echo --tls``, examples/tls_echo_*.py and
examples/https_server.py against real clients nobody here wrote:
``openssl s_client`` (bytes echoed, TLS 1.2 and 1.3, ALPN, certificate
verified against the test CA) and ``curl -k`` (several keep-alive requests
on one connection); the CLI's bad input (a missing or wrong certificate:
a clear message, exit status 1). Every test runs on every backend.
"""

import os
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time

import pytest

from support import CHILD_CWD, WAIT, recv_exactly, subprocess_env

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
OPENSSL = shutil.which("openssl")
CURL = shutil.which("curl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="no openssl command")
needs_curl = pytest.mark.skipif(CURL is None, reason="no curl command")


def _start(backend_name, argv, what):
    proc = subprocess.Popen(argv, env=subprocess_env(backend_name), cwd=CHILD_CWD, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    r, _, _ = select.select([proc.stdout], [], [], WAIT * 3)
    line = proc.stdout.readline() if r else ""
    m = re.search(r"listening on (\S+):(\d+)", line)
    if not m:
        proc.kill()
        out, err = proc.communicate(timeout=WAIT)
        pytest.fail(f"{what} did not start: {line!r} {out!r} {err!r}")
    return proc, line, int(m.group(2))


def _start_echo(backend_name, certs, *args):
    argv = [sys.executable, "-m", "goaio", "echo", "--port", "0", "--tls", certs.server, certs.server_key,
            *args]
    return _start(backend_name, argv, "echo --tls")


def _stop(proc, sig=signal.SIGTERM):
    """Stops a server; returns its stderr (asserting a clean exit)."""
    try:
        proc.send_signal(sig)
        try:
            _out, err = proc.communicate(timeout=3)
        except subprocess.TimeoutExpired:  # a Ctrl-C CPython dropped inside a __del__ (see test_cli)
            proc.send_signal(sig)
            _out, err = proc.communicate(timeout=WAIT)
            assert err.count("Traceback") == err.count("Exception ignored in"), err
        else:
            assert "Traceback" not in err, err
        assert proc.returncode == 0, err
        return err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _s_client(port, certs, payload, *flags, expect=None):
    """Runs ``openssl s_client`` against 127.0.0.1:port, verifying the server
    against the test CA, writes ``payload`` and reads its stdout until
    ``expect`` (default: the payload) has come back, then ends it. Returns
    (stdout, stderr)."""
    argv = [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
            "-CAfile", certs.ca, "-verify_return_error", "-ign_eof", *flags]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    want = payload if expect is None else expect
    out = bytearray()
    try:
        proc.stdin.write(payload)
        proc.stdin.flush()
        deadline = time.monotonic() + WAIT * 3
        while want not in out and time.monotonic() < deadline:
            r, _, _ = select.select([proc.stdout], [], [], 0.2)
            if r:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                out += chunk
    finally:
        proc.kill()
        rest, err = proc.communicate(timeout=WAIT)
    out += rest
    return bytes(out), err.decode(errors="replace")


def _lines(n, seed):
    """n lines of hex (s_client reads no command letter from them)."""
    import random

    rnd = random.Random(seed)
    return b"".join(rnd.randbytes(rnd.randrange(1, 400)).hex().encode() + b"\n" for _ in range(n))


@needs_openssl
@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
@pytest.mark.parametrize("share", [False, True], ids=["own-buffers", "share-buff"])
def test_echo_tls_answers_openssl_s_client(backend, tls_certs, version, share):
    proc, banner, port = _start_echo(backend.name, tls_certs, *(["--share-buff"] if share else []))
    try:
        assert f"backend {backend.name}, TLS" in banner, banner
        payload = _lines(600, seed=len(version) + share)  # ~240 KB: many records each way
        out, err = _s_client(port, tls_certs, payload, version)
        assert payload in out, (len(out), err[-2000:])
        text = out.decode(errors="replace")
        assert "Verify return code: 0 (ok)" in text, text[-3000:]
        proto = "TLSv1.2" if version == "-tls1_2" else "TLSv1.3"
        assert f"New, {proto}, Cipher is " in text, text[-3000:]
    finally:
        _stop(proc)


@needs_openssl
def test_echo_tls_alpn_with_openssl_s_client(backend, tls_certs):
    proc, _, port = _start_echo(backend.name, tls_certs, "--alpn", "goaio-echo", "--alpn", "http/1.1")
    try:
        out, _ = _s_client(port, tls_certs, b"abc123\n", "-alpn", "http/1.1")
        text = out.decode(errors="replace")
        assert "ALPN protocol: http/1.1" in text and "abc123\n" in text, text[-3000:]
        out, _ = _s_client(port, tls_certs, b"def456\n", "-alpn", "goaio-echo,other")
        text = out.decode(errors="replace")
        assert "ALPN protocol: goaio-echo" in text and "def456\n" in text, text[-3000:]
    finally:
        _stop(proc)


def test_echo_tls_with_python_ssl_and_a_failed_handshake(backend, tls_certs):
    """Python's ssl as the client: byte-exact echo of 1 MiB; a plain TCP
    client on the TLS port fails only its own handshake (reported, the
    server goes on serving), and SIGINT still stops the server with 0."""
    proc, _, port = _start_echo(backend.name, tls_certs, "--ssl-handshake-timeout", "5")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as plain:
            plain.sendall(b"GET / HTTP/1.0\r\n\r\n")  # not a ClientHello
            plain.settimeout(WAIT)
            try:
                while plain.recv(4096):  # an alert, then the close
                    pass
            except ConnectionResetError:
                pass
        ctx = tls_certs.client_context()
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                data = os.urandom(1 << 20)
                s.sendall(data)
                assert recv_exactly(s, len(data)) == data
                assert s.version() in ("TLSv1.2", "TLSv1.3")
    finally:
        err = _stop(proc, signal.SIGINT)
    assert "TLS handshake failed" in err, err


def test_echo_tls_handshake_timeout_drops_a_silent_client(backend, tls_certs):
    """--ssl-handshake-timeout reaches the listener: a client that never
    speaks is dropped after it (its socket closed, the timeout reported),
    and a client connected after it is served while the silent one still
    waits (no time bound beyond that: a loaded machine may be slow)."""
    timeout = 3.0
    proc, _, port = _start_echo(backend.name, tls_certs, "--ssl-handshake-timeout", str(timeout))
    try:
        silent = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        t0 = time.monotonic()
        with silent:
            ctx = tls_certs.client_context()
            with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
                with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                    s.sendall(b"not delayed")
                    assert recv_exactly(s, 11) == b"not delayed"
            served = time.monotonic() - t0
            silent.setblocking(False)
            with pytest.raises(BlockingIOError):  # still open: the other was not queued behind it
                silent.recv(1)
            silent.setblocking(True)
            silent.settimeout(WAIT + timeout)
            try:
                assert silent.recv(1) == b""  # then closed by the server, no byte sent
            except ConnectionResetError:
                pass
            dropped = time.monotonic() - t0
        assert served < timeout <= dropped + 0.1, (served, dropped)
    except BaseException:
        proc.kill()
        _, err = proc.communicate(timeout=WAIT)
        print("server stderr:", err[-3000:])
        raise
    err = _stop(proc, signal.SIGINT)
    assert "TLS handshake failed" in err and "HandshakeTimeout" in err, err


@pytest.mark.parametrize("which", ["cert", "key"])
def test_echo_tls_missing_file_is_a_clear_error(backend, tls_certs, tmp_path, which):
    missing = str(tmp_path / "nothing-here.pem")
    cert, key = (missing, tls_certs.server_key) if which == "cert" else (tls_certs.server, missing)
    proc = subprocess.run([sys.executable, "-m", "goaio", "echo", "--port", "0", "--tls", cert, key],
                          env=subprocess_env(backend.name), cwd=CHILD_CWD, capture_output=True, text=True,
                          timeout=WAIT * 3)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    what = "certificate" if which == "cert" else "key"
    assert f"goaio echo: cannot load the TLS {what}: no such file: {missing!r}" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "listening" not in proc.stdout


def test_echo_tls_wrong_files_and_usage(backend, tls_certs):
    # the key where the certificate belongs (and the other way round): ssl's own error, exit 1
    proc = subprocess.run([sys.executable, "-m", "goaio", "echo", "--port", "0", "--tls",
                           tls_certs.server_key, tls_certs.server], env=subprocess_env(backend.name),
                          cwd=CHILD_CWD, capture_output=True, text=True, timeout=WAIT * 3)
    assert proc.returncode == 1 and "cannot load the TLS certificate" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    # a certificate with another one's key
    proc = subprocess.run([sys.executable, "-m", "goaio", "echo", "--port", "0", "--tls",
                           tls_certs.server, tls_certs.untrusted_key], env=subprocess_env(backend.name),
                          cwd=CHILD_CWD, capture_output=True, text=True, timeout=WAIT * 3)
    assert proc.returncode == 1 and "cannot load the TLS certificate" in proc.stderr, proc.stderr
    # --alpn without --tls, --tls with one file: usage errors (2)
    for args in (["--alpn", "h2"], ["--tls", tls_certs.server], ["--tls", tls_certs.server,
                                                                  tls_certs.server_key,
                                                                  "--ssl-handshake-timeout", "0"]):
        proc = subprocess.run([sys.executable, "-m", "goaio", "echo", "--port", "0", *args],
                              env=subprocess_env(backend.name), cwd=CHILD_CWD, capture_output=True,
                              text=True, timeout=WAIT * 3)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------
# examples


@needs_openssl
def test_tls_echo_example_with_s_client_and_the_example_client(backend, tls_certs):
    proc, _, port = _start(backend.name, [sys.executable, os.path.join(EXAMPLES, "tls_echo_server.py"),
                                          tls_certs.server, tls_certs.server_key, "0"], "tls_echo_server.py")
    try:
        payload = _lines(50, seed=7)
        out, err = _s_client(port, tls_certs, payload)
        assert payload in out, err[-2000:]
        done = subprocess.run([sys.executable, os.path.join(EXAMPLES, "tls_echo_client.py"), tls_certs.ca,
                               "127.0.0.1", str(port), "hello from the example"],
                              env=subprocess_env(backend.name), cwd=CHILD_CWD, capture_output=True,
                              text=True, timeout=WAIT * 3)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "hello from the example"
        assert "TLSv1.3" in done.stderr
    finally:
        _stop(proc, signal.SIGINT)


def test_tls_echo_client_example_rejects_an_untrusted_server(backend, tls_certs):
    """The example client verifies: against a server with a certificate the
    CA did not sign, it exits non-zero naming the verification error."""
    ctx = tls_certs.server_context("untrusted")
    ls = socket.create_server(("127.0.0.1", 0))
    port = ls.getsockname()[1]
    import threading

    def serve():
        try:
            c, _ = ls.accept()
        except OSError:
            return
        try:
            with ctx.wrap_socket(c, server_side=True) as s:
                s.recv(1)
        except (OSError, ssl.SSLError):
            pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        done = subprocess.run([sys.executable, os.path.join(EXAMPLES, "tls_echo_client.py"), tls_certs.ca,
                               "127.0.0.1", str(port)], env=subprocess_env(backend.name), cwd=CHILD_CWD,
                              capture_output=True, text=True, timeout=WAIT * 3)
    finally:
        ls.close()
        t.join(WAIT)
    assert done.returncode != 0
    assert "SSLCertVerificationError" in done.stderr, done.stderr


def _start_https(backend_name, certs):
    return _start(backend_name, [sys.executable, os.path.join(EXAMPLES, "https_server.py"), certs.server,
                                 certs.server_key, "0"], "https_server.py")


@needs_curl
def test_https_example_keeps_curl_connections_alive(backend, tls_certs):
    proc, _, port = _start_https(backend.name, tls_certs)
    url = f"https://127.0.0.1:{port}/"
    try:
        done = subprocess.run([CURL, "-k", "-s", "-S", "--http1.1", "-w", r" %{http_code} %{num_connects}\n",
                               url, url, url, url, url], capture_output=True, text=True, timeout=WAIT * 3)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert len(lines) == 5, done.stdout
        assert all(line.startswith("Hello, World! 200 ") for line in lines), done.stdout
        # one connection for all five requests: the first connects, the others reuse it
        assert [line.split()[-1] for line in lines] == ["1", "0", "0", "0", "0"], done.stdout
        # "Connection: close" is honoured: the response, then close_notify and the close
        done = subprocess.run([CURL, "-k", "-s", "-S", "-v", "--http1.1", "-H", "Connection: close", url],
                              capture_output=True, text=True, timeout=WAIT * 3)
        assert done.returncode == 0 and done.stdout == "Hello, World!", done.stderr
        # curl verifying the certificate against the test CA, ALPN http/1.1
        done = subprocess.run([CURL, "-s", "-S", "-v", "--cacert", tls_certs.ca, "--http1.1",
                               f"https://localhost:{port}/"], capture_output=True, text=True,
                              timeout=WAIT * 3)
        assert done.returncode == 0 and done.stdout == "Hello, World!", done.stderr
        assert "ALPN" in done.stderr and "http/1.1" in done.stderr, done.stderr
    finally:
        _stop(proc, signal.SIGINT)


def test_https_example_pipelined_requests_with_python_ssl(backend, tls_certs):
    """Three pipelined requests in one write, then one split across writes:
    four responses, in order, on one connection."""
    proc, _, port = _start_https(backend.name, tls_certs)
    response = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\n"
                b"Hello, World!")
    try:
        ctx = tls_certs.client_context()
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                req = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
                s.sendall(req * 3)
                assert recv_exactly(s, 3 * len(response)) == response * 3
                s.sendall(req[:10])
                time.sleep(0.05)
                s.sendall(req[10:])
                assert recv_exactly(s, len(response)) == response
    finally:
        _stop(proc, signal.SIGINT)
