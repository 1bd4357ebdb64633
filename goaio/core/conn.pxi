# core/conn.pxi -- AIOConn: posting onto a connection's queues, its timeouts,
# and close (docs/architecture.md has the connection and op states).

from libc.stdint cimport uint16_t


cdef extern from *:
    """
    #include <sys/socket.h>
    #include <netinet/in.h>
    #include <arpa/inet.h>
    /* The peer of a bound fd: 0 with an IPv4 peer in ip and port (host order),
       its family (> 0) for any other, -1 when the OS does not know it. */
    static int goaio_peer_v4(int fd, uint32_t *ip, uint16_t *port) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        if (getpeername(fd, (struct sockaddr *)&ss, &len) < 0)
            return -1;
        if (ss.ss_family != AF_INET)
            return ss.ss_family > 0 ? ss.ss_family : -1;
        *ip = ntohl(((struct sockaddr_in *)&ss)->sin_addr.s_addr);
        *port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        return 0;
    }
    """
    int goaio_peer_v4(int fd, uint32_t *ip, uint16_t *port) nogil


@cython.final
cdef class _ConnSide:
    """An AIOConn's rarely used fields, made when one is first needed (an idle
    connection carries one pointer for them; issue 13)."""
    cdef object sock             # the socket object (None: an fd bound without one)
    cdef object user_data        # conn.user_data
    cdef dict shared_errs        # key -> the exception a failed send shares with a shutdown
    cdef object tls_info         # conn.tls, once asked for (core/tls_setup.pxi)
    cdef object peername         # a non-IPv4 peer's getpeername() read at bind
    cdef bint borrowed           # svc._bind_borrowed: close() leaves the fd and socket to their owner


@cython.final
cdef class AIOConn:
    """A socket bound to an AIOService; post recv/recv_full/send on it."""
    cdef conn_t *c
    cdef AIOService _svc
    # The socket object (in _x, _sockobj()) is None for an fd bound without
    # one (an accepted or connected IPv4 socket: the AIOConn owns the fd,
    # `_fdown`, and makes the object only when asked for it, `_socket()`);
    # user_data lives in _x too (issue 13, idle memory).
    cdef _ConnSide _x            # the rarely used fields, or None (_side())
    cdef object __weakref__
    cdef uint32_t _peer_ip       # an IPv4 peer read at bind (host order), when _peer_v4
    cdef uint16_t _peer_port
    cdef char _peer_v4
    cdef char _fdown             # 1: c.fd is ours alone (no socket object), closed by _close

    def __init__(self):
        raise TypeError(MSG_NOT_MADE_BY_BIND)

    def __dealloc__(self):
        if self.c != NULL:
            if self._fdown:
                # never closed by _close: a connection inherited by a forked
                # child (closed there without IO), as its socket object would
                self._fdown = 0
                close(self.c.fd)
            conn_decref_nogil(self.c)
            self.c = NULL

    cdef _ConnSide _side(self):
        """The side record, made now if needed (GIL held)."""
        cdef _ConnSide x
        if self._x is None:
            x = _ConnSide.__new__(_ConnSide)
            if self._x is None:         # (the allocation may have run a __del__)
                self._x = x
        return self._x

    cdef inline object _sockobj(self):
        return self._x.sock if self._x is not None else None

    @property
    def user_data(self):
        return self._x.user_data if self._x is not None else None

    @user_data.setter
    def user_data(self, value):
        if value is not None or self._x is not None:
            self._side().user_data = value

    @user_data.deleter
    def user_data(self):
        if self._x is not None:
            self._x.user_data = None

    cdef object _peer(self):
        """The peer's address as getpeername() gave it at bind, or None (GIL held)."""
        cdef uint32_t ip = self._peer_ip
        if self._peer_v4:
            return (f"{ip >> 24}.{(ip >> 16) & 255}.{(ip >> 8) & 255}.{ip & 255}",
                    <int>self._peer_port)
        return self._x.peername if self._x is not None else None

    cdef object _socket(self):
        """The socket object of the connection (made now for an fd bound
        without one; it then owns the fd, as a bound socket does), or None
        once closed (GIL held, no C lock)."""
        cdef int fd
        cdef _ConnSide x
        if self._sockobj() is None and self._fdown == 1 and not self.c.closed:
            x = self._side()    # (made first: nothing below lets the GIL go once the object is ours)
            fd = self.c.fd
            self._fdown = 2     # being made: a close meanwhile (the GIL may go) sets 0
            try:
                sock = _socket.socket(fileno=fd)
            except OSError:
                if self._fdown == 2:
                    self._fdown = 1
                return None
            if self._fdown != 2 or x.sock is not None:
                sock.detach()   # closed meanwhile: the fd is not ours (detach never closes)
                return self._sockobj()
            x.sock = sock       # the socket object owns the fd from here on
            self._fdown = 0
            sock.setblocking(False)
        return self._sockobj()

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
        cdef _ConnSide x = self._x
        if x is not None and x.sock is not None and sock_fileno(x.sock) != self.c.fd:     # (core/post.pxi)
            # The user closed the socket behind our back: the number may
            # belong to another file now, which must never see our IO.
            self._close(_oserror(EBADF))
            raise ConnClosed(MSG_CONN_CLOSED)
        return 0

    cdef bint _evict_if_stale(self, int fd):
        """Close this connection (pending ops: OSError(EBADF)) if its socket
        no longer owns fd; True when it did (GIL held, no C lock)."""
        sock = self._sockobj()
        if self.c.closed or self.c.fd != fd or sock is None or sock.fileno() == fd:
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
            goaio_lock(&c.lock)
            at = goaio_now_ns() + ns if ns else 0
            q.timeout = ns
            op = q.head
            while op != NULL:
                op.deadline = at
                op = op.next
            if at and not c.closed and q.head != NULL:
                schedule_timer_locked(self._svc.s, c, at)
            goaio_unlock(&c.lock)

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
        goaio_lock(&c.lock)     # GIL held: fine, no c.lock holder waits for it
        if c.closed:
            goaio_unlock(&c.lock)
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
        exc = NULL
        if stash_is_exc(st):            # (core/sharebuf.pxi)
            exc = stash_exc(st)
            st = NULL
        c.pyobj = NULL
        goaio_unlock(&c.lock)
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
        sock = self._sockobj()
        if sock is None:
            mine = self._fdown != 0     # (2: _socket() is making the object: it lets go)
            self._fdown = 0
        else:
            try:
                if self._x.borrowed:
                    mine = sock.fileno() == fd
                else:
                    mine = sock.detach() == fd
            except OSError:
                mine = False
        if mine:
            with nogil:
                if poller_use_begin(s, False):   # (never a closed poller)
                    poller_del(&s.poller, fd)
                    poller_use_end(s)
        _bound_fds.discard(fd)
        if mine and not (self._x is not None and self._x.borrowed):
            close(fd)
        if st != NULL:
            stash_free_gil(st, True)
        Py_XDECREF(exc)



# --- binding (svc.bind; the connections of accepts and connects) -------------

cdef AIOConn conn_bind_fd_gil(AIOService svc, int fd, option):
    """Bind an accepted/connected socket's fd (non-blocking already), which
    this call takes over (closed on failure): an IPv4 one without a socket
    object (made on demand, AIOConn._socket), any other as a socket.socket
    (GIL held, no C lock)."""
    cdef uint32_t ip = 0
    cdef uint16_t port = 0
    cdef int fam = goaio_peer_v4(fd, &ip, &port)
    if fam > 0:
        try:
            sock = _socket.socket(fileno=fd)
        except BaseException:
            close(fd)
            raise
        try:
            return conn_bind_gil(svc, sock, -1, option, None, fam)
        except BaseException:
            sock.close()
            raise
    return conn_bind_gil(svc, None, fd, option, None, fam, ip, port)


cdef AIOConn conn_bind_gil(AIOService svc, sock, int fd, option, dict kwargs,
                           int fam=-2, uint32_t ip=0, uint16_t port=0, bint borrowed=False):
    """svc.bind(sock) (fd -1); or, sock None, the fd of an accept/connect,
    taken over (closed here on failure; GIL held, no C lock). fam, ip, port:
    goaio_peer_v4's answer for fd when the caller asked already (-2: not)."""
    cdef AIOConn conn
    cdef conn_t *c
    cdef int err
    cdef bint fdpath = fd >= 0
    if svc.s.closed:
        if fdpath:
            close(fd)
        raise ServiceClosed(MSG_SERVICE_CLOSED)
    if not fdpath:
        fd = _check_socket(sock)
    try:
        _bound_fds.add(fd)
    except BaseException:
        if fdpath:
            close(fd)
        raise
    try:
        option = _make_option(option, kwargs or {})
        if not fdpath:
            sock.setblocking(False)
        err = poller_prepare_fd(fd)     # per-OS socket setup (macOS: SO_NOSIGPIPE)
        if err:
            raise _oserror(err)
        conn = AIOConn.__new__(AIOConn)
        c = <conn_t *>PyMem_RawMalloc(sizeof(conn_t))
        if c == NULL:
            raise MemoryError()
        memset(c, 0, sizeof(conn_t))
        goaio_lock_init(&c.lock)
        c.cref = 1
        c.heap_idx = -1
        conn.c = c
        conn._svc = svc
        if not fdpath:
            conn._side().sock = sock
            conn._x.borrowed = borrowed
        # The peer's address, read once: it stays known after both sides
        # closed their stream and the kernel forgot it. An IPv4 one is kept
        # as two C fields, not a tuple of a str and an int (issue 13).
        if fam == -2:
            fam = goaio_peer_v4(fd, &ip, &port)
        if fam == 0:
            conn._peer_v4 = 1
            conn._peer_ip = ip
            conn._peer_port = port
        elif fam > 0 and not fdpath:
            conn._side().peername = peername_at_bind(sock)     # core/halfclose.pxi
        if option.user_data is not None:
            conn._side().user_data = option.user_data
        c.fd = fd
        # A send is tried at once (EAGAIN clears the flag). Readability comes
        # from the poller: registering reports data already there, and no
        # share buffer is ever taken on a guess.
        c.readable = 0
        c.writable = 1
        # any size >= 1 is accepted; a queue never holds 2**31 ops anyway
        c.rq.max = min(option.recvq_size, QUEUE_MAX)
        c.sq.max = min(option.sendq_size, QUEUE_MAX)
        share = option.share_buff
        if share is not None:
            Py_INCREF(share)
            c.share_buff = <PyObject *>share
            if type(share) is BufferPool:
                c.pool = (<BufferPool>share).p
        c.pyobj = <PyObject *>conn
        # Registered and added to the poller only while the service is
        # open, and close() waits for us: it then closes this connection,
        # and no bind ever touches a closed poller.
        if not poller_use_begin(svc.s, True):
            c.closed = 1
            raise ServiceClosed(MSG_SERVICE_CLOSED)
        with nogil:
            err = reg_add(svc.s, c)
            if err == 0:
                err = poller_add(&svc.s.poller, c.fd, c.id)
                if err:
                    reg_remove(svc.s, c)
            poller_use_end(svc.s)
        if err:
            c.closed = 1
            raise _oserror(err)
    except BaseException:
        _bound_fds.discard(fd)
        if fdpath:
            close(fd)
        raise
    if fdpath:
        conn._fdown = 1         # from here on _close closes the fd
    if svc.s.closed:
        conn._close(None)
        raise ServiceClosed(MSG_SERVICE_CLOSED)
    return conn
