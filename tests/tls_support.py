"""Test certificates and ssl contexts for the TLS tests.

``make_certs(directory)`` runs the ``openssl`` command line tool to write,
into ``directory``:

* ``ca.pem`` / ``ca.key``: a test certificate authority;
* ``server.pem`` / ``server.key``: a server certificate for ``localhost``,
  ``127.0.0.1`` and ``::1``, signed by the CA;
* ``untrusted.pem`` / ``untrusted.key``: a self-signed server certificate
  for the same names, which no context here trusts;
* ``client.pem`` / ``client.key``: a client certificate signed by the CA.

The session fixture ``tls_certs`` (tests/conftest.py) makes them once per
test session in a temporary directory and yields a :class:`Certs`.
Children that need them get the directory path (``Certs(path)``).

Peers: ``InThread`` (a blocking ssl socket's calls in a thread), ``BioPeer``
(SSLObject + MemoryBIO on a plain socket: the test controls every encrypted
byte), and the pair makers ``tls_server_pair`` / ``tls_client_pair``
(goaio on a bound socket, an ssl socket on the other end, both handshaken).
"""

import os
import shutil
import ssl
import subprocess

#: One curve for every key: quick to generate and to handshake with.
_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
_DAYS = ["-days", "3650"]
SERVER_NAMES = "DNS:localhost,IP:127.0.0.1,IP:::1"

_SERVER_EXT = f"""\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = {SERVER_NAMES}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""
_CLIENT_EXT = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


def openssl_available():
    return shutil.which("openssl") is not None


def _run(args, cwd):
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{proc.stderr}")


def _signed(cwd, name, cn, ext_text, serial):
    with open(os.path.join(cwd, f"{name}.ext"), "w") as f:
        f.write(ext_text)
    _run(["req", "-new", *_KEY, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}"], cwd)
    _run(["x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
          "-set_serial", str(serial), "-out", f"{name}.pem", *_DAYS, "-sha256",
          "-extfile", f"{name}.ext"], cwd)


def make_certs(directory):
    """Write the CA, server, untrusted and client certificates into directory."""
    os.makedirs(directory, exist_ok=True)
    _run(["req", "-x509", *_KEY, "-keyout", "ca.key", "-out", "ca.pem", *_DAYS, "-sha256",
          "-subj", "/CN=goaio test CA",
          "-addext", "basicConstraints=critical,CA:TRUE",
          "-addext", "keyUsage=critical,keyCertSign,cRLSign"], directory)
    _signed(directory, "server", "localhost", _SERVER_EXT, 1001)
    _signed(directory, "client", "goaio-test-client", _CLIENT_EXT, 1002)
    _run(["req", "-x509", *_KEY, "-keyout", "untrusted.key", "-out", "untrusted.pem", *_DAYS,
          "-sha256", "-subj", "/CN=localhost",
          "-addext", f"subjectAltName={SERVER_NAMES}",
          "-addext", "extendedKeyUsage=serverAuth"], directory)
    return Certs(directory)


def _versions(ctx, version):
    """Pin ``ctx`` to one TLS version: "1.2", "1.3" or None (the default range)."""
    if version is not None:
        v = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}[version]
        ctx.minimum_version = v
        ctx.maximum_version = v
    return ctx


class Certs:
    """The certificate files in one directory and the contexts made of them."""

    def __init__(self, directory):
        self.dir = directory
        for name in ("ca", "server", "untrusted", "client"):
            setattr(self, name, os.path.join(directory, f"{name}.pem"))
            setattr(self, f"{name}_key", os.path.join(directory, f"{name}.key"))

    def server_context(self, cert="server", *, require_client_cert=False, alpn=None, version=None):
        """A PROTOCOL_TLS_SERVER context with ``cert`` ("server" or "untrusted");
        ``require_client_cert`` makes it verify clients against the test CA."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(getattr(self, cert), getattr(self, f"{cert}_key"))
        if require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(self.ca)
        if alpn:
            ctx.set_alpn_protocols(alpn)
        return _versions(ctx, version)

    def client_context(self, *, verify=True, client_cert=False, alpn=None, version=None):
        """A PROTOCOL_TLS_CLIENT context trusting the test CA (verify=True:
        certificate and host name checked) or checking nothing."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if verify:
            ctx.load_verify_locations(self.ca)
        else:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if client_cert:
            ctx.load_cert_chain(self.client, self.client_key)
        if alpn:
            ctx.set_alpn_protocols(alpn)
        return _versions(ctx, version)


# --- peers: Python's ssl module on the other end ------------------------------------

import threading as _threading  # noqa: E402

from support import WAIT as _WAIT, collect as _collect, wait_until as _wait_until  # noqa: E402


class InThread:
    """Run ``fn(*args)`` in a daemon thread; ``result()`` joins and returns
    its value or raises its exception."""

    def __init__(self, fn, *args):
        self._value = None
        self._error = None
        self._t = _threading.Thread(target=self._run, args=(fn, args), daemon=True)
        self._t.start()

    def _run(self, fn, args):
        try:
            self._value = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - re-raised by result()
            self._error = exc

    def result(self, timeout=30.0):
        self._t.join(timeout)
        if self._t.is_alive():
            raise AssertionError(f"peer thread still running after {timeout}s")
        if self._error is not None:
            raise self._error
        return self._value


def recv_exactly_ssl(ssock, n):
    """Read exactly n plaintext bytes from a blocking ssl socket."""
    buf = bytearray()
    while len(buf) < n:
        chunk = ssock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise AssertionError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


class BioPeer:
    """A TLS peer on a plain blocking socket through ssl.SSLObject + MemoryBIO,
    so that a test controls every encrypted byte (cut a record, corrupt one)."""

    def __init__(self, sock, ctx, server_side=False, server_hostname=None):
        self.sock = sock
        self.inc = ssl.MemoryBIO()
        self.out = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_side=server_side,
                                server_hostname=server_hostname)

    def _pump_out(self):
        data = self.out.read()
        if data:
            self.sock.sendall(data)

    def handshake(self):
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._pump_out()
                data = self.sock.recv(65536)
                if not data:
                    self.inc.write_eof()
                else:
                    self.inc.write(data)
        self._pump_out()

    def records(self, data):
        """Encrypt ``data`` (one record per 16 KiB) and return the ciphertext
        without sending it."""
        self.obj.write(data)
        return self.out.read()

    def send(self, data):
        self.sock.sendall(self.records(data))

    def recv(self, n):
        """Up to n plaintext bytes (b'' at close_notify)."""
        while True:
            try:
                return self.obj.read(n)
            except ssl.SSLWantReadError:
                data = self.sock.recv(65536)
                if not data:
                    self.inc.write_eof()
                else:
                    self.inc.write(data)
            finally:
                self._pump_out()

    def duplex(self, data, expect, seed=7, timeout=60.0):
        """Send ``data`` in random-sized writes while reading ``expect`` bytes,
        in this one thread (an SSL object must not be used by two threads at
        once): select() on the socket, SSLObject + BIOs in between. Returns
        the plaintext read."""
        import random
        import select
        import time

        rnd = random.Random(seed)
        sock = self.sock
        sock.setblocking(False)
        got = bytearray()
        pending = b""
        i = 0
        deadline = time.monotonic() + timeout
        try:
            while len(got) < expect or i < len(data) or pending:
                if time.monotonic() > deadline:
                    raise AssertionError(f"duplex: {len(got)} of {expect} read, {i} of {len(data)} sent")
                if not pending and i < len(data):
                    n = rnd.randint(1, 100000)
                    self.obj.write(data[i:i + n])
                    i += n
                    pending = self.out.read()
                r, w, _ = select.select([sock] if len(got) < expect else [], [sock] if pending else [], [], 1.0)
                if r:
                    try:
                        chunk = sock.recv(65536)
                    except BlockingIOError:
                        chunk = None
                    if chunk == b"":
                        raise AssertionError(f"duplex: EOF after {len(got)} of {expect}")
                    if chunk:
                        self.inc.write(chunk)
                        while True:
                            try:
                                plain = self.obj.read(65536)
                            except ssl.SSLWantReadError:
                                break
                            if not plain:
                                break
                            got += plain
                        pending += self.out.read()
                if w and pending:
                    try:
                        k = sock.send(pending)
                    except BlockingIOError:
                        k = 0
                    pending = pending[k:]
        finally:
            sock.setblocking(True)
        return bytes(got)


# --- pairs: goaio on one end, an ssl socket on the other ------------------------------------------------------------------------

def tls_server_pair(svc, pairs, certs, *, server_ctx=None, client_ctx=None, hostname="localhost",
                    **bind_opts):
    """goaio is the TLS server on a bound socket, an ssl socket the client.
    Returns (conn, client ssl socket), both handshaken."""
    to_bind, peer = pairs()
    server_ctx = server_ctx or certs.server_context()
    client_ctx = client_ctx or certs.client_context()
    conn = pairs.keep(svc.bind(to_bind, ssl=server_ctx, server_side=True, **bind_opts))
    client = InThread(client_ctx.wrap_socket, peer, False, True, True, hostname).result(_WAIT)
    pairs._socks.append(client)
    handshaken(conn)
    return conn, client


def tls_client_pair(svc, pairs, certs, *, server_ctx=None, client_ctx=None, hostname="localhost",
                    **bind_opts):
    """goaio is the TLS client on a bound socket, an ssl socket the server."""
    to_bind, peer = pairs()
    server_ctx = server_ctx or certs.server_context()
    client_ctx = client_ctx or certs.client_context()
    server = InThread(server_ctx.wrap_socket, peer, True)
    conn = pairs.keep(svc.bind(to_bind, ssl=client_ctx, server_hostname=hostname, **bind_opts))
    ssock = server.result(_WAIT)
    pairs._socks.append(ssock)
    handshaken(conn)
    return conn, ssock


def handshaken(conn):
    """Wait until goaio's side of a bound TLS connection finished its handshake
    (the peer may finish first: a TLS 1.3 client, a TLS 1.2 server)."""
    _wait_until(lambda: conn.tls.version() is not None, msg="goaio's handshake")


def roundtrip(svc, conn, peer, data=b"ping"):
    """One message each way through a handshaken pair (peer: an ssl socket)."""
    conn.send("s", data)
    assert recv_exactly_ssl(peer, len(data)) == data
    buf = bytearray(len(data))
    conn.recv_full("r", buf)
    peer.sendall(data[::-1])
    got = {r.context: r for r in _collect(svc, 2)}
    assert got["s"].err is None and got["s"].bytes_transferred == len(data)
    assert got["r"].err is None and bytes(buf) == data[::-1]


