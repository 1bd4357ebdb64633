# core/tls_setup.pxi -- the Python side of the compiled TLS layer (GIL held):
# resolving OpenSSL once, making a connection's SSLObject with the user's
# context and taking its SSL* over, the sockets of TLS accepts and connects
# waiting for that (the setup queue), the exceptions built from the parts
# core/tls.pxi captured in C, and conn.tls.
#
# One SSLObject per connection: ctx.wrap_bio(...) exactly as for any ssl
# object, so SNI, hostname checking, ALPN, session tickets and the context's
# callbacks are Python's own. Its SSL* is read from the _ssl._SSLSocket it
# wraps (after PyObject_HEAD and one PyObject*, CPython 3.11-3.13), checked
# against the context (SSL_get_SSL_CTX == the SSL_CTX* after the
# _ssl._SSLContext's PyObject_HEAD), and given our socket BIO in place of its
# memory BIOs. The SSLObject stays alive as long as the connection record.

import ssl as _ssl
import _ssl as _ssl_ext
from goaio import _tls
from goaio._errors import HandshakeTimeout

cdef str MSG_TLS_ALREADY = _messages.TLS_ALREADY
cdef str MSG_TLS_AFTER_SHUTDOWN = _messages.TLS_AFTER_SHUTDOWN
cdef object _tls_check_bind = _tls.check_bind_tls
cdef object _tls_check_start = _tls.check_start_tls
cdef object _tls_check_listen = _tls.check_listen_tls
cdef object _tls_check_connect = _tls.check_connect_tls
cdef object _ssl_error_from = _tls.ssl_error_from
# The mnemonics of OpenSSL's error codes, as _ssl words them ("[SSL:
# CERTIFICATE_VERIFY_FAILED]"): _ssl's own tables on CPython 3.11; 3.12+ keep
# them private, so there the library comes from OpenSSL's ERR_LIB_* numbers
# (stable ABI) and the reason from its reason string (upper case, "_" for " ":
# how OpenSSL derives those strings from the same names, true of 97% of them
# and of every SSL-library one checked).
cdef dict _err_names = getattr(_ssl_ext, "err_codes_to_names", {})
cdef dict _lib_names = getattr(_ssl_ext, "lib_codes_to_names", None) or {
    1: "NONE", 2: "SYS", 3: "BN", 4: "RSA", 5: "DH", 6: "EVP", 7: "BUF", 8: "OBJ", 9: "PEM",
    10: "DSA", 11: "X509", 13: "ASN1", 14: "CONF", 15: "CRYPTO", 16: "EC", 20: "SSL",
    32: "BIO", 33: "PKCS7", 34: "X509V3", 35: "PKCS12", 36: "RAND", 37: "DSO", 38: "ENGINE",
    39: "OCSP", 40: "UI", 41: "COMP", 42: "ECDSA", 43: "ECDH", 44: "OSSL_STORE", 45: "FIPS",
    46: "CMS", 47: "TS", 48: "HMAC", 50: "CT", 51: "ASYNC", 52: "KDF", 53: "SM2", 54: "ESS",
    55: "PROP", 56: "CRMF", 57: "PROV", 58: "CMP", 59: "OSSL_ENCODER", 60: "OSSL_DECODER",
    61: "HTTP", 128: "USER"}


cdef object tls_resolve():
    """Resolve OpenSSL from the loaded _ssl (at import): None, or why not."""
    if not ((3, 11) <= _sys.version_info[:2] <= (3, 13)):
        return "the SSLObject layout is known for CPython 3.11-3.13 only"
    if _sys.implementation.name != "cpython":
        return "needs CPython's _ssl"
    why = goaio_ossl_load(_os.fsencode(_ssl_ext.__file__))
    if why != NULL:
        return (<bytes>why).decode("utf-8", "replace")
    if goaio_ossl.OpenSSL_version_num() != _ssl.OPENSSL_VERSION_NUMBER:
        return (f"the OpenSSL found ({goaio_ossl.OpenSSL_version_num():#x}) is not "
                f"the ssl module's ({_ssl.OPENSSL_VERSION_NUMBER:#x})")
    return None


cdef object TLS_WHY_NOT
try:
    TLS_WHY_NOT = tls_resolve()
except Exception as _e:
    TLS_WHY_NOT = f"{type(_e).__name__}: {_e}"

# Which TLS this backend runs, or why it has none (then every ssl= call
# raises NotImplementedError saying so).
TLS_IMPLEMENTATION = (f"C, without the GIL, on the ssl module's own {_ssl.OPENSSL_VERSION}"
                      if TLS_WHY_NOT is None else f"unavailable: {TLS_WHY_NOT}")


cdef int tls_require() except -1:
    if TLS_WHY_NOT is not None:
        raise NotImplementedError(_messages.TLS_UNAVAILABLE.format(BACKEND_NAME, TLS_WHY_NOT))
    return 0


cdef SSL *ssl_of_gil(object sslobj, object ctx) except NULL:
    """The SSL* Python made for sslobj, checked against ctx's SSL_CTX* (GIL)."""
    cdef object inner = sslobj._sslobj
    cdef SSL *p
    cdef SSL_CTX *cx
    if type(inner) is not _ssl_ext._SSLSocket or not isinstance(ctx, _ssl_ext._SSLContext):
        raise RuntimeError("goaio TLS: not a CPython _ssl object")
    p = (<SSL **>(<char *><PyObject *>inner + sizeof(PyObject) + sizeof(PyObject *)))[0]
    cx = (<SSL_CTX **>(<char *><PyObject *>ctx + sizeof(PyObject)))[0]
    if p == NULL or cx == NULL or goaio_ossl.SSL_get_SSL_CTX(p) != cx:
        raise RuntimeError("goaio TLS: the SSLObject's SSL is not its context's")
    return p


cdef tls_t *tls_new_gil(object params) except NULL:
    """A connection's TLS layer for the checked parameters (a _tls.TLSParams),
    not yet attached to the connection (GIL held, no C lock)."""
    cdef tls_t *t
    cdef SSL *p
    cdef BIO *b
    cdef int64_t ns
    ctx = params.context
    sslobj = params.wrap(_ssl.MemoryBIO(), _ssl.MemoryBIO())
    p = ssl_of_gil(sslobj, ctx)
    t = <tls_t *>PyMem_RawMalloc(sizeof(tls_t))
    if t == NULL:
        raise MemoryError()
    memset(t, 0, sizeof(tls_t))
    t.io.fd = -1
    b = goaio_bio_new(&t.io)
    if b == NULL:
        PyMem_RawFree(t)
        raise MemoryError()
    goaio_ossl.SSL_set_bio(p, b, b)      # (the memory BIOs keep their own references)
    goaio_SSL_set_mode(p, GOAIO_SSL_MODE_RELEASE_BUFFERS | GOAIO_SSL_MODE_ENABLE_PARTIAL_WRITE
                       | GOAIO_SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER)
    goaio_SSL_set_read_ahead(p, 1)       # one recv per readable socket, not two per record
    t.ssl = p
    Py_INCREF(sslobj)
    t.sslobj = <PyObject *>sslobj
    t.state = TLS_HANDSHAKE
    t.server_side = params.server_side
    if getattr(ctx, "_msg_callback", None) is not None:
        t.need_gil = 2
    elif ctx.sni_callback is not None or ctx.keylog_filename is not None:
        t.need_gil = 1
    ns = to_ns(params.handshake_timeout)
    t.hs_timeout = ns if ns > 0 else 0
    return t


cdef int tls_attach_gil(AIOService svc, AIOConn conn, object params, op_t *hs_op) except -1:
    """Start TLS on a freshly bound connection; hs_op (or NULL) completes when
    the handshake ends, with res.conn the connection (GIL held, no C lock).
    On error hs_op is still the caller's."""
    cdef tls_t *t = tls_new_gil(params)
    cdef conn_t *c = conn.c
    cdef svc_t *s = svc.s
    cdef oplist_t done
    cdef bint closed = False
    oplist_init(&done)
    if hs_op != NULL and (hs_op.flags & OPF_TLSINNER):
        t.listener = hs_op.conn         # (a cref of its own: dropped with t)
        goaio_atomic_inc(&t.listener.cref)
    if hs_op != NULL:
        hs_op.conn = c
        hs_op.flags |= OPF_TLSCONN
        Py_XDECREF(hs_op.pyconn)
        hs_op.pyconn = <PyObject *>conn
        Py_INCREF(conn)
    with nogil:
        goaio_lock(&c.lock)
        if c.closed or c.tls != NULL:
            closed = True
        else:
            tls_activate_locked(s, c, t, hs_op, &done)
            cq_push(s, &done)
        goaio_unlock(&c.lock)
    if closed:
        tls_free_nogil(t)
        raise ConnClosed(MSG_CONN_CLOSED)
    return 0


# --- the setup queue: TLS accepts and connects waiting for their SSLObject ---------

cdef void tls_setup_push_locked(svc_t *s, op_t *op) noexcept nogil:
    """An accept or connect of a TLS listener/connect got its socket (op.newfd;
    the record's c.lock held): it waits in the service's setup queue until a
    thread with the GIL makes its connection (tls_setup_run_nogil). Takes s.lock."""
    op.next = NULL
    pthread_mutex_lock(&s.lock)
    if s.tls_setup_tail == NULL:
        s.tls_setup_head = op
    else:
        s.tls_setup_tail.next = op
    s.tls_setup_tail = op
    if s.polling and not s.kicked and s.poller_tid != PyThread_get_thread_ident():
        s.kicked = 1
        poller_wake(&s.poller)      # its round ends, and runs the setup
    pthread_mutex_unlock(&s.lock)


cdef op_t *tls_setup_take(svc_t *s) noexcept nogil:
    """Detach the setup queue (takes s.lock)."""
    cdef op_t *head
    pthread_mutex_lock(&s.lock)
    head = s.tls_setup_head
    s.tls_setup_head = s.tls_setup_tail = NULL
    pthread_mutex_unlock(&s.lock)
    return head


cdef void tls_setup_one_gil(svc_t *s, op_t *op):
    """Bind op's socket and start its handshake; on failure the op completes
    with the error (GIL held, no C lock)."""
    cdef AIOConn conn = None
    cdef oplist_t done
    cdef conn_t *lc = NULL
    if op.flags & OPF_TLSORPHAN:
        if op.pyconn != NULL:
            (<AIOConn><object>op.pyconn)._close(None)
        op_release_gil(op, False)
        return
    if op.flags & OPF_TLSINNER:
        lc = op.conn                    # (the op's cref is ours now: dropped below)
        if lc.closed:
            op_release_gil(op, False)   # (closes the fd)
            conn_decref_nogil(lc)
            return
        svc, option, params = <tuple>(<lrec_t *>lc).spec
    else:
        svc, option, params = <tuple>op.buffobj
    try:
        sock = _socket.socket(fileno=op.newfd)
        op.newfd = -1                       # the socket object owns it now
        try:
            conn = (<AIOService>svc).bind(sock, option)
        except BaseException:
            sock.close()
            raise
        tls_attach_gil(<AIOService>svc, conn, params, op)
        if lc != NULL:
            conn_decref_nogil(lc)
        return
    except BaseException as e:
        if conn is not None:
            conn._close(None)
        if op.flags & OPF_TLSCONN:
            op.flags &= ~OPF_TLSCONN
            Py_XDECREF(op.pyconn)
            op.pyconn = NULL
        op.err = ERR_OBJ
        Py_XDECREF(op.errobj)
        op.errobj = <PyObject *>e
        Py_INCREF(e)
    oplist_init(&done)
    if lc != NULL:
        op.conn = lc
        with nogil:
            tls_deliver_locked_from_gil(s, lc, op, &done)
            cq_push(s, &done)
        conn_decref_nogil(lc)
        return
    oplist_add(&done, op)
    cq_push(s, &done)


cdef void tls_deliver_locked_from_gil(svc_t *s, conn_t *lc, op_t *op, oplist_t *done) noexcept nogil:
    """tls_deliver_locked for an op whose connection could not be made (no
    connection lock to hold: the listener's is the only one taken)."""
    tls_deliver_locked(s, lc, op, done)


cdef void tls_accept_ready_locked(lrec_t *lr, op_t *user, oplist_t *done) noexcept nogil:
    """accept() on a TLS listener with a handshake already ended: it completes
    at once (the listener's c.lock held)."""
    cdef op_t *inner = lr.ready_head
    lr.ready_head = inner.next
    if lr.ready_head == NULL:
        lr.ready_tail = NULL
    inner.next = NULL
    tls_hand_over_locked(lr, inner, user, done)


cdef void tls_listener_closed_gil(svc_t *s, conn_t *lc, op_t *ready):
    """Listener.close() (GIL held, no C lock): the connections it took ahead
    close, handshaken (ready) or still handshaking."""
    cdef op_t *nxt
    cdef PyObject **objs = NULL
    cdef uint32_t i, n = 0
    cdef conn_t *c
    while ready != NULL:
        nxt = ready.next
        ready.next = NULL
        if ready.pyconn != NULL:
            (<AIOConn><object>ready.pyconn)._close(None)
        op_release_gil(ready, False)
        ready = nxt
    if not (<lrec_t *>lc).tls:
        return
    # (GIL held: fine, no reg_lock holder waits for it; no Python code runs under it)
    goaio_lock(&s.reg_lock)
    objs = <PyObject **>PyMem_RawMalloc((s.nslots + 1) * sizeof(PyObject *))
    if objs != NULL:
        for i in range(s.nslots):
            c = s.slots[i]
            if (c != NULL and c.kind == CK_STREAM and c.pyobj != NULL and c.tls != NULL
                    and c.tls.listener == lc and c.tls.hs_op != NULL):
                objs[n] = c.pyobj
                n += 1
                Py_INCREF(<object>c.pyobj)
    goaio_unlock(&s.reg_lock)
    for i in range(n):
        (<AIOConn><object>objs[i])._close(None)
        Py_DECREF(<object>objs[i])
    PyMem_RawFree(objs)


cdef void tls_setup_run_nogil(svc_t *s) noexcept with gil:
    """Run the setup queue (no C lock held; takes the GIL)."""
    cdef op_t *op = tls_setup_take(s)
    cdef op_t *nxt
    while op != NULL:
        nxt = op.next
        op.next = NULL
        try:
            tls_setup_one_gil(s, op)
        except BaseException:
            pass
        op = nxt


cdef void tls_setup_discard_gil(svc_t *s):
    """svc.close(): the sockets still waiting are closed, no result made."""
    cdef op_t *op = tls_setup_take(s)
    cdef op_t *nxt
    while op != NULL:
        nxt = op.next
        if op.flags & OPF_TLSORPHAN:
            if op.pyconn != NULL:
                (<AIOConn><object>op.pyconn)._close(None)
        elif op.flags & OPF_TLSINNER:
            conn_decref_nogil(op.conn)      # (a listener's own op: not a live op)
        else:
            goaio_atomic_sub(&s.live_ops, 1)
        op_release_gil(op, False)
        op = nxt


# --- hand-over: exceptions and results ------------------------------------------

cdef object tls_exception_gil(op_t *op):
    """The exception of an op that failed with ERR_TLS (GIL held)."""
    cdef goaio_tlserr_t *e = op.tlserr
    cdef str where
    if e.kind == GOAIO_TLSE_TIMEOUT:
        return _tls.handshake_timeout_error()
    if e.kind == GOAIO_TLSE_ERRNO:
        return _oserror(e.sys_errno)
    if op.kind >= OP_ACCEPT or op.kind == OP_STARTTLS:
        where = "handshake"
    elif op.kind == OP_SEND:
        where = "write"
    elif op.kind == OP_SHUTDOWN:
        where = "shutdown"
    else:
        where = "read"
    if e.kind == GOAIO_TLSE_EOF:
        if where == "read":
            return _tls.eof_in_record_error()
        return _ssl_error_from(int(_tls.SSL_ERROR_EOF), None, None, None, where=where)
    library = _lib_names.get(e.lib)
    text = (<bytes>e.reason_str).decode("utf-8", "replace") or None
    reason = _err_names.get((e.lib, e.reason))
    if reason is None and text is not None and not _err_names:
        reason = text.upper().replace(" ", "_")
    vcode = None
    vmsg = None
    if e.lib == GOAIO_ERR_LIB_SSL and e.reason == GOAIO_SSL_R_CERTIFICATE_VERIFY_FAILED:
        vcode = e.verify_code
        vmsg = (<bytes>e.verify_msg).decode("utf-8", "replace")
        host = tls_hostname_gil(op)
        if vcode == 62 and host is not None:       # X509_V_ERR_HOSTNAME_MISMATCH, worded as _ssl does
            vmsg = f"Hostname mismatch, certificate is not valid for '{host}'."
        elif vcode == 64 and host is not None:     # X509_V_ERR_IP_ADDRESS_MISMATCH
            vmsg = f"IP address mismatch, certificate is not valid for '{host}'."
    errcode = GOAIO_SSL_ERROR_SSL if e.ssl_error == 0 else e.ssl_error
    return _ssl_error_from(errcode, library, reason, text, vcode, vmsg, where=where)


cdef object tls_hostname_gil(op_t *op):
    """server_hostname of the op's connection, or None (GIL held)."""
    if op.pyconn == NULL or type(<object>op.pyconn) is not AIOConn:
        return None
    info = (<AIOConn><object>op.pyconn).tls
    return None if info is None else info.server_hostname


cdef object tls_info_gil(AIOConn conn):
    """conn.tls: a TLSInfo over the connection's SSLObject, or None (GIL)."""
    cdef tls_t *t = conn.c.tls
    if t == NULL:
        return None         # (a start_tls not started yet included)
    cdef _ConnSide x = conn._side()         # (core/conn.pxi)
    if x.tls_info is None:
        guard = TLSGuard.__new__(TLSGuard)
        # weak: conn -> side record -> TLSInfo -> guard -> conn would be a
        # reference cycle, keeping a closed connection (and its SSLContext)
        # until a gc pass
        (<TLSGuard>guard).conn_ref = _weakref.ref(conn)
        x.tls_info = _tls.TLSInfo(<object>t.sslobj, guard)
    return x.tls_info


@cython.final
cdef class TLSGuard:
    """TLSInfo's guard on the compiled backends: while a TLSInfo call reads
    the SSLObject, no IO thread makes an SSL call on it (t.info_busy, set
    and cleared under c.lock; c.lock itself is not held during the call,
    which runs Python code). IO that came meanwhile runs at the end of the
    call, in the caller's thread (as a post's IO does). It refers to its
    connection weakly (the connection holds the TLSInfo); each call holds
    the connection for its duration (TLSHold). A TLSInfo that outlived its
    connection reads the SSLObject unguarded: nothing drives it any more."""
    cdef object conn_ref

    def __call__(self):
        hold = TLSHold.__new__(TLSHold)
        (<TLSHold>hold).conn = self.conn_ref()
        return hold


@cython.final
cdef class TLSHold:
    """One guarded TLSInfo call (see TLSGuard)."""
    cdef object conn        # the AIOConn, or None once it is gone

    def __enter__(self):
        if self.conn is None:
            return self
        cdef conn_t *c = (<AIOConn>self.conn).c
        if c == NULL or c.tls == NULL:
            self.conn = None
            return self
        with nogil:
            goaio_lock(&c.lock)
            c.tls.info_busy += 1
            goaio_unlock(&c.lock)
        return self

    def __exit__(self, *exc):
        if self.conn is None:
            return False
        cdef AIOConn conn = <AIOConn>self.conn
        cdef conn_t *c = conn.c
        cdef svc_t *s = conn._svc.s
        cdef tls_t *t = c.tls
        cdef oplist_t done
        oplist_init(&done)
        self.conn = None
        with nogil:
            goaio_lock(&c.lock)
            t.info_busy -= 1
            if t.info_busy == 0 and t.again and not t.busy and not c.closed:
                t.again = 0
                tls_process_locked(s, c, &done)
            cq_push(s, &done)
            goaio_unlock(&c.lock)
        return False


# --- the calls with ssl= -------------------------------------------------------------

cdef object tls_start_gil(AIOConn conn, context, ssl, server_side, server_hostname, timeout):
    """conn.start_tls(...) (GIL held, no C lock): an OP_STARTTLS in the send
    queue; it starts the handshake once it is the head and every receive
    posted before it completed; receives posted after it wait for it."""
    cdef conn_t *c = conn.c
    cdef tls_t *t
    cdef tls_t *old = NULL
    cdef op_t *op
    cdef int rc = 0
    params = _tls_check_start(ssl, server_side, server_hostname, timeout)
    tls_require()
    conn._check_open()
    if c.tls != NULL or tls_pending(c):
        raise ValueError(MSG_TLS_ALREADY)
    if c.shut:
        raise BrokenPipeError(MSG_TLS_AFTER_SHUTDOWN)
    t = tls_new_gil(params)
    with nogil:
        goaio_lock(&c.lock)
        if c.tls != NULL or tls_pending(c):
            rc = 1
        else:
            old = c.tls_pend    # NULL, or an earlier start_tls's layer, dropped
            c.tls_pend = t
        goaio_unlock(&c.lock)
    if rc:
        tls_free_nogil(t)
        raise ValueError(MSG_TLS_ALREADY)
    tls_free_nogil(old)
    op = op_new(OP_STARTTLS, False)
    try:
        conn._post(op, context)
    except BaseException:
        with nogil:
            goaio_lock(&c.lock)
            if c.tls_pend == t:
                c.tls_pend = NULL
            else:
                t = NULL
            goaio_unlock(&c.lock)
        tls_free_nogil(t)
        raise


def _tls_close_notify_seen(AIOConn conn):
    """goaio.aio's TLS transport: True once the peer's close_notify was read
    on ``conn`` (its reading ended with EOFError either way; a TCP EOF
    without one is answered without a close_notify, as asyncio does)."""
    cdef conn_t *c = conn.c
    cdef int r = 0
    if c == NULL:
        return False
    with nogil:
        goaio_lock(&c.lock)
        if c.tls != NULL and c.tls.ssl != NULL:
            r = (goaio_ossl.SSL_get_shutdown(c.tls.ssl) & GOAIO_SSL_RECEIVED_SHUTDOWN) != 0
        goaio_unlock(&c.lock)
    return r != 0
