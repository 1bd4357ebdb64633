# core/sharebuf.pxi -- share buffers: giving recv(ctx, None) a buffer when data
# is ready (a BufferPool without the GIL; any other share_buff through Python),
# and taking it back when the receive goes idle again.
#
# The unlock protocol. Python code (acquire(), growing a pool, release()) must
# never run under c.lock, so the IO path, holding c.lock, does:
#   unlock_for_python_locked: queue what completed so far (a close meanwhile
#       cannot put its results ahead of them), mark c.acquiring (no other
#       thread starts the same work), drop c.lock;
#   ...the `_nogil` function that takes the GIL and runs the Python code...
#   relock_after_python: retake c.lock, clear c.acquiring; when the connection
#       was closed meanwhile, give the buffer and exception back (c.lock
#       dropped again for that), else leave them in c.stash (the exception
#       tagged: stash_tag_exc).
# The caller then re-examines the connection from the top.

cdef extern from *:
    """
    /* c.stash holds a stash_t or, with its low bit set, the exception that
       getting one raised (both aligned: the bit is free); they never coexist. */
    #define goaio_stash_is_exc(p) (((uintptr_t)(p)) & 1)
    #define goaio_stash_tag_exc(e) ((void *)((uintptr_t)(e) | 1))
    #define goaio_stash_exc(p) ((PyObject *)((uintptr_t)(p) & ~(uintptr_t)1))
    """
    bint stash_is_exc "goaio_stash_is_exc"(stash_t *p) noexcept nogil
    stash_t *stash_tag_exc "goaio_stash_tag_exc"(PyObject *e) noexcept nogil
    PyObject *stash_exc "goaio_stash_exc"(stash_t *p) noexcept nogil


cdef void release_share_gil(object share, object buff) noexcept:
    """share.release(buff) for the library (a failed receive's buffer, or at
    close): an exception it raises goes to sys.unraisablehook and the caller
    goes on (GIL held, no C lock)."""
    share.release(buff)


cdef inline stash_t *op_stash(op_t *op) noexcept nogil:
    """The stash an op was lent its buffer by (OPF_STASH: op.views is the
    stash's view, its first field), or NULL."""
    return <stash_t *>op.views if op.flags & OPF_STASH else NULL


cdef void stash_free_gil(stash_t *st, bint give_back):
    """Release a stash (GIL held, no C lock held: it may run Python code)."""
    PyBuffer_Release(&st.view)
    if st.share != NULL:
        if give_back:
            release_share_gil(<object>st.share, <object>st.obj)
        Py_DECREF(<object>st.share)
    Py_DECREF(<object>st.obj)
    PyMem_RawFree(st)


cdef stash_t *take_stash_nogil(PyObject *sb, PyObject **exc_out) noexcept with gil:
    """share_buff.acquire() (or a fresh bytearray when it returns None), pinned.
    NULL with the exception in exc_out (a new reference) on failure.
    Takes the GIL itself; no C lock held."""
    cdef stash_t *st = NULL
    try:
        obj = (<object>sb).acquire()
        share = <object>sb
        if obj is None:
            obj = bytearray(DEFAULT_RECV_BUFF_SIZE)
            share = None
        st = <stash_t *>PyMem_RawMalloc(sizeof(stash_t))
        if st == NULL:
            raise MemoryError()
        memset(st, 0, sizeof(stash_t))
        try:
            # checked as a posted receive buffer is: BufferError when not
            # C-contiguous, the exporter's own error (ValueError: released)
            get_view(obj, &st.view, True)
        except BaseException as e:
            PyMem_RawFree(st)
            st = NULL
            if share is not None:
                release_share_gil(share, obj)
            if isinstance(e, TypeError):
                raise TypeError(MSG_SHARE_UNUSABLE.format(e)) from None
            raise
        Py_INCREF(obj)
        st.obj = <PyObject *>obj
        if share is not None:
            Py_INCREF(share)
            st.share = <PyObject *>share
        if st.view.len == 0:
            stash_free_gil(st, True)
            st = NULL
            raise EmptyBuffer(MSG_SHARE_EMPTY)
    except BaseException as e:
        Py_INCREF(e)
        exc_out[0] = <PyObject *>e
        return NULL
    return st


cdef void give_back_nogil(stash_t *st, PyObject *exc) noexcept with gil:
    """Give back a stash nobody will use, drop an exception nobody will see
    (either may be NULL). Takes the GIL itself; no C lock held."""
    if st != NULL:
        stash_free_gil(st, True)
    if exc != NULL:
        Py_DECREF(<object>exc)


cdef PyObject *grow_pool_nogil(PyObject *pool) noexcept with gil:
    """Grow a BufferPool; NULL, or the exception raised (a new reference).
    Takes the GIL itself; no C lock held."""
    try:
        (<BufferPool>pool)._grow()
    except BaseException as e:
        Py_INCREF(e)
        return <PyObject *>e
    return NULL


cdef inline void unlock_for_python_locked(svc_t *s, conn_t *c, oplist_t *done) noexcept nogil:
    """First half of the unlock protocol (c.lock held on entry, not on return)."""
    cq_push(s, done)
    c.acquiring = 1
    goaio_unlock(&c.lock)


cdef void relock_after_python(conn_t *c, stash_t *st, PyObject *exc) noexcept nogil:
    """Second half of the unlock protocol (no lock held on entry; c.lock on
    return): keep st / exc (NULL or owned) for the connection, or give them
    back if it was closed meanwhile."""
    goaio_lock(&c.lock)
    if c.closed:
        if st != NULL or exc != NULL:
            goaio_unlock(&c.lock)
            give_back_nogil(st, exc)
            goaio_lock(&c.lock)
    else:
        c.stash = st if exc == NULL else stash_tag_exc(exc)    # (never both)
    c.acquiring = 0


cdef void drop_stash_locked(conn_t *c, stash_t *st) noexcept nogil:
    """Give an unused Python share buffer back (c.lock held; dropped meanwhile)."""
    goaio_unlock(&c.lock)
    give_back_nogil(st, NULL)
    goaio_lock(&c.lock)


cdef int attach_buffer_locked(svc_t *s, conn_t *c, op_t *op, oplist_t *done) noexcept nogil:
    """Give the head recv(ctx, None) a share buffer (c.lock held; may be
    dropped meanwhile by the unlock protocol).
    1: attached; 0: re-examine the connection; -1: stop processing (another
    thread is getting a buffer for it)."""
    cdef PyObject *obj
    cdef PyObject *exc
    cdef char *data
    cdef int idx
    cdef stash_t *st
    if stash_is_exc(c.stash):
        op.errobj = stash_exc(c.stash)
        c.stash = NULL
        finish_op_locked(c, opq_pop_locked(&c.rq), ERR_OBJ, done)
        return 0
    if c.pool != NULL:
        idx = pool_pop(c.pool, &obj, &data)
        if idx >= 0:
            op.pool_idx = idx
            op.buffobj = obj
            op.flags |= OPF_POOLBUF
            op.iov0.iov_base = data
            op.iov0.iov_len = c.pool.size
            op.iov = &op.iov0
            op.iovcnt = 1
            op.total = c.pool.size
            return 1
        if c.acquiring:
            return -1
        unlock_for_python_locked(s, c, done)
        exc = grow_pool_nogil(c.share_buff)   # (owned by c, which our caller holds a cref on)
        relock_after_python(c, NULL, exc)
        return 0
    if c.stash == NULL:
        if c.acquiring:
            return -1
        unlock_for_python_locked(s, c, done)
        exc = NULL
        st = take_stash_nogil(c.share_buff, &exc)
        relock_after_python(c, st, exc)
        return 0
    st = c.stash
    c.stash = NULL
    op.flags |= OPF_STASH
    op.buffobj = st.obj          # lent by the stash, which owns the reference
    op.views = &st.view
    op.nviews = 1
    op.iov0.iov_base = st.view.buf
    op.iov0.iov_len = st.view.len
    op.iov = &op.iov0
    op.iovcnt = 1
    op.total = st.view.len
    return 1


cdef void detach_buffer_locked(conn_t *c, op_t *op) noexcept nogil:
    """Undo attach_buffer_locked after EAGAIN (c.lock held; dropped meanwhile
    when a Python buffer goes back): idle receives hold no buffer."""
    cdef stash_t *st = op_stash(op)
    if op.flags & OPF_POOLBUF:
        pool_push(c.pool, op.pool_idx)
        op.flags &= ~OPF_POOLBUF
    op.flags &= ~OPF_STASH
    op.views = &op.view0
    op.nviews = 0
    op.buffobj = NULL
    op.iovcnt = 0
    op.total = 0
    if st != NULL:
        drop_stash_locked(c, st)
