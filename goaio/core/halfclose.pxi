# core/halfclose.pxi -- conn.shutdown (half-close as an entry of the send queue),
# conn.cancel (by context identity) and conn.peername / conn.sockname.
#
# Shutdown: an OP_SHUTDOWN op (no buffer, total 0) queued in c.sq by _post,
# which sets c.shut = 1 under c.lock; while c.shut != 0 a send (or another
# shutdown) raises BrokenPipeError at the call. When it reaches the head of the
# queue (process_send_locked) it runs shutdown(SHUT_WR), c.shut becomes 2. A send
# that fails while it is pending leaves its errno in c.shut_err: the shutdown
# then completes with that error and shuts nothing down (c.shut back to 0),
# the very exception object of the send's result (OPF_SHAREDERR: whichever
# result is made first makes it, in AIOConn._side().shared_errs, the other takes it); a
# send timeout, a cancel or a close takes it out of the queue with the sends
# (c.shut back to 0 as well).


cdef inline void share_send_error_locked(conn_t *c, op_t *op, int e) noexcept nogil:
    """A send failed with errno e while a shutdown is pending (c.lock held):
    the shutdown will complete with the very exception of the send's result
    (the last such send's, as in the pure backend)."""
    c.shut_err = e
    c.shut_key += 1
    op.flags |= OPF_SHAREDERR
    op.pool_idx = c.shut_key


cdef object shared_err_gil(op_t *op):
    """The exception a failed send and its shutdown share (GIL held): made by
    whichever of the two results comes first, taken by the other."""
    cdef AIOConn conn = <AIOConn><object>op.pyconn
    cdef _ConnSide x = conn._side()         # (core/conn.pxi)
    exc = _oserror(op.err)
    if x.shared_errs is None:
        x.shared_errs = {}
    got = x.shared_errs.setdefault(op.pool_idx, exc)        # (atomic under the GIL)
    if got is not exc:
        del x.shared_errs[op.pool_idx]                      # the second of the two
    return got


cdef void run_shutdown_locked(conn_t *c, oplist_t *done) noexcept nogil:
    """The head of c.sq is a shutdown: run it (c.lock held)."""
    cdef op_t *op = opq_pop_locked(&c.sq)
    cdef int e = c.shut_err
    c.shut_err = 0
    if e != 0:
        op.flags |= OPF_SHAREDERR       # the failed send's very exception
        op.pool_idx = c.shut_key
    elif goaio_shutdown_wr(c.fd) < 0:
        e = errno
    c.shut = 0 if e != 0 else 2
    finish_op_locked(c, op, e, done)


cdef conn_shutdown(AIOConn conn, context):
    """conn.shutdown(context) (GIL held, no C lock)."""
    cdef op_t *op
    conn._check_open()
    op = op_new(OP_SHUTDOWN, False)
    conn._post(op, context)


cdef int cancel_queue_locked(conn_t *c, opq_t *q, PyObject *ctx, int err, bint sends,
                             oplist_t *done) noexcept nogil:
    """Complete every op of q posted with ctx (c.lock held); returns how many.
    A started send (the head, some bytes written) takes every op behind it
    along, as its send timeout would."""
    cdef op_t *op = q.head
    cdef op_t *prev = NULL
    cdef op_t *nxt
    cdef int n = 0
    while op != NULL:
        nxt = op.next
        if op.context != ctx:
            prev = op
            op = nxt
            continue
        if sends and op == q.head and c.tls != NULL:
            tls_keep_half_record_locked(c, op)  # (core/tls.pxi)
        if sends and op == q.head and op.done > 0:
            n += q.len
            if c.shut == 1:
                c.shut = 0
            opq_fail_locked(c, q, err, done)
            return n
        if prev == NULL:
            q.head = nxt
        else:
            prev.next = nxt
        if q.tail == op:
            q.tail = prev
        q.len -= 1
        if op.kind == OP_SHUTDOWN:
            c.shut = 0
        elif op.kind == OP_STARTTLS:
            tls_start_dropped_locked(NULL, c, done)     # stays plain (core/tls.pxi)
        finish_op_locked(c, op, err, done)
        n += 1
        op = nxt
    return n


cdef int conn_cancel(AIOConn conn, context, reason) except -1:
    """conn.cancel(context, reason) (GIL held, no C lock; takes c.lock with the
    GIL held, as _close does: no c.lock holder waits for the GIL)."""
    cdef conn_t *c = conn.c
    cdef svc_t *s = conn._svc.s
    cdef oplist_t done
    cdef op_t *op
    cdef int n = 0
    cdef int err = ERR_CANCELLED if reason is None else ERR_OBJ
    if reason is not None and not isinstance(reason, BaseException):
        raise TypeError(MSG_REASON_TYPE)
    if c.closed:
        return 0
    oplist_init(&done)
    goaio_lock(&c.lock)
    if not c.closed:
        n = cancel_queue_locked(c, &c.rq, <PyObject *>context, err, False, &done)
        n += cancel_queue_locked(c, &c.sq, <PyObject *>context, err, True, &done)
        if reason is not None:
            op = done.head
            while op != NULL:
                op.errobj = <PyObject *>reason
                Py_INCREF(reason)
                op = op.next
        if n and c.sq.head != NULL:
            process_send_locked(s, c, &done)    # a new head that can go now (a shutdown, say)
        if n and c.tls == NULL and c.rq.head != NULL and (c.readable or c.eof):
            process_recv_locked(s, c, &done)    # a cancelled start_tls: reading goes on plain
        cq_push(s, &done)
    goaio_unlock(&c.lock)
    return n


cdef object peername_at_bind(sock):
    """The peer's address, read once when the socket is bound (GIL held): it
    stays known after both sides closed their stream and the kernel forgot it;
    None if the peer was already gone."""
    try:
        return sock.getpeername()
    except OSError:
        return None


cdef object conn_address(AIOConn conn, bint peer):
    """conn.peername (as read at bind) / getsockname() of the socket; None once
    closed, or when the OS does not know it (GIL held)."""
    if conn.c.closed:
        return None
    if peer:
        return conn._peer()
    try:
        return conn._socket().getsockname()
    except OSError:
        return None
