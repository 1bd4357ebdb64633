# core/conn.pxi -- AIOConn: posting onto a connection's queues, its timeouts,
# and close (docs/architecture.md has the connection and op states).

@cython.final
cdef class AIOConn:
    """A socket bound to an AIOService; post recv/recv_full/send on it."""
    cdef conn_t *c
    cdef AIOService _svc
    cdef object _sock
    cdef public object user_data
    cdef dict _shared_errs       # key -> the exception a failed send shares with a shutdown
    cdef object _peername        # getpeername() read at bind (core/halfclose.pxi)
    cdef object _tls_info        # conn.tls, once asked for (core/tls_setup.pxi)
    cdef object __weakref__

    def __init__(self):
        raise TypeError(MSG_NOT_MADE_BY_BIND)

    def __dealloc__(self):
        if self.c != NULL:
            conn_decref_nogil(self.c)
            self.c = NULL

    def __del__(self):
        if self.c != NULL and not self.c.closed:
            # Taken out of the service first (no GIL release before this), so
            # svc.close() can never see a dying connection.
            self.c.pyobj = NULL
            fd = self.c.fd
            self._close(None)
            # A connection of a service being closed is not leaked: the
            # service closes it anyway (results dropped meanwhile, say).
            if not self._svc.s.closed:
                _warnings.warn(f"unclosed goaio connection fd={fd}", ResourceWarning, source=self)

    def __repr__(self):
        return f"<goaio.AIOConn {'closed' if self.c.closed else f'fd={self.c.fd}'} ({BACKEND_NAME})>"

    @property
    def fd(self):
        """The socket's fd; -1 once the connection is closed."""
        return -1 if self.c.closed else self.c.fd

    @property
    def closed(self):
        return bool(self.c.closed)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    cdef inline int _check_open(self) except -1:
        if self._svc.s.closed:
            raise ServiceClosed(MSG_SERVICE_CLOSED)
        if self.c.closed:
            raise ConnClosed(MSG_CONN_CLOSED)
        if sock_fileno(self._sock) != self.c.fd:     # (core/post.pxi)
            # The user closed the socket behind our back: the number may
            # belong to another file now, which must never see our IO.
            self._close(_oserror(EBADF))
            raise ConnClosed(MSG_CONN_CLOSED)
        return 0

    cdef bint _evict_if_stale(self, int fd):
        """Close this connection (pending ops: OSError(EBADF)) if its socket
        no longer owns fd; True when it did (GIL held, no C lock)."""
        if self.c.closed or self.c.fd != fd or self._sock.fileno() == fd:
            return False
        self._close(_oserror(EBADF))
        return True

    cdef object _post(self, op_t *op, object context):
        """Queue op and run it at once when the socket is ready (GIL held, no
        C lock; takes c.lock without the GIL)."""
        cdef conn_t *c = self.c
        cdef svc_t *s = self._svc.s
        cdef bint sending = op.kind == OP_SEND or op.kind == OP_SHUTDOWN or op.kind == OP_STARTTLS
        cdef int rc
        op.conn = c
        op.context = <PyObject *>context
        Py_INCREF(context)
        op.pyconn = <PyObject *>self
        Py_INCREF(self)
        if post_keeps_gil(c, op):       # core/post.pxi
            rc = post_queue_nogil(s, c, op, sending)
        else:
            with nogil:
                rc = post_queue_nogil(s, c, op, sending)
        if s.closed == SVC_CLOSED:
            discard_queued_gil(s)       # a callback closed the service meanwhile
        if rc:
            op_release_gil(op, False)
            if rc == 1:
                raise ConnClosed(MSG_CONN_CLOSED)
            if rc == 3:
                raise BrokenPipeError(MSG_SEND_AFTER_SHUTDOWN)
            raise Busy(MSG_SENDQ_FULL if sending else MSG_RECVQ_FULL)

    def recv(self, context, buff=None):
        """Read some bytes into buff (or a share buffer when buff is None)."""
        cdef op_t *op
        self._check_open()
        op = op_new(OP_RECV, buff is not None or self.c.share_buff == NULL)
        try:
            if buff is None:
                if self.c.share_buff != NULL:
                    op.flags = OPF_NEEDBUF | OPF_NONEBUF
                else:
                    op.flags = OPF_NONEBUF
                    fill_buffers(op, bytearray(DEFAULT_RECV_BUFF_SIZE), True)
            else:
                fill_buffers(op, buff, True)
        except BaseException:
            op_release_gil(op, False)
            raise
        self._post(op, context)

    def recv_full(self, context, buff):
        """Fill buff completely (or fail with EOF, an error or a timeout)."""
        cdef op_t *op
        self._check_open()
        if buff is None:
            raise TypeError(MSG_RECV_FULL_NEEDS_BUFFER)
        op = op_new(OP_RECV_FULL)
        try:
            fill_buffers(op, buff, True)
        except BaseException:
            op_release_gil(op, False)
            raise
        self._post(op, context)

    def send(self, context, buff, *, nbytes=None):
        """Write every byte of buff (a bytes-like object or a list of them), or
        its first `nbytes` bytes (one buffer)."""
        cdef op_t *op
        cdef Py_ssize_t n
        self._check_open()
        n = send_nbytes(nbytes, buff)        # core/post.pxi
        op = op_new(OP_SEND)
        try:
            fill_buffers(op, buff, False, n)
        except BaseException:
            op_release_gil(op, False)
            raise
        self._post(op, context)

    cdef _set_timeout(self, seconds, opq_t *q):
        """Set q's timeout; every op pending in q gets the new deadline (GIL
        held, no C lock; takes c.lock without the GIL)."""
        cdef conn_t *c = self.c
        cdef int64_t ns = to_ns(_common.check_conn_timeout(seconds))
        cdef int64_t at
        cdef op_t *op
        if ns < 0:
            ns = 0          # beyond any deadline: no limit
        with nogil:
            pthread_mutex_lock(&c.lock)
            at = goaio_now_ns() + ns if ns else 0
            q.timeout = ns
            op = q.head
            while op != NULL:
                op.deadline = at
                op = op.next
            if at and not c.closed and q.head != NULL:
                schedule_timer_locked(self._svc.s, c, at)
            pthread_mutex_unlock(&c.lock)

    def set_recv_timeout(self, seconds):
        """Receives must complete within `seconds` (None or 0: no limit)."""
        self._set_timeout(seconds, &self.c.rq)

    def set_send_timeout(self, seconds):
        """Sends must complete within `seconds` (None or 0: no limit)."""
        self._set_timeout(seconds, &self.c.sq)

    # issue 10: half-close, cancellation, addresses (core/halfclose.pxi)
    def shutdown(self, context):
        """Half-close: shut the socket down for writing once every send posted
        before has completed (the peer reads EOF), then complete."""
        conn_shutdown(self, context)

    def cancel(self, context, reason=None):
        """Complete now every pending operation posted with this very `context`
        (`is`) with `reason` or Cancelled(); returns how many."""
        return conn_cancel(self, context, reason)

    # issue 11: TLS (core/tls.pxi, core/tls_setup.pxi)
    def start_tls(self, context, ssl, *, server_side=False, server_hostname=None,
                  ssl_handshake_timeout=None):
        """Upgrade to TLS once the operations posted before have completed;
        completes (res.conn this connection) when the handshake is done."""
        tls_start_gil(self, context, ssl, server_side, server_hostname, ssl_handshake_timeout)

    @property
    def tls(self):
        """A goaio.TLSInfo on a TLS connection, None on a plain one."""
        return tls_info_gil(self)

    @property
    def peername(self):
        """getpeername() of the socket; None once closed (or unknown to the OS)."""
        return conn_address(self, True)

    @property
    def sockname(self):
        """getsockname() of the socket; None once closed."""
        return conn_address(self, False)

    def close(self, reason=None):
        """Close the connection and its socket; pending operations complete
        with `reason` (an exception instance; default ConnClosed())."""
        if reason is not None and not isinstance(reason, BaseException):
            raise TypeError(MSG_REASON_TYPE)
        self._close(reason)

    cdef _close(self, reason):
        cdef conn_t *c = self.c
        cdef svc_t *s = self._svc.s
        cdef oplist_t done
        cdef op_t *op
        cdef int fd
        cdef stash_t *st
        cdef PyObject *exc
        cdef bint had_timer
        if c.closed:
            return
        oplist_init(&done)
        pthread_mutex_lock(&c.lock)     # GIL held: fine, no c.lock holder waits for it
        if c.closed:
            pthread_mutex_unlock(&c.lock)
            return
        c.closed = 1
        # every pending op gets the reason itself, or by default a fresh
        # ConnClosed made when its result is (no Python code under c.lock)
        opq_fail_locked(c, &c.rq, ERR_CLOSED if reason is None else ERR_OBJ, &done)
        opq_fail_locked(c, &c.sq, ERR_CLOSED if reason is None else ERR_OBJ, &done)
        tls_close_locked(s, c, ERR_CLOSED if reason is None else ERR_OBJ, &done)
        if reason is not None:
            op = done.head
            while op != NULL:
                op.errobj = <PyObject *>reason
                Py_INCREF(reason)
                op = op.next
        cq_push(s, &done)
        had_timer = timer_remove_locked(s, c)    # its timers leave with it
        fd = c.fd
        st = c.stash
        c.stash = NULL
        exc = c.stash_exc
        c.stash_exc = NULL
        c.pyobj = NULL
        pthread_mutex_unlock(&c.lock)
        if had_timer:
            conn_decref_nogil(c)        # the entry's (the AIOConn still holds one)
        with nogil:
            reg_remove(s, c)
        # Close the fd only if the socket object still owned it: had the user
        # closed the socket behind our back, the number may already belong to
        # another file. EPOLL_CTL_DEL comes before close(); the fd number leaves
        # the bound registry while still open, so no socket can get it before.
        # A borrowed connection (svc._bind_borrowed) leaves the socket and
        # its fd to their owner: only the poller registration goes.
        try:
            if c.borrowed:
                mine = self._sock.fileno() == fd
            else:
                mine = self._sock.detach() == fd
        except OSError:
            mine = False
        if mine:
            with nogil:
                if poller_use_begin(s, False):   # (never a closed poller)
                    poller_del(&s.poller, fd)
                    poller_use_end(s)
        _bound_fds.discard(fd)
        if mine and not c.borrowed:
            close(fd)
        if st != NULL:
            stash_free_gil(st, True)
        Py_XDECREF(exc)

