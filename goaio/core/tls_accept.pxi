# core/tls_accept.pxi -- TLS handshakes off the polling thread: steps handed to
# idle workers, and a TLS listener's connections taken ahead and handed to
# accepts as their handshakes end (the record layer itself: core/tls.pxi).


# --- handshakes in parallel: steps handed to idle workers ------------------------------
#
# One thread polls at a time; a handshake step costs a signature or a key
# exchange (the expensive part of TLS). So a handshake step the poll round (or
# a setup) finds goes to the service's handshake work queue when a worker is
# idle (waiting on w_cond): that worker runs it under c.lock, without the GIL,
# while the poller goes on. With no idle worker it runs where it was found.

cdef bint hsw_offload_locked(svc_t *s, conn_t *c) noexcept nogil:
    """Hand c's handshake step to an idle worker (c.lock held; takes s.lock).
    True when it is (or already was) queued; False: run it here."""
    cdef bint ok = False
    if c.tls == NULL or c.tls.state != TLS_HANDSHAKE or c.tls.need_gil:
        return False
    if c.tls.hsw_queued:
        return True
    pthread_mutex_lock(&s.lock)
    if s.widle > s.hsw_len and not s.closed:
        goaio_atomic_inc(&c.cref)       # the queue's reference
        c.tls.hsw_queued = 1
        c.tls.hsw_next = NULL
        if s.hsw_tail == NULL:
            s.hsw_head = c
        else:
            s.hsw_tail.tls.hsw_next = c
        s.hsw_tail = c
        s.hsw_len += 1
        pthread_cond_signal(&s.w_cond)
        ok = True
    pthread_mutex_unlock(&s.lock)
    return ok


cdef void hsw_run_one_locked(svc_t *s) noexcept nogil:
    """A worker takes the first queued handshake step and runs it (s.lock held
    on entry and on return; dropped meanwhile)."""
    cdef conn_t *c = s.hsw_head
    cdef oplist_t done
    oplist_init(&done)
    s.hsw_head = c.tls.hsw_next
    if s.hsw_head == NULL:
        s.hsw_tail = NULL
    s.hsw_len -= 1
    s.hsw_runs += 1
    pthread_mutex_unlock(&s.lock)
    goaio_lock(&c.lock)
    c.tls.hsw_queued = 0
    if not c.closed and c.tls != NULL:
        tls_process_locked(s, c, &done)
    cq_push(s, &done)
    goaio_unlock(&c.lock)
    conn_decref_nogil(c)
    pthread_mutex_lock(&s.lock)


cdef void hsw_discard(svc_t *s) noexcept nogil:
    """svc.close(), the workers gone: drop the queued steps (no lock held)."""
    cdef conn_t *c
    cdef conn_t *nxt
    pthread_mutex_lock(&s.lock)
    c = s.hsw_head
    s.hsw_head = s.hsw_tail = NULL
    s.hsw_len = 0
    pthread_mutex_unlock(&s.lock)
    while c != NULL:
        nxt = c.tls.hsw_next
        c.tls.hsw_queued = 0
        conn_decref_nogil(c)
        c = nxt


# --- TLS listeners: connections taken ahead, handed over as their handshakes end ---
#
# A TLS listener accepts from the kernel while (connections taken ahead and not
# handed out) < (accepts pending + TLS_ACCEPT_AHEAD), each with an op of its own
# (OPF_TLSINNER, malloc'd without the GIL, holding a cref on the listener
# record). Its connection is bound by the setup runner and handshakes like any
# other; when the handshake ends (tls_hs_finish_locked) the op goes back to
# the listener (tls_deliver_locked: the connection's c.lock, then the
# listener's -- the one place the two nest, always in that order): it
# completes the first pending accept (its connection or its error moved
# into the user's op), or waits in lr.ready for the next accept(). A closed
# listener's returning op becomes an orphan: the setup runner closes its
# connection.

cdef op_t *tls_inner_op_nogil(conn_t *lc, int fd) noexcept nogil:
    """A TLS listener's own op for an accepted fd (NULL: no memory)."""
    cdef op_t *op = <op_t *>PyMem_RawMalloc(sizeof(op_t) - sizeof(Py_buffer))
    if op == NULL:
        return NULL
    memset(op, 0, sizeof(op_t) - sizeof(Py_buffer))
    op.kind = OP_ACCEPT
    op.flags = OPF_TLSINNER
    op.views = &op.view0            # (never dereferenced: nviews 0)
    op.iov = &op.iov0
    op.newfd = fd
    op.conn = lc
    goaio_atomic_inc(&lc.cref)      # (moves to tls_t.listener at the setup)
    return op


cdef void tls_hand_over_locked(lrec_t *lr, op_t *inner, op_t *user, oplist_t *done) noexcept nogil:
    """A listener's op completes the user's accept (the listener's c.lock held):
    the connection or the error moves over; the shell is freed."""
    user.pyconn = inner.pyconn
    inner.pyconn = NULL
    user.errobj = inner.errobj
    inner.errobj = NULL
    user.tlserr = inner.tlserr
    inner.tlserr = NULL
    user.conn = inner.conn
    user.flags |= OPF_TLSCONN
    lr.hs_count -= 1
    finish_op_locked(&lr.c, user, inner.err, done)
    PyMem_RawFree(inner)


cdef void tls_deliver_locked(svc_t *s, conn_t *lc, op_t *op, oplist_t *done) noexcept nogil:
    """A listener's op whose handshake ended goes back to its listener (the
    connection's c.lock held; takes the listener's c.lock, then s.lock)."""
    cdef lrec_t *lr = <lrec_t *>lc
    goaio_lock(&lc.lock)
    if lc.closed:
        goaio_unlock(&lc.lock)
        op.flags |= OPF_TLSORPHAN
        tls_setup_push_locked(s, op)        # its connection is closed with the GIL
        return
    if lc.rq.head != NULL:
        tls_hand_over_locked(lr, op, opq_pop_locked(&lc.rq), done)
    else:
        op.next = NULL
        if lr.ready_tail == NULL:
            lr.ready_head = op
        else:
            lr.ready_tail.next = op
        lr.ready_tail = op
    process_accept_locked(s, lr, done)      # room for one more
    goaio_unlock(&lc.lock)


cdef void tls_hs_finish_locked(svc_t *s, conn_t *c, op_t *op, int err, oplist_t *done) noexcept nogil:
    """The op waiting for c's handshake completes with err (c.lock held)."""
    if op.flags & OPF_TLSINNER and c.tls != NULL and c.tls.listener != NULL:
        op.err = err
        tls_deliver_locked(s, c.tls.listener, op, done)
    else:
        finish_op_locked(c, op, err, done)
