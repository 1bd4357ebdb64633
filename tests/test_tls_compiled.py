"""Facts of the compiled backends' TLS layer (core/tls.pxi) that the pure
backend does not share: one OpenSSL instance (the ssl module's), handshakes
on several threads at once, no Python code per record, and contexts with
Python callbacks (sni_callback) working without a deadlock.

Each test takes the ``backend`` fixture and skips on pure. The peer is
Python's own ssl module (blocking ssl sockets in threads)."""

import os
import socket
import ssl
import sys
import threading
import time

import pytest

from support import WAIT, LINUX, run_python, collect_one


@pytest.fixture
def compiled(backend):
    if backend.name == "pure":
        pytest.skip("a fact of the compiled backends")
    if not backend.module.TLS_IMPLEMENTATION.startswith("C"):
        pytest.fail(f"compiled TLS unavailable: {backend.module.TLS_IMPLEMENTATION}")
    return backend


def _client(ctx, port, payload, out, i):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(payload)
                got = b""
                while len(got) < len(payload):
                    d = s.recv(65536)
                    if not d:
                        break
                    got += d
                out[i] = got
    except Exception as e:          # reported by the test
        out[i] = e


def _echo_until(svc, n_conns, deadline):
    """Run a TLS echo on the results until n_conns connections closed."""
    closed = 0
    while closed < n_conns:
        assert time.monotonic() < deadline, "echo did not finish"
        r = svc.get_complete_status(timeout=1)
        if r is None:
            continue
        if r.context == "accept":
            assert r.err is None, r.err
            r.conn.recv("recv", bytearray(65536))
        elif r.context == "recv":
            if r.err is not None:
                r.conn.close()
                closed += 1
                continue
            r.conn.send("send", bytes(r.buff[:r.bytes_transferred]))
            r.conn.recv("recv", bytearray(65536))


def test_one_openssl_instance(compiled, tls_certs):
    """The backend drives the ssl module's OpenSSL: same version, and (Linux)
    one libssl/libcrypto mapped in the process."""
    assert ssl.OPENSSL_VERSION in compiled.module.TLS_IMPLEMENTATION
    # a handshake through it works with the user's context (the SSL_CTX check
    # at the ssl= call passed)
    svc = compiled.AIOService()
    try:
        ln = svc.listen(("127.0.0.1", 0), ssl=tls_certs.server_context())
        ln.accept("accept")
        out = {}
        t = threading.Thread(target=_client, args=(tls_certs.client_context(), ln.address[1], b"x", out, 0))
        t.start()
        r = collect_one(svc)
        assert r.err is None and r.conn.tls.version() is not None
        r.conn.close()
        t.join(WAIT)
    finally:
        svc.close()
    if LINUX:
        with open("/proc/self/maps") as f:
            libs = {line.split()[-1] for line in f if "libssl" in line or "libcrypto" in line}
        names = {os.path.basename(p).split(".so")[0] for p in libs}
        assert len(libs) == len(names), libs          # one file of each library


def test_failed_resolution_is_a_clear_error_at_the_call(compiled):
    """With OpenSSL not found (the _ssl file the backend looks in is not
    loaded: dlopen(RTLD_NOLOAD) fails for real), every ssl= call raises
    NotImplementedError saying why and TLS_IMPLEMENTATION says so; plain
    connections are unaffected."""
    code = r"""
import sys, ssl, socket, _ssl
_ssl.__file__ = "/nonexistent/_ssl.so"      # before goaio resolves OpenSSL (at import)
mod = __import__("goaio._" + sys.argv[1], fromlist=["x"])
assert mod.TLS_IMPLEMENTATION.startswith("unavailable: dlopen(/nonexistent"), mod.TLS_IMPLEMENTATION
svc = mod.AIOService()
a, b = socket.socketpair()
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
try:
    svc.bind(a, ssl=ctx, server_hostname="localhost")
except NotImplementedError as e:
    print("NIE", e)
conn = svc.bind(a)
conn.close(); b.close(); svc.close()
"""
    p = run_python(code, argv=(compiled.name,))
    assert p.returncode == 0, p.stderr
    assert "NIE TLS is not available" in p.stdout and "/nonexistent/_ssl.so" in p.stdout, p.stdout


def test_handshakes_run_in_parallel_on_several_threads(compiled, tls_certs):
    """With idle workers, handshake steps leave the polling thread: the
    workers run them (tls_offloaded counts them), and more than one worker
    thread spends CPU on them."""
    n = 40
    svc = compiled.AIOService(workers=3)
    try:
        ln = svc.listen(("127.0.0.1", 0), ssl=tls_certs.server_context())
        for _ in range(n):
            ln.accept("accept")
        cctx = tls_certs.client_context()
        out = {}
        threads = [threading.Thread(target=_client, args=(cctx, ln.address[1], b"ping", out, i))
                   for i in range(n)]
        cpu0 = _thread_cpu(svc)
        for t in threads:
            t.start()
        _echo_until(svc, n, time.monotonic() + 3 * WAIT)
        for t in threads:
            t.join(WAIT)
        assert all(v == b"ping" for v in out.values()) and len(out) == n, out
        assert svc._stats()["tls_offloaded"] > 0
        if cpu0:
            # a handshake step costs ~100 us of CPU (the ECDSA signature, the
            # key exchange); an idle worker's wake-ups cost a few us each
            cpu = _thread_cpu(svc)
            busy = [k for k in cpu if cpu[k] - cpu0.get(k, 0) > 2_000_000]
            assert len(busy) >= 2, (cpu0, cpu)
    finally:
        svc.close()


def _thread_cpu(svc):
    """CPU time (ns) of each live goaio worker thread (its POSIX CPU clock)."""
    res = {}
    if not hasattr(time, "pthread_getcpuclockid"):
        return res
    for t in threading.enumerate():
        if t.name.startswith("goaio-worker") and t.ident:
            try:
                res[t.ident] = time.clock_gettime_ns(time.pthread_getcpuclockid(t.ident))
            except OSError:
                pass
    return res


def test_no_python_code_per_record(compiled, tls_certs):
    """A 4 MiB TLS transfer (256+ records each way) runs no Python code in
    goaio's threads: a profile hook set on every thread counts the calls made
    in the collector and the workers, and the count does not grow with the
    records."""
    events = {}
    peer_ident = []

    def prof(frame, event, arg):
        ident = threading.get_ident()
        if peer_ident and ident == peer_ident[0]:
            return
        events[ident] = events.get(ident, 0) + 1

    data = os.urandom(4 << 20)
    ls = socket.create_server(("127.0.0.1", 0))
    sctx = tls_certs.server_context()

    def peer():
        peer_ident.append(threading.get_ident())
        s, _ = ls.accept()
        with sctx.wrap_socket(s, server_side=True) as ss:
            got = bytearray()
            while len(got) < len(data):
                d = ss.recv(1 << 16)
                if not d:
                    break
                got += d
            ss.sendall(bytes(got))

    t = threading.Thread(target=peer)
    t.start()
    threading.setprofile(prof)
    svc = compiled.AIOService(workers=2)
    try:
        while not peer_ident:
            time.sleep(0.01)
        conn = svc.bind(socket.create_connection(("127.0.0.1", ls.getsockname()[1])),
                        ssl=tls_certs.client_context(), server_hostname="localhost")
        back = bytearray(len(data))
        conn.send("send", data)
        conn.recv_full("recv", back)
        before = sum(events.values())
        sys.setprofile(prof)
        got = {collect_one(svc).context, collect_one(svc).context}
        sys.setprofile(None)
        calls = sum(events.values()) - before
        assert got == {"send", "recv"} and back == data
        # two collections: a few dozen calls at most (the result objects, the
        # hook's own frames); 512 records would show as hundreds
        assert calls < 100, events
        conn.close()
    finally:
        threading.setprofile(None)
        sys.setprofile(None)
        svc.close()
        ls.close()
        t.join(WAIT)


def test_sni_callback_works_without_deadlock(compiled, tls_certs):
    """A context whose sni_callback (Python, taking the GIL inside OpenSSL's
    handshake) switches the connection to another context: many concurrent
    handshakes with several workers, while the main thread collects and
    closes connections, finish in bounded time (in a child: a deadlock would
    hang it)."""
    code = r"""
import os, socket, ssl, sys, threading, time
sys.path.insert(0, sys.argv[2])
import tls_support
mod = __import__("goaio._" + sys.argv[1], fromlist=["x"])
certs = tls_support.Certs(sys.argv[3])
other = certs.server_context()
seen = []
def sni(sslobj, name, ctx):
    seen.append((name, threading.get_ident()))
    sslobj.context = other
    sum(range(2000))        # some Python work while OpenSSL waits
sctx = certs.server_context()
sctx.sni_callback = sni
cctx = certs.client_context()
svc = mod.AIOService(workers=3)
ln = svc.listen(("127.0.0.1", 0), ssl=sctx)
N = 30
for _ in range(N):
    ln.accept("a")
out = []
def client():
    with socket.create_connection(("127.0.0.1", ln.address[1])) as raw:
        with cctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"hi")
            out.append(s.recv(10))
ths = [threading.Thread(target=client) for _ in range(N)]
for t in ths: t.start()
done = 0
while done < N:
    r = svc.get_complete_status(timeout=10)
    assert r is not None, "stuck"
    if r.context == "a":
        assert r.err is None, r.err
        r.conn.recv("r", bytearray(10))
    elif r.context == "r":
        r.conn.send("s", bytes(r.buff[:r.bytes_transferred]))
    else:
        r.conn.close()
        done += 1
for t in ths: t.join(10)
assert out == [b"hi"] * N, out
assert len(seen) == N and all(n == "localhost" for n, _ in seen)
svc.close()
print("ok")
"""
    here = os.path.dirname(os.path.abspath(__file__))
    p = run_python(code, argv=(compiled.name, here, tls_certs.dir), timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-3000:]


def test_tls_info_calls_beside_a_transfer(compiled, tls_certs):
    """TLSInfo calls from one thread while workers and a collector move 2 MiB
    both ways: the guard keeps them off the SSL while IO runs, nothing is lost
    or stuck (in a child: a deadlock would hang it)."""
    code = r"""
import os, socket, ssl, sys, threading
sys.path.insert(0, sys.argv[2])
import tls_support
mod = __import__("goaio._" + sys.argv[1], fromlist=["x"])
certs = tls_support.Certs(sys.argv[3])
sctx = certs.server_context()
ls = socket.create_server(("127.0.0.1", 0))
data = os.urandom(2 << 20)
def peer():
    s, _ = ls.accept()
    with sctx.wrap_socket(s, server_side=True) as ss:
        got = bytearray()
        while len(got) < len(data):
            got += ss.recv(1 << 16)
        ss.sendall(bytes(got))
t = threading.Thread(target=peer); t.start()
svc = mod.AIOService(workers=2)
conn = svc.bind(socket.create_connection(ls.getsockname()), ssl=certs.client_context(),
                server_hostname="localhost")
stop = []
calls = [0]
def reader():
    import time
    while conn.tls.version() is None and not stop:     # (getpeercert: after the handshake)
        time.sleep(0.001)
    while not stop:
        info = conn.tls
        info.version(); info.cipher(); info.getpeercert(); info.session_reused
        calls[0] += 1
r = threading.Thread(target=reader); r.start()
back = bytearray(len(data))
for i in range(0, len(data), 1 << 16):
    conn.send("s", data[i:i + (1 << 16)])
conn.recv_full("r", back)
n = 0
while n < len(data) // (1 << 16) + 1:
    res = svc.get_complete_status(timeout=20)
    assert res is not None, "stuck"
    assert res.err is None, res.err
    n += 1
import time
end = time.monotonic() + 10
while calls[0] == 0 and time.monotonic() < end:
    time.sleep(0.01)
stop.append(1); r.join(10); t.join(10)
assert back == data and calls[0] > 0
conn.close(); svc.close()
print("ok")
"""
    here = os.path.dirname(os.path.abspath(__file__))
    p = run_python(code, argv=(compiled.name, here, tls_certs.dir), timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-3000:]
