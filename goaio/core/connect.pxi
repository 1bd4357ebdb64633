# core/connect.pxi -- svc.connect(): a non-blocking connect as a posted op, and the
# resolver thread.
#
# A pending connect is a crec_t: a conn_t (kind CK_CONNECT: registered so the
# poller reports its attempt under its id, timed by the heap; its rq holds the
# one OP_CONNECT op, c.fd is the socket of the attempt in progress or -1) plus
# the addresses still to try. Every step runs under c.lock without the GIL: an
# attempt (socket, bind local_address, connect), the poller's report
# (SO_ERROR), the timeout, the resolver's answer, the service's close; exactly
# one of them finishes it (connect_done_locked: c.closed = 1, c.retire = 1) and
# whoever then drops c.lock unregisters it (record_retire, core/listener.pxi).
#
# Numeric hosts and Unix paths start at once in the caller's thread; a host
# name goes to the service's resolver thread (socket.getaddrinfo, looked up at
# call time), started on first need and joined by svc.close(). One deadline
# covers the whole connect, resolution included. The connected socket travels
# in op.newfd and is bound when its result is made (make_new_conn_result_gil).

import collections as _collections
from goaio import _addresses        # address parsing shared with the pure backend


# connect errors the socket module words its own way (made in
# make_new_conn_result_gil, as the pure backend's)
cdef enum:
    CERR_LOCAL_FAMILY = -101     # OSError(EAFNOSUPPORT, "local_address is of another family")
    CERR_NO_ADDRESS = -102       # OSError(EADDRNOTAVAIL, "no address to connect to")
    CERR_UNIX_TOO_LONG = -103    # OSError("AF_UNIX path too long")


cdef struct addrs_t:
    goaio_sa_t *sa
    socklen_t *len       # 0: unusable (a Unix path too long)
    int n


cdef struct crec_t:
    conn_t c             # first: the registry and the timer heap see a conn_t
    addrs_t addrs        # owned; the addresses to try, in order
    int next             # index of the next one
    int family           # of the attempt in progress
    int first_err        # errno of the first failed attempt
    addrs_t local        # owned; local_address (one per family, for a name), n 0: none
    char tls             # a TLS connect: the handshake follows (core/tls_setup.pxi)
    char given           # svc._await_connect: the caller's socket (no TCP_NODELAY)


cdef inline void addrs_free(addrs_t *a) noexcept nogil:
    PyMem_RawFree(a.sa)
    PyMem_RawFree(a.len)
    a.sa = NULL
    a.len = NULL
    a.n = 0


cdef socklen_t sa_fill_gil(goaio_sa_t *sa, int fam, addr) except? 0:
    """Fill sa from a socket-module address of family fam: a Unix path, or a
    numeric (host, port[, flowinfo, scope_id]); its length, 0 if unusable."""
    if fam == goaio_af_unix():
        path = _os.fsencode(addr)
        return goaio_sa_unix(sa, path, len(path))
    host = addr[0].partition("%")[0].encode("ascii")
    flow, scope = (addr[2], addr[3]) if len(addr) >= 4 else (0, 0)
    return goaio_sa_inet(sa, fam, host, addr[1], flow, scope)


cdef int addrs_fill_gil(addrs_t *a, list addrs) except -1:
    """(family, address) pairs into a (GIL held; a is the caller's)."""
    cdef int i, n = len(addrs)
    a.sa = <goaio_sa_t *>PyMem_RawMalloc((n + 1) * sizeof(goaio_sa_t))
    a.len = <socklen_t *>PyMem_RawMalloc((n + 1) * sizeof(socklen_t))
    if a.sa == NULL or a.len == NULL:
        addrs_free(a)
        raise MemoryError()
    a.n = n
    for i in range(n):
        fam, addr = addrs[i]
        a.len[i] = sa_fill_gil(&a.sa[i], fam, addr)
    return 0


cdef int local_index(crec_t *cr, int fam) noexcept nogil:
    """Which local address an attempt of family fam binds: its index, -1 for
    none (no local_address), -2 when local_address has no such family."""
    cdef int j
    if cr.local.n == 0:
        return -1
    for j in range(cr.local.n):
        if cr.local.len[j] != 0 and goaio_family(&cr.local.sa[j]) == fam:
            return j
    return -2


cdef object connect_err_gil(int e):
    """The exception of a CERR_* code, or None for any other (GIL held)."""
    if e == CERR_LOCAL_FAMILY:
        return OSError(EAFNOSUPPORT, "local_address is of another family")
    if e == CERR_NO_ADDRESS:
        return OSError(EADDRNOTAVAIL, "no address to connect to")
    if e == CERR_UNIX_TOO_LONG:
        return OSError("AF_UNIX path too long")
    return None


cdef inline void record_err(crec_t *cr, int e) noexcept nogil:
    if cr.first_err == 0:
        cr.first_err = e


cdef void connect_done_locked(svc_t *s, crec_t *cr, int fd, int err, oplist_t *done) noexcept nogil:
    """Finish the connect: with the connected fd (err 0) or err (c.lock held)."""
    cdef conn_t *c = &cr.c
    cdef op_t *op = opq_pop_locked(&c.rq)
    if err == 0:
        if goaio_is_inet(cr.family) and not cr.given:
            goaio_set_nodelay(fd)
        op.newfd = fd
    if err == 0 and cr.tls:
        tls_setup_push_locked(s, op)    # its handshake first (core/tls_setup.pxi)
    else:
        finish_op_locked(c, op, err, done)
    addrs_free(&cr.addrs)
    addrs_free(&cr.local)
    if timer_remove_locked(s, c):   # its deadline leaves with it
        goaio_atomic_dec(&c.cref)   # (the record's own reference is held till it retires)
    c.fd = -1
    c.closed = 1
    c.retire = 1


cdef void drop_attempt_locked(svc_t *s, crec_t *cr) noexcept nogil:
    """Close the socket of the attempt in progress, if any (c.lock held)."""
    cdef int fd = cr.c.fd
    if fd >= 0:
        cr.c.fd = -1
        poller_del(&s.poller, fd)
        close(fd)


cdef void try_next_locked(svc_t *s, crec_t *cr, oplist_t *done) noexcept nogil:
    """Start the next attempt; finish with the first error when none is left
    (c.lock held)."""
    cdef conn_t *c = &cr.c
    cdef int i, j, fd, e, fam
    while cr.next < cr.addrs.n:
        i = cr.next
        cr.next += 1
        if cr.addrs.len[i] == 0:
            record_err(cr, CERR_UNIX_TOO_LONG)
            continue
        fam = goaio_family(&cr.addrs.sa[i])
        j = local_index(cr, fam)
        if j == -2:
            record_err(cr, CERR_LOCAL_FAMILY)    # only destinations of its family are tried
            continue
        fd = goaio_socket(fam)
        if fd < 0:
            record_err(cr, errno)
            continue
        e = poller_prepare_fd(fd)
        if e == 0 and j >= 0 and goaio_bind(fd, &cr.local.sa[j], cr.local.len[j]) < 0:
            e = errno
        if e == 0:
            cr.family = fam
            if goaio_connect(fd, &cr.addrs.sa[i], cr.addrs.len[i]) == 0:
                connect_done_locked(s, cr, fd, 0, done)
                return
            e = errno
            if goaio_connect_pending(e, fam):
                e = poller_add(&s.poller, fd, c.id)
                if e == 0:
                    c.fd = fd
                    return
        close(fd)
        record_err(cr, e)
    connect_done_locked(s, cr, -1, cr.first_err if cr.first_err else CERR_NO_ADDRESS, done)


cdef void connect_given_locked(svc_t *s, crec_t *cr, int fd, oplist_t *done) noexcept nogil:
    """svc._await_connect: fd's connect is in progress already: wait for its
    end as for an attempt of our own (c.lock held)."""
    cdef int e = poller_prepare_fd(fd)
    if e == 0:
        e = poller_add(&s.poller, fd, cr.c.id)
    if e == 0:
        cr.c.fd = fd
        return
    close(fd)
    connect_done_locked(s, cr, -1, e, done)


cdef void connect_event_locked(svc_t *s, crec_t *cr, oplist_t *done) noexcept nogil:
    """The attempt in progress became writable or failed (c.lock held)."""
    cdef int fd = cr.c.fd
    cdef int e
    if fd < 0:
        return
    e = goaio_sock_error(fd)
    if e == 0 and not goaio_has_peer(fd):
        return              # still in progress (a stale report)
    cr.c.fd = -1
    poller_del(&s.poller, fd)
    if e == 0:
        connect_done_locked(s, cr, fd, 0, done)
        return
    close(fd)
    record_err(cr, e)
    try_next_locked(s, cr, done)


cdef void connect_expire_locked(svc_t *s, crec_t *cr, int64_t now, oplist_t *done) noexcept nogil:
    """The heap says the deadline may have passed (c.lock held)."""
    cdef op_t *op = cr.c.rq.head
    if op == NULL or op.deadline == 0:
        return
    if op.deadline > now:
        schedule_timer_locked(s, &cr.c, op.deadline)
        return
    drop_attempt_locked(s, cr)
    connect_done_locked(s, cr, -1, ERR_CTIMEOUT, done)


cdef void connect_abandon_gil(svc_t *s, conn_t *c):
    """svc.close(): drop a pending connect, make no result (GIL held, no C lock;
    the caller holds a reference)."""
    cdef op_t *op = NULL
    cdef bint retire
    goaio_lock(&c.lock)
    if not c.closed:
        if c.rq.head != NULL:
            op = opq_pop_locked(&c.rq)
        drop_attempt_locked(s, <crec_t *>c)
        addrs_free(&(<crec_t *>c).addrs)
        addrs_free(&(<crec_t *>c).local)
        if timer_remove_locked(s, c):
            goaio_atomic_dec(&c.cref)
        c.closed = 1
        c.retire = 1
    retire = take_retire_locked(c)
    goaio_unlock(&c.lock)
    if retire:
        record_retire(s, c)
    if op != NULL:
        goaio_atomic_sub(&s.live_ops, 1)
        op_release_gil(op, False)


cdef svc_connect(AIOService svc, context, address, timeout, local_address, option, options, params,
                 int given_fd=-1):
    """svc.connect(...) (GIL held, no C lock); given_fd >= 0: svc._await_connect
    (address, timeout, local_address, params None), which owns given_fd."""
    cdef svc_t *s = svc.s
    cdef crec_t *cr
    cdef op_t *op
    cdef oplist_t done
    cdef addrs_t a
    cdef int err
    cdef int64_t ns = -1
    cdef bint retire = False
    if s.closed:
        if given_fd >= 0:
            close(given_fd)
        raise ServiceClosed(MSG_SERVICE_CLOSED)
    if given_fd >= 0:
        target = None
        addrs = None
    else:
        target = _addresses.parse(address)
    local = None if local_address is None else _addresses.parse(local_address, "local_address")
    if timeout is not None:
        ns = to_ns(_common.check_timeout(timeout))     # -1: no limit
    opt = _make_option(option, options)
    name = None
    local_name = None
    locals_ = None
    if local is not None:
        if local[0] == "unix":
            locals_ = [(goaio_af_unix(), local[1])]
        else:
            locals_ = _addresses.numeric(local[1], local[2], local[3])
            if locals_ is None:
                local_name = (local[1], local[2])     # resolved off the caller's thread too
    if target is None:
        pass
    elif target[0] == "unix":
        addrs = [(goaio_af_unix(), target[1])]
    else:
        addrs = _addresses.numeric(target[1], target[2], target[3])
        if addrs is None or local_name is not None:
            addrs = None
            name = (target[1], target[2])
    cr = <crec_t *>PyMem_RawMalloc(sizeof(crec_t))
    if cr == NULL:
        if given_fd >= 0:
            close(given_fd)
        raise MemoryError()
    memset(cr, 0, sizeof(crec_t))
    cr.given = given_fd >= 0
    goaio_lock_init(&cr.c.lock)
    cr.c.cref = 1
    cr.c.kind = CK_CONNECT
    cr.c.heap_idx = -1
    cr.c.fd = -1
    cr.c.rq.max = 1
    try:
        if locals_ is not None:
            addrs_fill_gil(&cr.local, locals_)
        if addrs is not None:
            addrs_fill_gil(&cr.addrs, addrs)
    except BaseException:
        addrs_free(&cr.local)
        addrs_free(&cr.addrs)
        conn_decref_nogil(&cr.c)
        raise
    op = op_new(OP_CONNECT, False)
    op.newfd = -1
    op.context = <PyObject *>context
    Py_INCREF(context)
    spec = (svc, opt) if params is None else (svc, opt, params)
    cr.tls = params is not None
    op.buffobj = <PyObject *>spec
    Py_INCREF(spec)
    if ns >= 0:
        op.deadline = goaio_now_ns() + ns
        cr.c.rq.timeout = 1         # (read by stats: the op has a deadline)
    # registered, and the first attempt made, only while the service is open
    # (as bind): close() waits for us, then drops the connect
    if not poller_use_begin(s, True):
        addrs_free(&cr.local)
        addrs_free(&cr.addrs)
        conn_decref_nogil(&cr.c)
        op_release_gil(op, False)
        if given_fd >= 0:
            close(given_fd)
        raise ServiceClosed(MSG_SERVICE_CLOSED)
    with nogil:
        err = reg_add(s, &cr.c)
        if err:
            poller_use_end(s)
    if err:
        if given_fd >= 0:
            close(given_fd)
        addrs_free(&cr.local)
        addrs_free(&cr.addrs)
        conn_decref_nogil(&cr.c)
        op_release_gil(op, False)
        raise _oserror(err)
    if name is not None:
        goaio_atomic_inc(&cr.c.cref)    # the resolver's reference
    goaio_atomic_inc(&s.live_ops)
    oplist_init(&done)
    with nogil:
        goaio_lock(&cr.c.lock)
        opq_push_locked(&cr.c.rq, op)
        if op.deadline:
            schedule_timer_locked(s, &cr.c, op.deadline)
        if given_fd >= 0:
            connect_given_locked(s, cr, given_fd, &done)
            cq_push(s, &done)
        elif name is None:
            try_next_locked(s, cr, &done)
            cq_push(s, &done)
        retire = take_retire_locked(&cr.c)
        goaio_unlock(&cr.c.lock)
        poller_use_end(s)
        if retire:
            record_retire(s, &cr.c)
    if s.tls_setup_head != NULL:
        tls_setup_run_nogil(s)      # connected at once (a Unix path): the handshake starts here
    if name is not None:
        try:
            svc_resolver(svc).submit(<size_t>cr, name[0], name[1], local_name)
        except BaseException:
            connect_abandon_gil(s, &cr.c)
            conn_decref_nogil(&cr.c)
            raise


cdef close_lifecycle(AIOService svc):
    """svc.close(), once the threads are gone: close the listeners (their
    accepts' results are discarded with the rest), stop the resolver, drop the
    pending connects (GIL held, no C lock)."""
    cdef svc_t *s = svc.s
    cdef conn_t **recs = NULL
    cdef uint32_t i, n = 0
    for ln in list(svc._listeners):
        try:
            (<Listener>ln).close()
        except Exception:
            pass
    r, svc._resolver = svc._resolver, None
    if r is not None:
        r.stop()
    with nogil:
        # (no Python under reg_lock: a finaliser run by the GC could want it)
        goaio_lock(&s.reg_lock)
        recs = <conn_t **>PyMem_RawMalloc((s.nslots + 1) * sizeof(conn_t *))
        if recs != NULL:
            for i in range(s.nslots):
                if s.slots[i] != NULL and s.slots[i].kind == CK_CONNECT and not s.slots[i].closed:
                    goaio_atomic_inc(&s.slots[i].cref)
                    recs[n] = s.slots[i]
                    n += 1
        goaio_unlock(&s.reg_lock)
    for i in range(n):
        connect_abandon_gil(s, recs[i])
        conn_decref_nogil(recs[i])
    PyMem_RawFree(recs)
