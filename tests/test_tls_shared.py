"""The shared TLS pieces (goaio/_tls.py): argument checks, the record framing
tracker and the errors built from C parts, held against Python's ssl module."""

import math
import ssl

import pytest

import goaio
from goaio import _messages, _tls


# --- checks ---------------------------------------------------------------------

def test_check_bind_tls_plain_and_defaults(tls_certs):
    assert _tls.check_bind_tls(None) is None
    ctx = tls_certs.client_context()
    p = _tls.check_bind_tls(ctx, server_hostname="localhost")
    assert (p.context, p.server_side, p.server_hostname) == (ctx, False, "localhost")
    assert p.handshake_timeout == _messages.SSL_HANDSHAKE_TIMEOUT == 60.0
    assert _tls.check_bind_tls(ctx, False, "x", math.inf).handshake_timeout == math.inf
    assert _tls.check_bind_tls(ctx, False, "x", 10 ** 400).handshake_timeout == math.inf
    assert _tls.check_bind_tls(ctx, False, "x", 2).handshake_timeout == 2.0


@pytest.mark.parametrize("args, cls, msg", [
    (("nope",), TypeError, _messages.SSL_NOT_CONTEXT.format("str")),
    ((None, True), ValueError, _messages.SSL_ONLY_WITH_SSL.format("server_side")),
    ((None, False, "h"), ValueError, _messages.SSL_ONLY_WITH_SSL.format("server_hostname")),
    ((None, False, None, 5), ValueError, _messages.SSL_ONLY_WITH_SSL.format("ssl_handshake_timeout")),
])
def test_check_bind_tls_bad_input_without_context(args, cls, msg):
    with pytest.raises(cls) as ei:
        _tls.check_bind_tls(*args)
    assert str(ei.value) == msg


def test_check_bind_tls_bad_input(tls_certs):
    client = tls_certs.client_context()
    server = tls_certs.server_context()
    cases = [
        ((client,), ValueError, _messages.SSL_NEEDS_HOSTNAME),
        ((server, True, "localhost"), ValueError, _messages.SSL_HOSTNAME_SERVER),
        ((client, 1, "x"), TypeError, _messages.SSL_SERVER_SIDE_TYPE.format("int")),
        ((client, False, b"x"), TypeError, _messages.SSL_HOSTNAME_TYPE.format("bytes")),
        ((client, False, ""), ValueError, _messages.SSL_HOSTNAME_EMPTY),
        ((client, False, ".x"), ValueError, _messages.SSL_HOSTNAME_EMPTY),
        ((client, False, "x", 0), ValueError, _messages.SSL_TIMEOUT_VALUE.format(0)),
        ((client, False, "x", -1.5), ValueError, _messages.SSL_TIMEOUT_VALUE.format(-1.5)),
        ((client, False, "x", math.nan), ValueError, _messages.SSL_TIMEOUT_VALUE.format(math.nan)),
        ((client, False, "x", "1"), TypeError, _messages.SSL_TIMEOUT_TYPE.format("str")),
        ((client, False, "x", True), TypeError, _messages.SSL_TIMEOUT_TYPE.format("bool")),
    ]
    for args, cls, msg in cases:
        with pytest.raises(cls) as ei:
            _tls.check_bind_tls(*args)
        assert type(ei.value) is cls and str(ei.value) == msg, args


def test_check_non_verifying_client_needs_no_hostname(tls_certs):
    p = _tls.check_bind_tls(tls_certs.client_context(verify=False))
    assert p.server_hostname is None and not p.server_side


def test_check_connect_tls_takes_the_host_of_the_address(tls_certs):
    ctx = tls_certs.client_context()
    assert _tls.check_connect_tls(ctx, None, None, ("localhost", 1)).server_hostname == "localhost"
    assert _tls.check_connect_tls(ctx, None, None, ("::1", 1, 0, 0)).server_hostname == "::1"
    assert _tls.check_connect_tls(ctx, "other", None, ("localhost", 1)).server_hostname == "other"
    with pytest.raises(ValueError, match="check_hostname"):
        _tls.check_connect_tls(ctx, None, None, "/tmp/sock")
    assert _tls.check_connect_tls(None, None, None, ("h", 1)) is None
    with pytest.raises(ValueError):
        _tls.check_connect_tls(None, "h", None, ("h", 1))


def test_check_listen_and_start_tls(tls_certs):
    p = _tls.check_listen_tls(tls_certs.server_context(), 3)
    assert p.server_side and p.server_hostname is None and p.handshake_timeout == 3.0
    assert _tls.check_listen_tls(None) is None
    with pytest.raises(ValueError):
        _tls.check_listen_tls(None, 3)
    with pytest.raises(TypeError) as ei:
        _tls.check_start_tls(None)
    assert str(ei.value) == _messages.SSL_NOT_CONTEXT.format("NoneType")


def test_handshake_timeout_error_is_a_timeout():
    exc = _tls.handshake_timeout_error()
    assert isinstance(exc, goaio.HandshakeTimeout)
    assert isinstance(exc, TimeoutError) and isinstance(exc, goaio.Error)
    assert str(exc) == _messages.HANDSHAKE_TIMEOUT


# --- record framing -----------------------------------------------------------------

def _record(body, kind=23):
    return bytes([kind, 3, 3]) + len(body).to_bytes(2, "big") + body


def test_framing_whole_and_split_records():
    stream = _record(b"a" * 300) + _record(b"") + _record(b"b" * 16000)
    for step in (1, 2, 3, 5, 7, 64, len(stream)):
        f = _tls.RecordFraming()
        assert f.at_boundary
        cuts = []
        for i in range(0, len(stream), step):
            f.feed(stream[i:i + step])
            cuts.append((i + len(stream[i:i + step]), f.at_boundary))
        assert f.at_boundary and f.records == 3, step
        ends = {5 + 300, 5 + 300 + 5, len(stream)}
        for pos, at in cuts:
            assert at == (pos in ends), (step, pos)


def test_framing_inside_header_and_body():
    f = _tls.RecordFraming()
    f.feed(b"\x17\x03")
    assert not f.at_boundary and f.pending == 3
    f.feed(b"\x03\x00\x04ab")
    assert not f.at_boundary and f.pending == 2
    f.feed(memoryview(b"cd"))
    assert f.at_boundary and f.pending == 0 and f.records == 1


def test_framing_on_a_real_tls_stream(tls_certs):
    """Every byte ssl writes is framed as records, and a stream cut at a
    record end is at a boundary."""
    cin, cout, sin, sout = (ssl.MemoryBIO() for _ in range(4))
    client = tls_certs.client_context().wrap_bio(cin, cout, server_hostname="localhost")
    server = tls_certs.server_context().wrap_bio(sin, sout, server_side=True)
    to_client = _tls.RecordFraming()
    for _ in range(10):
        for obj in (client, server):
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
        sin.write(cout.read())
        data = sout.read()
        to_client.feed(data)
        assert to_client.at_boundary
        cin.write(data)
    server.write(b"x" * 40000)
    data = sout.read()
    to_client.feed(data[:-1])
    assert not to_client.at_boundary
    to_client.feed(data[-1:])
    assert to_client.at_boundary


# --- errors from C parts ---------------------------------------------------------------

def _provoke_cert_error(tls_certs):
    cin, cout, sin, sout = (ssl.MemoryBIO() for _ in range(4))
    client = tls_certs.client_context().wrap_bio(cin, cout, server_hostname="localhost")
    server = tls_certs.server_context("untrusted").wrap_bio(sin, sout, server_side=True)
    for _ in range(10):
        for obj in (client, server):
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                if obj is client:
                    return exc
        sin.write(cout.read())
        cin.write(sout.read())
    raise AssertionError("no error")


def test_ssl_error_from_matches_cpython_cert_verify(tls_certs):
    real = _provoke_cert_error(tls_certs)
    assert type(real) is ssl.SSLCertVerificationError
    built = _tls.ssl_error_from(ssl.SSL_ERROR_SSL, real.library, real.reason, "certificate verify failed",
                                real.verify_code, real.verify_message, where="handshake")
    assert type(built) is type(real)
    assert built.args == real.args and str(built) == str(real)
    assert (built.library, built.reason, built.verify_code, built.verify_message) == (
        real.library, real.reason, real.verify_code, real.verify_message)


def _handshaken(tls_certs):
    cin, cout, sin, sout = (ssl.MemoryBIO() for _ in range(4))
    client = tls_certs.client_context().wrap_bio(cin, cout, server_hostname="localhost")
    server = tls_certs.server_context().wrap_bio(sin, sout, server_side=True)
    for _ in range(5):
        for obj in (client, server):
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
        sin.write(cout.read())
        cin.write(sout.read())
    return client, cin, server, sout


def test_ssl_error_from_matches_cpython_eof_and_generic(tls_certs):
    client, cin, server, sout = _handshaken(tls_certs)
    server.write(b"x" * 100)
    cin.write(sout.read()[:-10])
    cin.write_eof()
    with pytest.raises(ssl.SSLEOFError) as ei:
        client.read(1000)
    built = _tls.eof_in_record_error()
    assert type(built) is ssl.SSLEOFError and built.args == ei.value.args and str(built) == str(ei.value)
    assert (built.library, built.reason) == (ei.value.library, ei.value.reason)

    srv = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = srv.wrap_bio(inc, out, server_side=True)
    inc.write(b"GET / HTTP/1.0\r\n\r\n")
    with pytest.raises(ssl.SSLError) as ei:
        obj.do_handshake()
    built = _tls.ssl_error_from(ssl.SSL_ERROR_SSL, "SSL", "HTTP_REQUEST", "http request", where="handshake")
    assert type(built) is ssl.SSLError and built.args == ei.value.args and str(built) == str(ei.value)
    assert isinstance(_tls.ssl_error_from(ssl.SSL_ERROR_ZERO_RETURN), ssl.SSLZeroReturnError)
    assert isinstance(_tls.ssl_error_from(ssl.SSL_ERROR_SYSCALL), ssl.SSLSyscallError)


def test_tlsinfo_wraps_an_sslobject(tls_certs):
    obj = tls_certs.client_context(alpn=["h2"]).wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(),
                                                        server_hostname="localhost")
    info = _tls.TLSInfo(obj)
    assert info.ssl_object is obj and not info.server_side and info.server_hostname == "localhost"
    assert info.version() is None and info.cipher() is None and info.selected_alpn_protocol() is None
    assert goaio.TLSInfo is _tls.TLSInfo
