# core/tls.pxi -- the TLS record layer of a connection, run in the IO path
# without the GIL: handshake, SSL_read into the receive ops, SSL_write of the
# send ops, close_notify. Every step holds c.lock, like the plain system calls
# of core/io.pxi (the socket BIO of includes/tlsbio.h makes them inside the
# SSL_* calls). The Python side (making the SSLObject, the exceptions,
# conn.tls) is core/tls_setup.pxi.
#
# States (tls_t.state): TLS_HANDSHAKE -> TLS_OPEN, or -> TLS_FAILED (the
# handshake failed or timed out: every op, pending or posted later, completes
# with its error). Reading ends once (tls_t.rd_end): EOFError after the peer's
# close_notify or a TCP EOF at a record boundary, the ssl.SSLError for an EOF
# inside a record or a bad record. A record half written when its send left
# the queue (send timeout, cancel) is kept (tls_t.wpend) and finished before
# anything else is written: the plaintext reported is what the peer decrypts.
#
# Context callbacks (sni_callback, keylog_filename, _msg_callback) take the
# GIL inside OpenSSL. Such a connection runs its steps (the handshake's; every
# one for a _msg_callback) with c.lock dropped and the GIL taken first, then
# c.lock (tls_step_with_gil_nogil): no thread ever waits for the GIL while
# holding a C lock. tls_t.busy keeps other threads out meanwhile.

cdef enum:
    TLS_HANDSHAKE = 1
    TLS_OPEN = 2
    TLS_FAILED = 3
    TLS_WRITE_MAX = 16384        # one record per SSL_write: at most one half out
    TLS_READ_MAX = 0x7FFFFFFF


cdef goaio_tlserr_t *tls_err_copy(const goaio_tlserr_t *e) noexcept nogil:
    """A heap copy of e for an op (NULL: no memory; the op then reports ENOMEM)."""
    cdef goaio_tlserr_t *n = <goaio_tlserr_t *>PyMem_RawMalloc(sizeof(goaio_tlserr_t))
    if n != NULL:
        memcpy(n, e, sizeof(goaio_tlserr_t))
    return n


cdef void finish_tls_err_locked(conn_t *c, op_t *op, const goaio_tlserr_t *e, oplist_t *done) noexcept nogil:
    """Complete op (out of its queue) with the TLS failure e (c.lock held)."""
    op.tlserr = tls_err_copy(e)
    finish_op_locked(c, op, ERR_TLS if op.tlserr != NULL else ENOMEM, done)


cdef void fail_queue_tls_locked(conn_t *c, opq_t *q, const goaio_tlserr_t *e, oplist_t *done) noexcept nogil:
    """Every op of q completes with e, in order (c.lock held)."""
    cdef op_t *op = opq_take_all_locked(q)
    cdef op_t *nxt
    while op != NULL:
        nxt = op.next
        finish_tls_err_locked(c, op, e, done)
        op = nxt


cdef void tls_fail_locked(svc_t *s, conn_t *c, const goaio_tlserr_t *e, oplist_t *done) noexcept nogil:
    """The handshake failed (or timed out): the op waiting for it and every
    pending op complete with e; so will every op posted later (c.lock held)."""
    cdef tls_t *t = c.tls
    cdef op_t *op
    t.state = TLS_FAILED
    if t.err == NULL:
        t.err = tls_err_copy(e)
    t.hs_deadline = 0
    op = t.hs_op
    t.hs_op = NULL
    if op != NULL:
        op.tlserr = tls_err_copy(e)
        tls_hs_finish_locked(s, c, op, ERR_TLS if op.tlserr != NULL else ENOMEM, done)
    fail_queue_tls_locked(c, &c.rq, e, done)
    fail_queue_tls_locked(c, &c.sq, e, done)
    if c.shut == 1:
        c.shut = 0


cdef void tls_handshake_locked(svc_t *s, conn_t *c, oplist_t *done) noexcept nogil:
    """One handshake step as far as the socket allows (c.lock held)."""
    cdef tls_t *t = c.tls
    cdef goaio_tlserr_t e
    cdef op_t *op
    cdef int r, err
    goaio_ossl.ERR_clear_error()
    r = goaio_ossl.SSL_do_handshake(t.ssl)
    if r == 1:
        t.state = TLS_OPEN
        t.hs_deadline = 0
        op = t.hs_op
        t.hs_op = NULL
        if op != NULL:
            tls_hs_finish_locked(s, c, op, 0, done)
        return
    err = goaio_ossl.SSL_get_error(t.ssl, r)
    if (err == GOAIO_SSL_ERROR_WANT_READ or err == GOAIO_SSL_ERROR_WANT_WRITE) and not t.io.eof:
        return          # the poller reports the socket ready again
    goaio_tls_capture(t.ssl, r, err, &t.io, &e)
    tls_fail_locked(s, c, &e, done)


cdef void tls_end_reading_locked(tls_t *t, int r, int err) noexcept nogil:
    """SSL_read failed for good (c.lock held): decide how reading ended.
    A close_notify, or a TCP EOF at a record boundary, is EOFError; an EOF
    inside a record, or any other failure, is the captured error."""
    cdef goaio_tlserr_t e
    if err == GOAIO_SSL_ERROR_ZERO_RETURN and (goaio_ossl.SSL_get_shutdown(t.ssl) & GOAIO_SSL_RECEIVED_SHUTDOWN):
        goaio_ossl.ERR_clear_error()
        t.rd_end = ERR_EOF
        return
    goaio_tls_capture(t.ssl, r, err, &t.io, &e)
    if t.io.eof and e.kind != GOAIO_TLSE_ERRNO and (
            e.kind == GOAIO_TLSE_EOF or err == GOAIO_SSL_ERROR_ZERO_RETURN
            or (e.lib == GOAIO_ERR_LIB_SSL and e.reason == GOAIO_SSL_R_UNEXPECTED_EOF)):
        # the TCP stream ended without close_notify: the framing tells how
        if goaio_tlsio_at_boundary(&t.io):
            t.rd_end = ERR_EOF
            return
        memset(&e, 0, sizeof(e))
        e.kind = GOAIO_TLSE_EOF
    t.rd_err = tls_err_copy(&e)
    t.rd_end = ERR_TLS


cdef void tls_end_reading_eof_locked(tls_t *t) noexcept nogil:
    """Reading ended with a TCP EOF OpenSSL was not told of (c.lock held):
    EOFError at a record boundary, the EOF-inside-a-record error else."""
    cdef goaio_tlserr_t e
    if goaio_tlsio_at_boundary(&t.io):
        t.rd_end = ERR_EOF
        return
    memset(&e, 0, sizeof(e))
    e.kind = GOAIO_TLSE_EOF
    t.rd_err = tls_err_copy(&e)
    t.rd_end = ERR_TLS


cdef void tls_recv_locked(svc_t *s, conn_t *c, oplist_t *done) noexcept nogil:
    """Run the receive queue through SSL_read (c.lock held; dropped and
    retaken inside attach_buffer/detach_buffer, see sharebuf.pxi)."""
    cdef tls_t *t = c.tls
    cdef op_t *op
    cdef int n, err, r
    cdef size_t want
    while c.rq.head != NULL and not c.closed:
        op = c.rq.head
        if t.rd_end:
            if t.rd_end == ERR_TLS:
                finish_tls_err_locked(c, opq_pop_locked(&c.rq), t.rd_err, done)
            else:
                finish_op_locked(c, opq_pop_locked(&c.rq), ERR_EOF, done)
            continue
        if (op.flags & OPF_NEEDBUF) and op.buffobj == NULL:
            # a share buffer only when there is something to read
            if not (c.readable or t.io.eof or goaio_ossl.SSL_has_pending(t.ssl)):
                return
            r = attach_buffer_locked(s, c, op, done)
            if r < 0:
                return
            if r == 0:
                continue
        want = op.iov.iov_len if op.iov.iov_len < TLS_READ_MAX else TLS_READ_MAX
        goaio_ossl.ERR_clear_error()
        t.io.in_read = 1
        n = goaio_ossl.SSL_read(t.ssl, op.iov.iov_base, <int>want)
        t.io.in_read = 0
        if n > 0:
            op.done += n
            # a recv takes what OpenSSL holds already (several records, read
            # ahead), then completes
            if op.done >= op.total or (op.kind == OP_RECV and <size_t>n < want
                                       and not goaio_ossl.SSL_has_pending(t.ssl)):
                finish_op_locked(c, opq_pop_locked(&c.rq), 0, done)
            else:
                advance(op, n)
            continue
        err = goaio_ossl.SSL_get_error(t.ssl, n)
        if err == GOAIO_SSL_ERROR_WANT_READ and t.io.eof:
            # the TCP stream ended (OpenSSL was not told: tlsbio.h, in_read,
            # so our side can still write after the peer's half-close)
            goaio_ossl.ERR_clear_error()
            tls_end_reading_eof_locked(t)
            if op.kind == OP_RECV and op.done > 0:
                finish_op_locked(c, opq_pop_locked(&c.rq), 0, done)
            continue
        if err == GOAIO_SSL_ERROR_WANT_READ or err == GOAIO_SSL_ERROR_WANT_WRITE:
            goaio_ossl.ERR_clear_error()
            if op.kind == OP_RECV and op.done > 0:
                finish_op_locked(c, opq_pop_locked(&c.rq), 0, done)
                continue
            if op.flags & OPF_NEEDBUF:
                cq_push(s, done)        # (detach_buffer_locked may drop c.lock)
                detach_buffer_locked(c, op)
            return
        tls_end_reading_locked(t, n, err)
        if op.kind == OP_RECV and op.done > 0:
            finish_op_locked(c, opq_pop_locked(&c.rq), 0, done)


cdef bint tls_flush_pending_locked(conn_t *c, oplist_t *done) noexcept nogil:
    """Finish a record left half written (c.lock held). True when nothing is
    pending any more (or writing failed: the next send reports it)."""
    cdef tls_t *t = c.tls
    cdef int n, err
    if t.wpend == NULL:
        return True
    goaio_ossl.ERR_clear_error()
    n = goaio_ossl.SSL_write(t.ssl, t.wpend, t.wpend_len)
    if n <= 0:
        err = goaio_ossl.SSL_get_error(t.ssl, n)
        goaio_ossl.ERR_clear_error()
        if err == GOAIO_SSL_ERROR_WANT_READ or err == GOAIO_SSL_ERROR_WANT_WRITE:
            return False
    PyMem_RawFree(t.wpend)
    t.wpend = NULL
    t.wpend_len = 0
    t.wlast = 0
    return True


cdef int tls_gather(op_t *op, char *buf, int cap) noexcept nogil:
    """Copy up to cap bytes of op's plaintext from its current position (the
    iovecs left, in order) into buf; the count. The op does not move."""
    cdef int i, k, n = 0
    for i in range(op.iovcnt):
        if n >= cap:
            break
        k = <int>(op.iov[i].iov_len if op.iov[i].iov_len < <size_t>(cap - n) else cap - n)
        memcpy(buf + n, op.iov[i].iov_base, k)
        n += k
    return n


cdef void tls_keep_half_record_locked(conn_t *c, op_t *op) noexcept nogil:
    """The head send leaves the queue unfinished (timeout, cancel) while OpenSSL
    holds a record of it half written (c.lock held): keep that record's
    plaintext to finish it later and count it as sent, so the bytes reported
    are what the peer will decrypt."""
    cdef tls_t *t = c.tls
    if t == NULL or t.wlast <= 0 or op.kind != OP_SEND or t.wpend != NULL:
        return
    t.wpend = <char *>PyMem_RawMalloc(t.wlast)
    if t.wpend == NULL:
        return
    t.wpend_len = tls_gather(op, t.wpend, t.wlast)
    op.done += t.wlast
    t.wlast = 0


cdef void tls_shutdown_locked(svc_t *s, conn_t *c, oplist_t *done) noexcept nogil:
    """The head of c.sq is a shutdown: close_notify, then SHUT_WR (c.lock held)."""
    cdef tls_t *t = c.tls
    cdef goaio_tlserr_t e
    cdef int r, err
    cdef op_t *op
    goaio_ossl.ERR_clear_error()
    r = goaio_ossl.SSL_shutdown(t.ssl)
    if r < 0:
        err = goaio_ossl.SSL_get_error(t.ssl, r)
        if err == GOAIO_SSL_ERROR_WANT_WRITE or err == GOAIO_SSL_ERROR_WANT_READ:
            goaio_ossl.ERR_clear_error()
            return
        op = opq_pop_locked(&c.sq)
        goaio_tls_capture(t.ssl, r, err, &t.io, &e)
        c.shut = 0
        finish_tls_err_locked(c, op, &e, done)
        return
    run_shutdown_locked(c, done)        # SHUT_WR (core/halfclose.pxi)


cdef void tls_send_locked(svc_t *s, conn_t *c, oplist_t *done) noexcept nogil:
    """Run the send queue through SSL_write (c.lock held)."""
    cdef tls_t *t = c.tls
    cdef goaio_tlserr_t e
    cdef op_t *op
    cdef int n, err, want
    cdef char gbuf[TLS_WRITE_MAX]
    if not tls_flush_pending_locked(c, done):
        return
    while c.sq.head != NULL and not c.closed:
        op = c.sq.head
        if op.kind == OP_SHUTDOWN:
            tls_shutdown_locked(s, c, done)
            if c.sq.head == op:
                return
            continue
        if op.total == 0:
            finish_op_locked(c, opq_pop_locked(&c.sq), ERR_EMPTY, done)
            continue
        if op.iovcnt == 0:
            finish_op_locked(c, opq_pop_locked(&c.sq), 0, done)
            continue
        goaio_ossl.ERR_clear_error()
        if op.iovcnt > 1 and op.iov.iov_len < TLS_WRITE_MAX:
            # the small parts of a gather list share a record (the same
            # bytes again on a retry: the op moves only once they are written)
            want = tls_gather(op, gbuf, TLS_WRITE_MAX)
            n = goaio_ossl.SSL_write(t.ssl, gbuf, want)
        else:
            want = <int>(op.iov.iov_len if op.iov.iov_len < TLS_WRITE_MAX else TLS_WRITE_MAX)
            n = goaio_ossl.SSL_write(t.ssl, op.iov.iov_base, want)
        if n > 0:
            t.wlast = 0
            op.done += n
            if op.done >= op.total:
                finish_op_locked(c, opq_pop_locked(&c.sq), 0, done)
            else:
                advance(op, n)
            continue
        err = goaio_ossl.SSL_get_error(t.ssl, n)
        if err == GOAIO_SSL_ERROR_WANT_WRITE or err == GOAIO_SSL_ERROR_WANT_READ:
            goaio_ossl.ERR_clear_error()
            t.wlast = want      # OpenSSL must see this write again
            return
        goaio_tls_capture(t.ssl, n, err, &t.io, &e)
        t.wlast = 0
        if c.shut == 1:
            c.shut = 0          # the pending shutdown fails with the sends
        fail_queue_tls_locked(c, &c.sq, &e, done)
        return


cdef void tls_run_locked(svc_t *s, conn_t *c, oplist_t *done) noexcept nogil:
    """Every step the connection can make now (c.lock held, the caller may or
    may not hold the GIL)."""
    cdef tls_t *t = c.tls
    if c.closed:
        return
    if t.state == TLS_HANDSHAKE:
        tls_handshake_locked(s, c, done)
        if t.state == TLS_HANDSHAKE:
            return
    if t.state == TLS_FAILED:
        fail_queue_tls_locked(c, &c.rq, t.err, done)
        fail_queue_tls_locked(c, &c.sq, t.err, done)
        if c.shut == 1:
            c.shut = 0
        return
    if c.rq.head != NULL:
        tls_recv_locked(s, c, done)
    if not c.closed:
        tls_send_locked(s, c, done)


cdef void tls_step_with_gil_nogil(svc_t *s, conn_t *c) noexcept with gil:
    """tls_run_locked with the GIL taken before c.lock, for a context whose
    callbacks take the GIL inside OpenSSL (no C lock held on entry; the
    caller holds a reference and set t.busy)."""
    cdef oplist_t done
    oplist_init(&done)
    goaio_lock(&c.lock)     # GIL held: fine, no c.lock holder waits for it
    if c.tls.info_busy:
        c.tls.again = 1             # a TLSInfo call reads the SSL: its end runs us
    else:
        tls_run_locked(s, c, &done)
    cq_push(s, &done)
    goaio_unlock(&c.lock)


cdef void tls_process_locked(svc_t *s, conn_t *c, oplist_t *done) noexcept nogil:
    """The entry of the IO path for a TLS connection (c.lock held): called by
    process_recv_locked / process_send_locked and for every poller event."""
    cdef tls_t *t = c.tls
    if t.busy or t.info_busy:
        t.again = 1         # the thread running it (or the TLSInfo call's end) runs it again
        return
    if t.need_gil == 0 or (t.need_gil == 1 and t.state != TLS_HANDSHAKE):
        tls_run_locked(s, c, done)
        return
    while True:
        cq_push(s, done)            # (completions so far keep their order)
        t.busy = 1
        t.again = 0
        goaio_unlock(&c.lock)
        tls_step_with_gil_nogil(s, c)
        goaio_lock(&c.lock)
        t.busy = 0
        if c.closed or not t.again or t.info_busy:
            break
    if not c.closed and t.need_gil == 1 and t.state != TLS_HANDSHAKE:
        tls_run_locked(s, c, done)


cdef void tls_expire_locked(svc_t *s, conn_t *c, int64_t now, oplist_t *done) noexcept nogil:
    """The timer heap reached c (c.lock held): a handshake past its deadline fails."""
    cdef tls_t *t = c.tls
    cdef goaio_tlserr_t e
    if t == NULL or t.state != TLS_HANDSHAKE or t.hs_deadline == 0 or t.busy:
        return
    if t.hs_deadline <= now:
        memset(&e, 0, sizeof(e))
        e.kind = GOAIO_TLSE_TIMEOUT
        tls_fail_locked(s, c, &e, done)


cdef inline int64_t tls_deadline(conn_t *c) noexcept nogil:
    """The handshake's deadline, 0 if none (c.lock held)."""
    if c.tls != NULL and c.tls.state == TLS_HANDSHAKE:
        return c.tls.hs_deadline
    return 0


cdef void tls_activate_locked(svc_t *s, conn_t *c, tls_t *t, op_t *hs_op, oplist_t *done) noexcept nogil:
    """Start TLS on c with t (prepared with the GIL): the handshake begins,
    hs_op (or NULL) completes when it ends (c.lock held, c open)."""
    c.tls = t
    t.io.fd = c.fd
    t.io.readable = &c.readable
    t.io.writable = &c.writable
    t.io.hup = &c.hup
    t.hs_op = hs_op
    t.connecting = hs_op != NULL and hs_op.kind == OP_CONNECT
    if t.hs_timeout > 0:
        t.hs_deadline = goaio_now_ns() + t.hs_timeout
        schedule_timer_locked(s, c, t.hs_deadline)
    if not hsw_offload_locked(s, c):
        tls_process_locked(s, c, done)


cdef inline bint tls_pending(conn_t *c) noexcept nogil:
    """A start_tls is posted and has not started (c.lock held, or the GIL:
    only a thread with the GIL sets c.tls_pend)."""
    return c.tls_pend != NULL and not c.tls_pend.dropped


cdef void tls_start_dropped_locked(svc_t *s, conn_t *c, oplist_t *done) noexcept nogil:
    """A start_tls left the send queue before it started (a send timeout, a
    cancel): the connection stays plain; receives go on in plaintext (c.lock
    held). Its layer is freed later, with the GIL (the next start_tls, or the
    record)."""
    if not tls_pending(c):
        return
    c.tls_pend.dropped = 1
    if s != NULL and c.rq.head != NULL and (c.readable or c.eof):
        process_recv_locked(s, c, done)


cdef void tls_try_start_locked(svc_t *s, conn_t *c, oplist_t *done) noexcept nogil:
    """The head of c.sq is a start_tls: the sends before it are written, the
    handshake begins (c.lock held)."""
    cdef op_t *op
    cdef tls_t *t
    if c.tls != NULL or not tls_pending(c) or c.sq.head == NULL or c.sq.head.kind != OP_STARTTLS:
        return
    op = opq_pop_locked(&c.sq)
    t = c.tls_pend
    c.tls_pend = NULL
    tls_activate_locked(s, c, t, op, done)


cdef void tls_close_locked(svc_t *s, conn_t *c, int err, oplist_t *done) noexcept nogil:
    """AIOConn._close: the op waiting for the handshake completes with the
    close's error, as the queued ops do (c.lock held; the caller sets it;
    a listener's own op goes back to its listener, closed)."""
    cdef op_t *op
    if c.tls != NULL and c.tls.hs_op != NULL:
        op = c.tls.hs_op
        c.tls.hs_op = NULL
        if op.flags & OPF_TLSINNER:
            tls_hs_finish_locked(s, c, op, ERR_CLOSED, done)
        else:
            finish_op_locked(c, op, err, done)


cdef void tls_free_nogil(tls_t *t) noexcept with gil:
    """Free a connection's TLS state with its record (no C lock held; takes
    the GIL: the SSLObject frees the SSL and our BIO with it)."""
    if t == NULL:
        return
    if t.ssl != NULL:
        goaio_ossl.BIO_set_data(goaio_ossl.SSL_get_rbio(t.ssl), NULL)
    Py_XDECREF(t.sslobj)
    if t.listener != NULL:
        conn_decref_nogil(t.listener)
    PyMem_RawFree(t.err)
    PyMem_RawFree(t.rd_err)
    PyMem_RawFree(t.wpend)
    PyMem_RawFree(t)
