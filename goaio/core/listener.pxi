# core/listener.pxi -- listeners: svc.listen(), ln.accept(context) as a posted op,
# and the dispatch of poller events and timers to the records that are not
# connections (listeners here, connects in core/connect.pxi).
#
# A listener is an lrec_t: a conn_t (kind CK_LISTENER: registered, polled and
# timed like a connection; its rq holds the pending OP_ACCEPT ops) plus its
# back-off state. accept() runs under c.lock without the GIL, like a receive;
# the accepted fd travels in op.newfd and is bound (socket.socket + svc.bind,
# the listener's options) when its result is made, with the GIL
# (make_new_conn_result_gil). A result nobody collects closes the fd
# (op_release_gil).
#
# Out of descriptors (EMFILE, ENFILE, ENOBUFS, ENOMEM) the first pending accept
# completes with the error and the listener is paused: no accept() call until
# the timer heap resumes it, BACKOFF_MIN_NS later (doubling to BACKOFF_MAX_NS,
# reset by a success). So a readable listener with no fd to give makes no
# thread spin, and accepting resumes by itself once fds are free.

import socket as _socket
from goaio._errors import ConnectTimeout, Cancelled
from goaio import _addresses        # the socket-level steps shared with the pure backend

cdef str MSG_LISTENER_CLOSED = _messages.LISTENER_CLOSED
cdef str MSG_CONNECT_TIMEOUT = _messages.CONNECT_TIMEOUT
cdef str MSG_CANCELLED = _messages.CANCELLED
cdef str MSG_ACCEPTQ_FULL = _messages.ACCEPTQ_FULL
cdef str MSG_SEND_AFTER_SHUTDOWN = _messages.SEND_AFTER_SHUTDOWN
cdef int MAX_PENDING_ACCEPTS = _messages.MAX_PENDING_ACCEPTS
cdef int TLS_ACCEPT_AHEAD = _messages.TLS_ACCEPT_AHEAD
cdef int64_t BACKOFF_MIN_NS = 100000000      # as the pure backend's 0.1 s .. 1 s
cdef int64_t BACKOFF_MAX_NS = 1000000000


cdef struct lrec_t:
    conn_t c             # first: the registry and the timer heap see a conn_t
    char inet            # TCP: skip connections reset in the queue, set TCP_NODELAY
    char paused          # backing off after EMFILE & co.
    char tls             # a TLS listener: accepts complete after the handshake
    int hs_count         # TLS: connections taken ahead and not handed out yet
    op_t *ready_head     # TLS: their ops whose handshake ended, waiting for an accept
    op_t *ready_tail
    PyObject *spec       # owned (TLS): (service, option, params) for those connections
    int64_t backoff_ns
    int64_t resume_at


cdef void process_accept_locked(svc_t *s, lrec_t *lr, oplist_t *done) noexcept nogil:
    """Accept while accepts are pending and the kernel has connections (c.lock held)."""
    cdef conn_t *c = &lr.c
    cdef int fd, e
    cdef op_t *op
    while (c.rq.head != NULL or lr.tls) and not c.closed and not lr.paused and c.readable:
        if lr.tls and lr.hs_count >= c.rq.len + TLS_ACCEPT_AHEAD:
            return          # enough taken ahead (core/tls.pxi)
        fd = goaio_accept(c.fd)
        if fd >= 0:
            if lr.inet:
                if not goaio_has_peer(fd):
                    close(fd)       # reset while it waited in the queue: skip it
                    continue
                goaio_set_nodelay(fd)
            lr.backoff_ns = 0
            if lr.tls:
                # its handshake first, in parallel with the others (core/tls.pxi)
                op = tls_inner_op_nogil(c, fd)
                if op == NULL:
                    close(fd)
                    return
                lr.hs_count += 1
                tls_setup_push_locked(s, op)
                continue
            op = opq_pop_locked(&c.rq)
            op.newfd = fd
            finish_op_locked(c, op, 0, done)
            continue
        e = errno
        if e == EINTR or goaio_accept_aborted(e):
            continue
        if goaio_would_block(e):
            c.readable = 0
            return
        if c.rq.head != NULL:
            finish_op_locked(c, opq_pop_locked(&c.rq), e, done)
        if goaio_accept_exhausted(e):
            lr.backoff_ns = lr.backoff_ns * 2 if lr.backoff_ns else BACKOFF_MIN_NS
            if lr.backoff_ns > BACKOFF_MAX_NS:
                lr.backoff_ns = BACKOFF_MAX_NS
            lr.paused = 1
            lr.resume_at = goaio_now_ns() + lr.backoff_ns
            schedule_timer_locked(s, c, lr.resume_at)
            return


# --- records that are not connections: events, timers, retiring -------------------

cdef inline bint take_retire_locked(conn_t *c) noexcept nogil:
    """True once for a finished connect record (c.lock held): the caller then
    calls record_retire after dropping c.lock."""
    if c.retire:
        c.retire = 0
        return True
    return False


cdef void record_retire(svc_t *s, conn_t *c) noexcept nogil:
    """Unregister a finished connect record and drop its own reference (no lock
    held; the caller holds another reference or is done with c)."""
    reg_remove(s, c)
    conn_decref_nogil(c)


cdef void record_event(svc_t *s, conn_t *c, uint32_t flags, oplist_t *done) noexcept nogil:
    """The poller reported a listener or a connect in progress (no lock held;
    the caller holds a reference)."""
    cdef bint retire
    goaio_lock(&c.lock)
    if not c.closed:
        if c.kind == CK_LISTENER:
            if flags & (PF_READ | PF_HUP):
                c.readable = 1
            process_accept_locked(s, <lrec_t *>c, done)
        else:
            connect_event_locked(s, <crec_t *>c, done)
    cq_push(s, done, True)
    retire = take_retire_locked(c)
    goaio_unlock(&c.lock)
    if retire:
        record_retire(s, c)


cdef void record_expire(svc_t *s, conn_t *c, int64_t at, int64_t now, oplist_t *done) noexcept nogil:
    """A timer entry of a listener (end of a back-off) or a connect (its
    timeout) is due (no lock held; the caller holds the entry's reference)."""
    cdef bint retire
    cdef lrec_t *lr
    goaio_lock(&c.lock)
    if not c.closed and c.timer_at == at:
        c.timer_at = 0
        if c.kind == CK_LISTENER:
            lr = <lrec_t *>c
            if lr.paused:
                if lr.resume_at <= now:
                    lr.paused = 0
                    process_accept_locked(s, lr, done)
                else:
                    schedule_timer_locked(s, c, lr.resume_at)
        else:
            connect_expire_locked(s, <crec_t *>c, now, done)
        cq_push(s, done, True)
    retire = take_retire_locked(c)
    goaio_unlock(&c.lock)
    if retire:
        record_retire(s, c)


cdef AIOResult make_new_conn_result_gil(svc_t *s, op_t *op):
    """The result of an accept or a connect: bind the new socket with the
    options in op.buffobj ((service, option)); frees the op (GIL held, no C lock)."""
    cdef AIOResult r = AIOResult.__new__(AIOResult)
    r.context = <object>op.context
    r.buff = None
    r.bytes_transferred = 0
    r.conn = None
    if op.flags & OPF_TLSCONN:
        # a TLS accept/connect: bound at setup, completed by its handshake
        r.err = make_err_gil(op)
        if r.err is None:
            r.conn = <object>op.pyconn
            if op.kind == OP_ACCEPT:
                s.accepted += 1
        elif op.pyconn != NULL:
            (<AIOConn><object>op.pyconn)._close(None)   # a failed TLS accept closes its socket
        op_release_gil(op, False)
        return r
    if op.err != 0 or op.newfd < 0:
        r.err = connect_err_gil(op.err)
        if r.err is None:
            r.err = make_err_gil(op)
        op_release_gil(op, False)
        return r
    svc, option = <tuple>op.buffobj
    try:
        fd = op.newfd
        op.newfd = -1                   # the connection owns it now (closed if the bind fails)
        r.conn = conn_bind_fd_gil(<AIOService>svc, fd, option)    # core/conn.pxi
        if op.kind == OP_ACCEPT:
            s.accepted += 1
    except Exception as e:
        r.err = e
    finally:
        op_release_gil(op, False)
    return r


# --- the Python side ---------------------------------------------------------------

cdef listener_from_socket(AIOService svc, sock, option, created, params):
    """Register a listening socket (non-blocking already) as a new Listener."""
    cdef Listener ln = Listener.__new__(Listener)
    cdef lrec_t *lr = <lrec_t *>PyMem_RawMalloc(sizeof(lrec_t))
    cdef int err
    if lr == NULL:
        raise MemoryError()
    memset(lr, 0, sizeof(lrec_t))
    goaio_lock_init(&lr.c.lock)
    lr.c.cref = 1
    lr.c.kind = CK_LISTENER
    lr.c.heap_idx = -1
    lr.c.fd = sock.fileno()
    lr.c.readable = 1               # the first accept tries at once
    lr.c.rq.max = MAX_PENDING_ACCEPTS
    lr.inet = sock.family in (_socket.AF_INET, _socket.AF_INET6)
    ln.c = &lr.c
    ln._svc = svc
    ln._sock = sock
    ln._spec = (svc, option)
    lr.tls = params is not None
    if lr.tls:
        spec = (svc, option, params)
        Py_INCREF(spec)
        lr.spec = <PyObject *>spec      # (dropped with the record: conn_decref_nogil)
    ln._created = created
    ln._address = sock.getsockname()
    # registered and added to the poller only while the service is open (as bind)
    if not poller_use_begin(svc.s, True):
        lr.c.closed = 1
        raise ServiceClosed(MSG_SERVICE_CLOSED)
    with nogil:
        err = reg_add(svc.s, &lr.c)
        if err == 0:
            err = poller_add(&svc.s.poller, lr.c.fd, lr.c.id)
            if err:
                reg_remove(svc.s, &lr.c)
        poller_use_end(svc.s)
    if err:
        lr.c.closed = 1
        raise _oserror(err)
    svc._listeners.add(ln)
    if svc.s.closed:
        ln._sock = None             # (the caller closes the socket)
        ln.close()
        raise ServiceClosed(MSG_SERVICE_CLOSED)
    return ln


cdef svc_listen(AIOService svc, address, backlog, reuse_port, option, options, params):
    """svc.listen(...) (GIL held): bind and listen at the call (errors raised),
    then register the listener."""
    if svc.s.closed:
        raise ServiceClosed(MSG_SERVICE_CLOSED)
    opt = _make_option(option, options)
    if isinstance(address, _socket.socket):
        _addresses.check_listening(address)
        sock, created = address, None
    else:
        _common._check_int("backlog", backlog, 0)
        if reuse_port and not hasattr(_socket, "SO_REUSEPORT"):
            raise ValueError("reuse_port is not supported here")
        sock, created = _addresses.listening_socket(address, backlog, reuse_port)
    fd = sock.fileno()
    try:
        # one owner per socket: the registry of bound sockets holds listeners too
        _bound_fds.add(fd)
    except ValueError:
        if sock is not address:
            _addresses.unlink_if_same(created)
            sock.close()
        raise ValueError("the socket is already listening in a service") from None
    try:
        sock.setblocking(False)
        return listener_from_socket(svc, sock, opt, created, params)
    except BaseException:
        _bound_fds.discard(fd)
        if sock is not address:
            _addresses.unlink_if_same(created)
            sock.close()
        raise


@cython.final
cdef class Listener:
    """A listening socket of an AIOService; post accept(context) on it."""
    cdef conn_t *c
    cdef AIOService _svc
    cdef object _sock
    cdef tuple _spec             # (service, option): what accepted sockets are bound with
    cdef object _created         # (path, (dev, ino)) of a Unix path listen() made, or None
    cdef object _address
    cdef object __weakref__

    def __init__(self):
        raise TypeError("Listener objects are made by AIOService.listen()")

    def __dealloc__(self):
        if self.c != NULL:
            conn_decref_nogil(self.c)
            self.c = NULL

    @property
    def address(self):
        """getsockname() of the listening socket (None once closed)."""
        return None if self.c.closed else self._address

    @property
    def fd(self):
        return -1 if self.c.closed else self.c.fd

    @property
    def closed(self):
        return bool(self.c.closed)

    def __repr__(self):
        if self.c.closed:
            return f"<goaio.Listener closed ({BACKEND_NAME})>"
        return f"<goaio.Listener {self._address!r} fd={self.c.fd} ({BACKEND_NAME})>"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def accept(self, context):
        """Accept one connection: completes with res.conn bound with the
        listener's options."""
        cdef conn_t *c = self.c
        cdef svc_t *s = self._svc.s
        cdef op_t *op
        cdef oplist_t done
        cdef int rc = 0
        if s.closed:
            raise ServiceClosed(MSG_SERVICE_CLOSED)
        if c.closed:
            raise ConnClosed(MSG_LISTENER_CLOSED)
        op = op_new(OP_ACCEPT, False)
        op.newfd = -1
        op.context = <PyObject *>context
        Py_INCREF(context)
        op.buffobj = <PyObject *>self._spec
        Py_INCREF(self._spec)
        oplist_init(&done)
        with nogil:
            goaio_lock(&c.lock)
            if c.closed:
                rc = 1
            elif c.rq.len >= c.rq.max:
                rc = 2
            else:
                goaio_atomic_inc(&s.live_ops)
                if (<lrec_t *>c).ready_head != NULL:
                    tls_accept_ready_locked(<lrec_t *>c, op, &done)     # a handshake already ended
                else:
                    opq_push_locked(&c.rq, op)
                process_accept_locked(s, <lrec_t *>c, &done)
                cq_push(s, &done)
            goaio_unlock(&c.lock)
        if rc:
            op_release_gil(op, False)
            if rc == 1:
                raise ConnClosed(MSG_LISTENER_CLOSED)
            raise Busy(MSG_ACCEPTQ_FULL)
        if s.tls_setup_head != NULL:
            tls_setup_run_nogil(s)      # accepted at once: its handshake starts here

    def close(self, reason=None):
        """Close the listener: pending accepts complete with `reason` (or a fresh
        ConnClosed); a Unix path listen() created is unlinked."""
        cdef conn_t *c = self.c
        cdef svc_t *s = self._svc.s
        cdef oplist_t done
        cdef op_t *op
        cdef op_t *ready
        if reason is not None and not isinstance(reason, BaseException):
            raise TypeError(MSG_REASON_TYPE)
        oplist_init(&done)
        goaio_lock(&c.lock)     # GIL held: fine, no c.lock holder waits for it
        if c.closed:
            goaio_unlock(&c.lock)
            return
        c.closed = 1
        opq_fail_locked(c, &c.rq, ERR_LCLOSED if reason is None else ERR_OBJ, &done)
        if reason is not None:
            op = done.head
            while op != NULL:
                op.errobj = <PyObject *>reason
                Py_INCREF(reason)
                op = op.next
        cq_push(s, &done)
        if timer_remove_locked(s, c):       # a back-off's entry leaves with it
            goaio_atomic_dec(&c.cref)       # (the Listener still holds one)
        ready = (<lrec_t *>c).ready_head
        (<lrec_t *>c).ready_head = (<lrec_t *>c).ready_tail = NULL
        goaio_unlock(&c.lock)
        tls_listener_closed_gil(s, c, ready)    # its TLS connections not handed out (core/tls_setup.pxi)
        with nogil:
            reg_remove(s, c)
            if poller_use_begin(s, False):  # (never a closed poller)
                poller_del(&s.poller, c.fd)
                poller_use_end(s)
        self._svc._listeners.discard(self)
        _bound_fds.discard(c.fd)
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        _addresses.unlink_if_same(self._created)
