# core/results.pxi -- AIOResult, and turning a completed op into one.

@cython.final
@cython.freelist(64)
cdef class AIOResult:
    """The completion of one posted operation."""
    cdef public object conn
    cdef public object context
    cdef public object buff
    cdef public Py_ssize_t bytes_transferred
    cdef public object err

    def __init__(self, conn, context, buff, bytes_transferred, err):
        self.conn = conn
        self.context = context
        self.buff = buff
        self.bytes_transferred = bytes_transferred
        self.err = err

    def __repr__(self):
        return (f"<AIOResult context={self.context!r} bytes_transferred={self.bytes_transferred}"
                f" err={self.err!r}>")


cdef object make_err_gil(op_t *op):
    """The exception of a completed op, or None (GIL held, no C lock)."""
    cdef int e = op.err
    if e == 0:
        return None
    if op.flags & OPF_SHAREDERR:
        return shared_err_gil(op)       # core/halfclose.pxi
    if e == ERR_EOF:
        return EOFError(MSG_PEER_CLOSED)
    if e == ERR_RTIMEOUT:
        return RecvTimeout(MSG_RECV_TIMEOUT)
    if e == ERR_STIMEOUT:
        return SendTimeout(MSG_SEND_TIMEOUT)
    if e == ERR_EMPTY:
        return EmptyBuffer(MSG_EMPTY_SEND)
    if e == ERR_OBJ:
        return <object>op.errobj
    if e == ERR_CLOSED:
        return ConnClosed(MSG_CONN_CLOSED)
    if e == ERR_LCLOSED:
        return ConnClosed(MSG_LISTENER_CLOSED)
    if e == ERR_CTIMEOUT:
        return ConnectTimeout(MSG_CONNECT_TIMEOUT)
    if e == ERR_CANCELLED:
        return Cancelled(MSG_CANCELLED)
    if e == ERR_TLS:
        return tls_exception_gil(op)        # core/tls_setup.pxi
    return _oserror(e)


cdef void op_release_gil(op_t *op, bint give_back):
    """Drop every reference an op holds and free it (GIL held, no C lock: a
    share buffer's release() is Python code).

    give_back: a share buffer attached to the op goes back to its pool."""
    cdef int i
    cdef stash_t *st = op.stash
    if op.kind >= OP_ACCEPT and op.newfd >= 0:
        close(op.newfd)             # an accepted/connected socket nobody took
    for i in range(op.nviews):
        PyBuffer_Release(&op.views[i])
    if st != NULL:
        if give_back and st.share != NULL:
            release_share_gil(<object>st.share, <object>st.obj)
        Py_XDECREF(st.share)
        Py_XDECREF(st.obj)
        PyMem_RawFree(st)
    if op.flags & OPF_POOLBUF:
        if give_back:
            pool_push(op.conn.pool, op.pool_idx)
    elif st == NULL:
        Py_XDECREF(op.buffobj)      # (a stash owns the buffer it lends to buffobj)
    Py_XDECREF(op.errobj)
    PyMem_RawFree(op.tlserr)
    Py_XDECREF(op.context)
    Py_XDECREF(op.pyconn)
    if op.views != &op.view0 and op.stash == NULL:
        PyMem_RawFree(op.views)
    PyMem_RawFree(op.iovs)
    PyMem_RawFree(op)


cdef AIOResult make_result_gil(svc_t *s, op_t *op):
    """Hand an op over as an AIOResult; frees the op (GIL held, no C lock)."""
    cdef AIOResult r
    cdef bint ok = op.err == 0
    if op.kind >= OP_ACCEPT:
        return make_new_conn_result_gil(s, op)      # core/listener.pxi
    r = AIOResult.__new__(AIOResult)
    r.conn = <object>op.pyconn
    r.context = <object>op.context
    if ok or not (op.flags & OPF_NONEBUF):
        r.buff = <object>op.buffobj if op.buffobj != NULL else None
    else:
        r.buff = None
    r.bytes_transferred = op.done
    r.err = make_err_gil(op)
    if ok and (op.flags & OPF_POOLBUF):
        # the user owns it now (r.buff holds the reference), resizable again
        PyBuffer_Release(&op.conn.pool.views[op.pool_idx])
        op.flags &= ~OPF_POOLBUF
        op.buffobj = NULL
    op_release_gil(op, not ok)
    return r

