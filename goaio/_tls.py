"""The TLS pieces every backend shares (pure Python, no IO).

* ``check_bind_tls`` / ``check_listen_tls`` / ``check_connect_tls`` /
  ``check_start_tls``: validate the TLS arguments at the call and return a
  :class:`TLSParams` (or ``None`` for a plain connection). The same bad
  input raises the same class with the same message on every backend.
* :class:`TLSInfo`: what ``conn.tls`` returns; a read-only view of the
  ``ssl.SSLObject`` that both backends create with the user's context
  (``ctx.wrap_bio``), so that SNI, hostname checking, ALPN, session tickets
  and the context's callbacks are Python's own.
* :func:`ssl_error_from`: the ``ssl.SSLError`` family built from the parts
  the compiled backend captured in C, shaped as CPython's ``_ssl`` shapes it.
* :class:`RecordFraming`: a sans-IO tracker of TLS record boundaries in the
  encrypted input, so that a TCP EOF at a record boundary (``EOFError``) is
  told apart from one inside a record (``ssl.SSLEOFError``); OpenSSL 3
  reports both alike.
"""

import math
import re
import ssl as _ssl

from . import _messages
from ._errors import HandshakeTimeout

__all__ = [
    "TLSParams",
    "TLSInfo",
    "RecordFraming",
    "check_bind_tls",
    "check_listen_tls",
    "check_connect_tls",
    "check_start_tls",
    "ssl_error_from",
    "handshake_timeout_error",
    "RECORD_HEADER",
    "MAX_PLAINTEXT_RECORD",
]

#: Bytes of a TLS record header: type (1), legacy version (2), length (2).
RECORD_HEADER = 5
#: Most plaintext bytes one TLS record carries (2**14, RFC 8446 5.1).
MAX_PLAINTEXT_RECORD = 16384


class TLSParams:
    """The validated TLS arguments of one bind / accept / connect / start_tls.

    ``handshake_timeout`` is in seconds, ``math.inf`` for no limit.
    """

    __slots__ = ("context", "server_side", "server_hostname", "handshake_timeout")

    def __init__(self, context, server_side, server_hostname, handshake_timeout):
        self.context = context
        self.server_side = server_side
        self.server_hostname = server_hostname
        self.handshake_timeout = handshake_timeout

    def wrap(self, incoming, outgoing):
        """The ``ssl.SSLObject`` for these parameters, on two memory BIOs."""
        return self.context.wrap_bio(incoming, outgoing, server_side=self.server_side,
                                     server_hostname=self.server_hostname)

    def __repr__(self):
        return (f"TLSParams(server_side={self.server_side}, server_hostname={self.server_hostname!r}, "
                f"handshake_timeout={self.handshake_timeout})")


# --- argument checks ------------------------------------------------------------

def _check_context(ctx):
    if not isinstance(ctx, _ssl.SSLContext):
        raise TypeError(_messages.SSL_NOT_CONTEXT.format(type(ctx).__name__))
    return ctx


def _check_server_side(server_side):
    if not isinstance(server_side, bool):
        raise TypeError(_messages.SSL_SERVER_SIDE_TYPE.format(type(server_side).__name__))
    return server_side


def _check_hostname_value(server_hostname):
    if server_hostname is None:
        return None
    if not isinstance(server_hostname, str):
        raise TypeError(_messages.SSL_HOSTNAME_TYPE.format(type(server_hostname).__name__))
    if not server_hostname or server_hostname.startswith("."):
        raise ValueError(_messages.SSL_HOSTNAME_EMPTY)
    return server_hostname


def check_handshake_timeout(value):
    """``ssl_handshake_timeout``: None is the default (60 s, as asyncio's); a
    number > 0; ``math.inf`` or a value too large to represent is no limit."""
    if value is None:
        return _messages.SSL_HANDSHAKE_TIMEOUT
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(_messages.SSL_TIMEOUT_TYPE.format(type(value).__name__))
    if value != value or value <= 0:
        raise ValueError(_messages.SSL_TIMEOUT_VALUE.format(value))
    try:
        return float(value)
    except OverflowError:  # an int beyond any float: beyond any deadline too
        return math.inf


def _no_tls(**given):
    """Without ``ssl``, the TLS-only arguments must keep their defaults."""
    for name, value in given.items():
        if value is not None and value is not False:
            raise ValueError(_messages.SSL_ONLY_WITH_SSL.format(name))
    return None


def _client_hostname(ctx, server_side, server_hostname):
    if server_side:
        if server_hostname is not None:
            raise ValueError(_messages.SSL_HOSTNAME_SERVER)
    elif server_hostname is None and ctx.check_hostname:
        raise ValueError(_messages.SSL_NEEDS_HOSTNAME)
    return server_hostname


def check_bind_tls(ssl, server_side=False, server_hostname=None, ssl_handshake_timeout=None):
    """``svc.bind(sock, ssl=..., server_side=..., server_hostname=...,
    ssl_handshake_timeout=...)`` -> TLSParams, or None without ``ssl``."""
    if ssl is None:
        return _no_tls(server_side=server_side, server_hostname=server_hostname,
                       ssl_handshake_timeout=ssl_handshake_timeout)
    ctx = _check_context(ssl)
    server_side = _check_server_side(server_side)
    server_hostname = _check_hostname_value(server_hostname)
    timeout = check_handshake_timeout(ssl_handshake_timeout)
    return TLSParams(ctx, server_side, _client_hostname(ctx, server_side, server_hostname), timeout)


def check_start_tls(ssl, server_side=False, server_hostname=None, ssl_handshake_timeout=None):
    """``conn.start_tls(context, ssl, ...)``: as bind, but ``ssl`` is required."""
    if ssl is None:
        raise TypeError(_messages.SSL_NOT_CONTEXT.format(type(ssl).__name__))
    return check_bind_tls(ssl, server_side, server_hostname, ssl_handshake_timeout)


def check_listen_tls(ssl, ssl_handshake_timeout=None):
    """``svc.listen(..., ssl=..., ssl_handshake_timeout=...)``: accepted
    connections are TLS server connections."""
    if ssl is None:
        return _no_tls(ssl_handshake_timeout=ssl_handshake_timeout)
    ctx = _check_context(ssl)
    return TLSParams(ctx, True, None, check_handshake_timeout(ssl_handshake_timeout))


def check_connect_tls(ssl, server_hostname=None, ssl_handshake_timeout=None, address=None):
    """``svc.connect(ctx, address, ssl=..., server_hostname=...,
    ssl_handshake_timeout=...)``. With ``server_hostname`` None the host of
    a ``(host, port)`` address is checked, as asyncio does; a Unix address
    with a verifying context needs ``server_hostname``."""
    if ssl is None:
        return _no_tls(server_hostname=server_hostname,
                       ssl_handshake_timeout=ssl_handshake_timeout)
    ctx = _check_context(ssl)
    server_hostname = _check_hostname_value(server_hostname)
    if server_hostname is None and isinstance(address, tuple) and address:
        host = address[0]
        if isinstance(host, bytes):
            host = host.decode("ascii", "replace")
        if isinstance(host, str) and host:
            server_hostname = host
    timeout = check_handshake_timeout(ssl_handshake_timeout)
    return TLSParams(ctx, False, _client_hostname(ctx, False, server_hostname), timeout)


def handshake_timeout_error():
    """The error a handshake that outlived ``ssl_handshake_timeout`` completes with."""
    return HandshakeTimeout(_messages.HANDSHAKE_TIMEOUT)


# --- conn.tls ---------------------------------------------------------------------

class TLSInfo:
    """What ``conn.tls`` returns on a TLS connection (None on a plain one).

    A read-only view of the connection's ``ssl.SSLObject``; before the
    handshake has completed ``version()``/``cipher()`` return None as
    ``ssl`` does. ``guard``, if given, is a context manager factory the
    backend provides: each call runs inside it, so that no OpenSSL call on
    the object runs while an IO thread drives it (OpenSSL objects are not
    thread-safe, and a TLS 1.3 client replaces its session when a ticket
    arrives).
    """

    __slots__ = ("_obj", "_guard")

    def __init__(self, sslobj, guard=None):
        self._obj = sslobj
        self._guard = guard

    def _call(self, name, *args):
        guard = self._guard
        if guard is None:
            return getattr(self._obj, name)(*args)
        with guard():
            return getattr(self._obj, name)(*args)

    @property
    def ssl_object(self):
        """The ``ssl.SSLObject`` (for ``get_extra_info('ssl_object')``); do not
        drive it (read/write/do_handshake): the backend does."""
        return self._obj

    @property
    def context(self):
        return self._obj.context

    @property
    def server_side(self):
        return self._obj.server_side

    @property
    def server_hostname(self):
        return self._obj.server_hostname

    @property
    def session_reused(self):
        return self._call("__getattribute__", "session_reused")

    @property
    def session(self):
        return self._call("__getattribute__", "session")

    def version(self):
        return self._call("version")

    def cipher(self):
        return self._call("cipher")

    def shared_ciphers(self):
        return self._call("shared_ciphers")

    def compression(self):
        return self._call("compression")

    def selected_alpn_protocol(self):
        return self._call("selected_alpn_protocol")

    def getpeercert(self, binary_form=False):
        return self._call("getpeercert", binary_form)

    def get_channel_binding(self, cb_type="tls-unique"):
        return self._call("get_channel_binding", cb_type)

    def __repr__(self):
        cipher = self.cipher()
        return (f"<TLSInfo {'server' if self.server_side else 'client'} "
                f"version={self.version()!r} cipher={(cipher or (None,))[0]!r}>")


# --- errors built from C parts ----------------------------------------------------

#: SSL_get_error() values (stable OpenSSL ABI; the ssl module exports them).
SSL_ERROR_SSL = _ssl.SSL_ERROR_SSL
SSL_ERROR_WANT_READ = _ssl.SSL_ERROR_WANT_READ
SSL_ERROR_WANT_WRITE = _ssl.SSL_ERROR_WANT_WRITE
SSL_ERROR_SYSCALL = _ssl.SSL_ERROR_SYSCALL
SSL_ERROR_ZERO_RETURN = _ssl.SSL_ERROR_ZERO_RETURN
SSL_ERROR_EOF = _ssl.SSL_ERROR_EOF  # CPython's own value (8) for an unexpected EOF

_CLASSES = {
    SSL_ERROR_WANT_READ: _ssl.SSLWantReadError,
    SSL_ERROR_WANT_WRITE: _ssl.SSLWantWriteError,
    SSL_ERROR_SYSCALL: _ssl.SSLSyscallError,
    SSL_ERROR_ZERO_RETURN: _ssl.SSLZeroReturnError,
    SSL_ERROR_EOF: _ssl.SSLEOFError,
}

#: CPython's texts for the errors it words itself (Modules/_ssl.c, PySSL_SetError).
_DEFAULT_TEXT = {
    SSL_ERROR_WANT_READ: "The operation did not complete (read)",
    SSL_ERROR_WANT_WRITE: "The operation did not complete (write)",
    SSL_ERROR_SYSCALL: "Some I/O error occurred",
    SSL_ERROR_ZERO_RETURN: "TLS/SSL connection has been closed (EOF)",
    SSL_ERROR_EOF: "EOF occurred in violation of protocol",
    SSL_ERROR_SSL: "A failure in the SSL library occurred",
}

_LINENO = {}
_LINENO_RE = re.compile(r"\(_ssl\.c:(\d+)\)$")


def _lineno_of(exc):
    m = _LINENO_RE.search(str(exc))
    return int(m.group(1)) if m else 0


def _calibrate():
    """Learn, once, the ``_ssl.c`` line numbers this CPython puts into the
    errors of do_handshake and of read, by provoking one of each in memory;
    the compiled backend's errors then read exactly like the pure one's."""
    if _LINENO:
        return _LINENO
    lines = {}
    try:
        srv = _ssl.SSLContext(_ssl.PROTOCOL_TLS_SERVER)
        inc, out = _ssl.MemoryBIO(), _ssl.MemoryBIO()
        obj = srv.wrap_bio(inc, out, server_side=True)
        inc.write(b"\x16\x03\x01\x00\x05garbage-not-a-hello")
        try:
            obj.do_handshake()
        except _ssl.SSLError as exc:
            lines["handshake"] = _lineno_of(exc)
        cli = _ssl.SSLContext(_ssl.PROTOCOL_TLS_CLIENT)
        cli.check_hostname = False
        cli.verify_mode = _ssl.CERT_NONE
        inc, out = _ssl.MemoryBIO(), _ssl.MemoryBIO()
        obj = cli.wrap_bio(inc, out)
        inc.write_eof()
        try:
            obj.read(1)
        except _ssl.SSLError as exc:
            lines["read"] = _lineno_of(exc)
    except Exception:  # pragma: no cover - calibration is best effort
        pass
    lines.setdefault("handshake", 0)
    lines.setdefault("read", lines["handshake"])
    lines.setdefault("write", lines["read"])
    lines.setdefault("shutdown", lines["read"])
    _LINENO.update(lines)
    return _LINENO


def ssl_error_from(errcode, library=None, reason=None, text=None, verify_code=None,
                   verify_message=None, where="read", lineno=None):
    """The ``ssl.SSLError`` (or subclass) CPython's ``_ssl`` would raise.

    ``errcode`` is what ``SSL_get_error()`` returned (``SSL_ERROR_EOF``, 8,
    for an EOF in violation of the protocol, as CPython maps it);
    ``library``/``reason`` the OpenSSL library and reason mnemonics
    (``"SSL"``, ``"CERTIFICATE_VERIFY_FAILED"``), ``text`` the reason string;
    ``verify_code``/``verify_message`` the X509 verify result when the
    handshake failed verification; ``where`` is the call that failed
    (``"handshake"``, ``"read"``, ``"write"``, ``"shutdown"``) and picks the
    ``(_ssl.c:NNN)`` line as this CPython writes it (or pass ``lineno``).

    The class, ``args`` (``(errcode, message)``), ``str()``, ``.library``,
    ``.reason``, ``.verify_code`` and ``.verify_message`` match CPython's.
    """
    if lineno is None:
        lineno = _calibrate().get(where, 0)
    verify = reason == "CERTIFICATE_VERIFY_FAILED" or verify_code not in (None, 0)
    if errcode == SSL_ERROR_SSL or (errcode not in _CLASSES and errcode != SSL_ERROR_SSL):
        cls = _ssl.SSLCertVerificationError if verify else _ssl.SSLError
    else:
        cls = _CLASSES[errcode]
    if text is None:
        text = _DEFAULT_TEXT.get(errcode, _DEFAULT_TEXT[SSL_ERROR_SSL])
    if cls is _ssl.SSLCertVerificationError and verify_message:
        text = f"{text}: {verify_message}"
    if library and reason:
        msg = f"[{library}: {reason}] {text} (_ssl.c:{lineno})"
    elif library:
        msg = f"[{library}] {text} (_ssl.c:{lineno})"
    else:
        msg = f"{text} (_ssl.c:{lineno})"
    exc = cls(errcode, msg)
    exc.library = library
    exc.reason = reason
    if cls is _ssl.SSLCertVerificationError:
        exc.verify_code = verify_code
        exc.verify_message = verify_message
    return exc


def eof_in_record_error(where="read"):
    """The error of a TCP EOF inside a TLS record, as ``ssl`` raises it from
    ``SSLObject.read`` on OpenSSL 3."""
    return ssl_error_from(SSL_ERROR_EOF, "SSL", "UNEXPECTED_EOF_WHILE_READING",
                          _DEFAULT_TEXT[SSL_ERROR_EOF], where=where)


# --- record framing -------------------------------------------------------------

class RecordFraming:
    """Where the encrypted byte stream stands against TLS record boundaries.

    Feed it every encrypted byte read from the socket, in order; ``at_boundary``
    is True when the bytes fed so far end exactly at the end of a record (or
    nothing was fed). A TCP EOF then is a clean EOF (``EOFError``); one inside
    a record is ``ssl.SSLEOFError``. It holds at most 4 bytes of a partial
    header, never a record.
    """

    __slots__ = ("_hdr", "_body", "records")

    def __init__(self):
        self._hdr = b""     # the bytes of a header not yet complete (0..4)
        self._body = 0      # body bytes of the current record still to come
        self.records = 0    # whole records seen

    @property
    def at_boundary(self):
        return not self._hdr and self._body == 0

    @property
    def pending(self):
        """Bytes still needed to finish the current record (0 at a boundary;
        for a partial header, counts only the header's missing bytes)."""
        if self._body:
            return self._body
        return RECORD_HEADER - len(self._hdr) if self._hdr else 0

    def feed(self, data):
        """Account for ``data`` (any bytes-like object) read from the socket."""
        mv = memoryview(data).cast("B")
        n = len(mv)
        i = 0
        while i < n:
            body = self._body
            if body:
                take = body if body <= n - i else n - i
                self._body = body - take
                i += take
                if self._body == 0:
                    self.records += 1
                continue
            hdr = self._hdr
            if not hdr and n - i >= RECORD_HEADER:
                length = (mv[i + 3] << 8) | mv[i + 4]
                i += RECORD_HEADER
            else:
                take = min(RECORD_HEADER - len(hdr), n - i)
                hdr += bytes(mv[i:i + take])
                i += take
                if len(hdr) < RECORD_HEADER:
                    self._hdr = hdr
                    continue
                self._hdr = b""
                length = (hdr[3] << 8) | hdr[4]
            if length:
                self._body = length
            else:
                self.records += 1
        mv.release()
