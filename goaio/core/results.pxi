# core/results.pxi -- AIOResult, and turning a completed op into one.

@cython.final
@cython.freelist(64)
cdef class AIOResult:
    """The completion of one posted operation."""
    # Read through member descriptors (see _result_members below), as the
    # pure backend's __slots__ are: the interpreter reads such a field
    # straight from the object once an attribute access is specialised.
    cdef public object conn
    cdef public object context
    cdef public object buff
    cdef public object bytes_transferred     # an int
    cdef public object err

    def __init__(self, conn, context, buff, bytes_transferred, err):
        self.conn = conn
        self.context = context
        self.buff = buff
        self.bytes_transferred = bytes_transferred
        self.err = err

    def __repr__(self):
        # read as Python reads them: a member a user deleted is an AttributeError
        r = <object>self
        return (f"<AIOResult context={r.context!r} bytes_transferred={r.bytes_transferred}"
                f" err={r.err!r}>")


cdef extern from "structmember.h":
    ctypedef struct PyMemberDef:
        const char *name
        int type
        Py_ssize_t offset
        int flags
        const char *doc
    int T_OBJECT_EX
    object PyDescr_NewMember(PyTypeObject_d *t, PyMemberDef *m)

cdef extern from "Python.h":
    ctypedef struct PyTypeObject_d "PyTypeObject":
        PyObject *tp_dict
        Py_ssize_t tp_basicsize
    void PyType_Modified(PyTypeObject_d *t)


cdef PyMemberDef _result_members[5]


cdef int result_members_init() except -1:
    """Replace AIOResult's field properties by member descriptors (at import).

    Cython makes a `cdef public` field a getset property, which CPython's
    specialising interpreter cannot read inline; a T_OBJECT_EX member (what
    __slots__ makes) it reads straight from the object (LOAD_ATTR_SLOT): the
    five reads of a result cost a load each instead of a descriptor call."""
    cdef PyTypeObject_d *t = <PyTypeObject_d *>AIOResult
    cdef Py_ssize_t offs[5]
    cdef const char *names[5]
    cdef Py_ssize_t off
    cdef int i
    cdef char *base
    if t.tp_dict == NULL:
        return 0
    names[0] = "conn"
    names[1] = "context"
    names[2] = "buff"
    names[3] = "bytes_transferred"
    names[4] = "err"
    # where each field lives: found by value (Cython names the struct, not us)
    marks = [object() for i in range(5)]
    r = AIOResult(*marks)
    base = <char *><PyObject *>r
    for i in range(5):
        offs[i] = 0
        off = sizeof(PyObject)
        while off + <Py_ssize_t>sizeof(PyObject *) <= t.tp_basicsize:
            if (<PyObject **>(base + off))[0] == <PyObject *>marks[i]:
                offs[i] = off
            off += sizeof(PyObject *)
        if offs[i] == 0:
            return 0        # not found: keep Cython's properties
    d = <dict><object>t.tp_dict
    for i in range(5):
        _result_members[i].name = names[i]
        _result_members[i].type = T_OBJECT_EX
        _result_members[i].offset = offs[i]
        _result_members[i].flags = 0
        _result_members[i].doc = NULL
        d[(<bytes>names[i]).decode()] = PyDescr_NewMember(t, &_result_members[i])
    PyType_Modified(t)
    return 0


result_members_init()


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
    cdef stash_t *st = op_stash(op)
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
    if op.views != &op.view0 and st == NULL:
        PyMem_RawFree(op.views)     # a list's views and iovecs (core/post.pxi)
    op_free_gil(op)                 # core/post.pxi


cdef extern from *:
    """
    #ifdef Py_GIL_DISABLED
    #define GOAIO_COUNT_CACHE 0
    #else
    #define GOAIO_COUNT_CACHE 1
    #endif
    """
    int GOAIO_COUNT_CACHE

# The int object of the last byte count handed over, reused while the count
# repeats (a stream of equal messages: 16 KiB is no small int, so each result
# would make and free one). The GIL guards it; none on a build without a GIL.
cdef Py_ssize_t _last_count = 0
cdef object _last_count_obj = 0


cdef inline object count_obj_gil(Py_ssize_t n):
    """The int n, the cached object when n repeats (GIL held)."""
    global _last_count, _last_count_obj
    if not GOAIO_COUNT_CACHE:
        return n
    if n != _last_count:
        _last_count_obj = n
        _last_count = n
    return _last_count_obj


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
    r.bytes_transferred = count_obj_gil(op.done)
    r.err = make_err_gil(op)
    if ok and (op.flags & OPF_POOLBUF):
        # the user owns it now (r.buff holds the reference), resizable again
        PyBuffer_Release(&op.conn.pool.views[op.pool_idx])
        op.flags &= ~OPF_POOLBUF
        op.buffobj = NULL
    op_release_gil(op, not ok)
    return r

