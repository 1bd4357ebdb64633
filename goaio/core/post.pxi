# core/post.pxi -- building an op when it is posted: pinning the user's
# buffers (Py_buffer, held until the op is released). GIL held, no C lock.

cdef inline bint view_is_c_contiguous(Py_buffer *v) noexcept:
    """PyBuffer_IsContiguous(v, 'C'), answered inline for the usual flat
    buffer (bytes, bytearray, a memoryview slice)."""
    if v.ndim == 0 or (v.ndim == 1 and (v.strides == NULL or v.strides[0] == v.itemsize)):
        return True
    return PyBuffer_IsContiguous(v, b'C')


cdef int get_view(object b, Py_buffer *v, bint writable) except -1:
    """Pin b (C-contiguous; writable for a receive) into v (GIL held).

    TypeError: not a buffer, or read-only for a receive; BufferError: not
    C-contiguous; whatever the exporter raises otherwise, unchanged (a
    released memoryview or a closed mmap: ValueError, as Python's own buffer
    users report it). The export is asked for in any layout first and its
    contiguity checked after, so an exporter's way of refusing a layout
    (numpy: ValueError) never decides the class."""
    if not PyObject_CheckBuffer(b):
        raise TypeError(MSG_NOT_BUFFER.format(type(b).__name__))
    if writable:
        try:
            PyObject_GetBuffer(b, v, PyBUF_FULL)
        except (BufferError, ValueError):       # (older numpy: ValueError for read-only)
            PyObject_GetBuffer(b, v, PyBUF_FULL_RO)     # (raises on its own when unusable)
            PyBuffer_Release(v)
            raise TypeError(MSG_READ_ONLY.format(type(b).__name__)) from None
    else:
        PyObject_GetBuffer(b, v, PyBUF_FULL_RO)
    if not view_is_c_contiguous(v):
        PyBuffer_Release(v)
        raise BufferError(MSG_NOT_CONTIGUOUS)
    return 0


cdef extern from *:
    """
    #ifdef Py_GIL_DISABLED
    #define GOAIO_OP_FREELIST 0
    #else
    #define GOAIO_OP_FREELIST 64
    #endif
    """
    int GOAIO_OP_FREELIST

# Freed ops kept for reuse, one list per size (with and without view0). An op
# is made and freed with the GIL held only (op_new, op_release_gil), so the
# GIL guards the lists; none on a build without a GIL.
cdef op_t *_op_free[2][64]
cdef int _op_nfree[2]


cdef op_t *op_new(int kind, bint pinned=True) except NULL:
    """A new op (GIL held); one that pins no buffer of its own (a share-buffer receive,
    which waits idle the longest) is allocated without the inline Py_buffer."""
    cdef size_t size = sizeof(op_t) if pinned else sizeof(op_t) - sizeof(Py_buffer)
    cdef op_t *op
    if _op_nfree[pinned]:
        _op_nfree[pinned] -= 1
        op = _op_free[pinned][_op_nfree[pinned]]
    else:
        op = <op_t *>PyMem_RawMalloc(size)
        if op == NULL:
            raise MemoryError()
    memset(op, 0, sizeof(op_t) - sizeof(Py_buffer))    # (view0 is filled when used)
    op.kind = kind
    op.pinned = pinned
    op.views = &op.view0
    op.iov = &op.iov0
    return op


cdef inline void op_free_gil(op_t *op) noexcept:
    """Free an op's memory, or keep it for the next op_new (GIL held)."""
    cdef int k = 1 if op.pinned else 0
    if _op_nfree[k] < GOAIO_OP_FREELIST:
        _op_free[k][_op_nfree[k]] = op
        _op_nfree[k] += 1
    else:
        PyMem_RawFree(op)


cdef object _check_send_nbytes = _common.check_send_nbytes
cdef str MSG_SEND_NBYTES_RANGE = _messages.SEND_NBYTES_RANGE

cdef extern from "Python.h":
    long PyLong_AsLongAndOverflow(object o, int *overflow) except? -1
    Py_ssize_t PY_SSIZE_T_MAX


cdef Py_ssize_t send_nbytes(object nbytes, object buff) except? -2:
    """send()'s nbytes: -1 for None, else the count (an int >= 0, one buffer);
    anything else goes to the shared checker, which raises as the pure
    backend does."""
    cdef int overflow = 0
    cdef long n
    if nbytes is None:
        return -1
    if type(nbytes) is int and type(buff) is not list:
        n = PyLong_AsLongAndOverflow(nbytes, &overflow)
        if n >= 0 and not overflow and n <= PY_SSIZE_T_MAX:
            return n
    return _check_send_nbytes(nbytes, buff)


cdef int fill_buffers(op_t *op, object buff, bint writable, Py_ssize_t nbytes=-1) except -1:
    """Pin buff (a buffer or a list of buffers) for the op's whole life (GIL
    held; on error the caller releases the op). nbytes >= 0: a send of the
    first nbytes bytes of one buffer (checked by _check_send_nbytes)."""
    cdef Py_ssize_t n, i
    cdef Py_buffer *v
    cdef iovec *iovs
    if type(buff) is list:
        n = len(<list>buff)
        if n == 0:
            if writable:
                raise EmptyBuffer(MSG_EMPTY_LIST)
            op.buffobj = <PyObject *>buff
            Py_INCREF(buff)
            op.iovcnt = 0
            return 0
        if <size_t>n > (<size_t>-1) // (sizeof(Py_buffer) + sizeof(iovec)):
            raise MemoryError()
        v = <Py_buffer *>PyMem_RawMalloc(n * (sizeof(Py_buffer) + sizeof(iovec)))
        if v == NULL:
            raise MemoryError()
        op.views = v
        iovs = <iovec *>(v + n)     # (released with the op: op.views != &op.view0)
        for i in range(n):
            get_view((<list>buff)[i], &v[i], writable)
            op.nviews = i + 1
            iovs[i].iov_base = v[i].buf
            iovs[i].iov_len = v[i].len
            op.total += v[i].len
        op.iov = iovs
        op.iovcnt = <int>n
    else:
        get_view(buff, &op.view0, writable)
        op.nviews = 1
        op.iov0.iov_base = op.view0.buf
        op.iov0.iov_len = op.view0.len
        op.iovcnt = 1
        op.total = op.view0.len
        if nbytes >= 0:
            if nbytes > op.view0.len:
                raise ValueError(MSG_SEND_NBYTES_RANGE.format(op.view0.len, nbytes))
            op.iov0.iov_len = nbytes
            op.total = nbytes
    op.buffobj = <PyObject *>buff
    Py_INCREF(buff)
    if op.total == 0:
        if writable:
            raise EmptyBuffer(MSG_EMPTY_RECV)
        op.iovcnt = 0
    else:
        advance(op, 0)   # skip leading zero-length items
    return 0


cdef inline int64_t to_ns(double seconds) noexcept nogil:
    """A checked timeout (>= 0 seconds) in ns: 0 for 0; at least 1 for any
    positive value (too small to measure fires at once, never means "off");
    -1 for a value beyond any deadline (>= NO_LIMIT_NS, math.inf included),
    which means no limit."""
    if seconds <= 0:
        return 0
    if not (seconds < NO_LIMIT_NS / 1e9):
        return -1
    cdef int64_t ns = <int64_t>(seconds * 1e9 + 0.5)
    return ns if ns > 0 else 1



# --- the posting fast path (issue 13) ---------------------------------------

cdef enum:
    # An op of at most this many bytes is queued and tried with the GIL kept:
    # its system call is a short non-blocking copy, cheaper than giving the
    # GIL away and taking it back (the lock order allows it: a thread holding
    # the GIL may block on any C lock). Bigger ones drop the GIL meanwhile.
    POST_WITH_GIL_MAX = 65536


cdef int post_queue_nogil(svc_t *s, conn_t *c, op_t *op, bint sending) noexcept nogil:
    """Queue op on c and run it at once when the socket is ready; 0, or why
    it was refused: 1 closed, 2 queue full, 3 a shutdown is pending or done.
    No C lock held on entry (takes c.lock); GIL held or not."""
    cdef opq_t *q = &c.sq if sending else &c.rq
    cdef oplist_t done
    cdef int rc = 0
    oplist_init(&done)
    goaio_lock(&c.lock)
    if c.closed:
        rc = 1
    elif sending and c.shut:
        rc = 3          # a shutdown is pending or done (core/halfclose.pxi)
    elif q.len >= q.max:
        rc = 2
    else:
        if op.kind == OP_SHUTDOWN:
            c.shut = 1
            c.shut_err = 0
        if q.timeout:
            op.deadline = goaio_now_ns() + q.timeout
            schedule_timer_locked(s, c, op.deadline)
        opq_push_locked(q, op)
        goaio_atomic_inc(&s.live_ops)
        if q.head == op:
            if sending:
                process_send_locked(s, c, &done)
            elif c.readable or c.eof or c.tls != NULL:
                process_recv_locked(s, c, &done)
    cq_push(s, &done)
    goaio_unlock(&c.lock)
    return rc


cdef inline bint post_keeps_gil(conn_t *c, op_t *op) noexcept nogil:
    """Whether op is small enough to be posted with the GIL kept (see
    POST_WITH_GIL_MAX); a share-buffer receive counts its pool's buffer size.
    Never on a TLS connection: its record layer runs without the GIL."""
    if c.tls != NULL:
        return 0
    if op.flags & OPF_NEEDBUF:
        return c.pool != NULL and c.pool.size <= POST_WITH_GIL_MAX
    return op.total <= POST_WITH_GIL_MAX


cdef extern from *:
    """
    /* CPython's socket object starts with its descriptor (Modules/socketmodule.h:
       PyObject_HEAD, then SOCKET_T sock_fd, an int on POSIX); checked at import
       against fileno() before it is relied on. */
    typedef struct { PyObject_HEAD int sock_fd; } goaio_sockobj_head;
    #define goaio_sock_fd(o) (((goaio_sockobj_head *)(o))->sock_fd)
    """
    int goaio_sock_fd(PyObject *o)

import socket as _socket_mod

cdef object _plain_socket_type = _socket_mod.socket


cdef bint _sock_fd_readable():
    """Whether a socket.socket's descriptor can be read from the object (the
    layout above) with fileno()'s answer, open and closed (at import)."""
    a, b = _socket_mod.socketpair()
    try:
        ok = (goaio_sock_fd(<PyObject *>a) == a.fileno() and
              goaio_sock_fd(<PyObject *>b) == b.fileno())
    finally:
        a.close()
        b.close()
    return ok and goaio_sock_fd(<PyObject *>a) == a.fileno() == -1


cdef bint _sock_fd_direct = _sock_fd_readable()


cdef inline int sock_fileno(object sock) except? -2:
    """sock.fileno() of a bound socket, without a method call for a plain
    socket.socket (a subclass may override fileno(): it is called)."""
    if _sock_fd_direct and type(sock) is _plain_socket_type:
        return goaio_sock_fd(<PyObject *>sock)
    return sock.fileno()
