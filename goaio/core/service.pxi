# core/service.pxi -- AIOService: threads, bind, collecting results, close.
# (The set of live services, for fork and exit, is in core/fork.pxi.)


@cython.final
cdef class AIOService:
    """A proactor service: `workers` threads do the IO of the connections bound
    to it; completions are collected with get_complete_status*(), from any thread."""
    cdef svc_t *s
    cdef list _threads
    cdef object _close_lock
    cdef int _workers
    cdef set _listeners          # open Listeners (core/listener.pxi)
    cdef object _resolver        # the resolver thread, once started (core/resolver.pxi)
    cdef object __weakref__

    def __cinit__(self, workers=1):
        cdef int err
        self._workers = _common.check_workers(workers)
        self._threads = []
        self._listeners = set()
        self._close_lock = _threading.Lock()
        self.s = <svc_t *>PyMem_RawMalloc(sizeof(svc_t))
        if self.s == NULL:
            raise MemoryError()
        memset(self.s, 0, sizeof(svc_t))
        self.s.notify_fd = -1
        pthread_mutex_init(&self.s.lock, NULL)
        goaio_lock_init(&self.s.reg_lock)
        goaio_lock_init(&self.s.tlock)
        cond_init(&self.s.cq_cond)
        cond_init(&self.s.w_cond)
        err = poller_open(&self.s.poller)
        if err:
            self.s.closed = SVC_CLOSED
            raise _oserror(err)
        self.s.last_collector = 0
        for i in range(self._workers):
            t = _threading.Thread(target=self._worker_main, name=f"goaio-worker-{i}", daemon=True)
            self._threads.append(t)
        for t in self._threads:
            t.start()
        _live_services.add(_weakref.ref(self))

    def _worker_main(self):
        with nogil:
            worker_loop(self.s)
        if self.s.closed == SVC_CLOSED:
            discard_queued_gil(self.s)    # queued by a round that outlived close()

    def __dealloc__(self):
        cdef svc_t *s = self.s
        if s == NULL:
            return
        self.s = NULL
        if s.closed != SVC_CLOSED:
            # never closed: threads hold a reference, so this is only reached
            # after close() or when __cinit__ failed
            poller_close(&s.poller)
        discard_queued_gil(s)       # (queued after close() by a callback's caller)
        pthread_mutex_destroy(&s.lock)
        goaio_lock_destroy(&s.reg_lock)
        goaio_lock_destroy(&s.tlock)
        pthread_cond_destroy(&s.cq_cond)
        pthread_cond_destroy(&s.w_cond)
        PyMem_RawFree(s.slots)
        PyMem_RawFree(s.gens)
        PyMem_RawFree(s.free_slots)
        PyMem_RawFree(s.heap)
        PyMem_RawFree(s)

    def __repr__(self):
        return (f"<goaio.AIOService ({BACKEND_NAME}) {'closed' if self.s.closed else 'open'}"
                f" conns={self.s.nconns}>")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __iter__(self):
        while True:
            try:
                yield self.get_complete_status()
            except ServiceClosed:
                return

    @property
    def closed(self):
        return bool(self.s.closed)

    def bind(self, sock, option=None, *, ssl=None, server_side=False, server_hostname=None,
             ssl_handshake_timeout=None, **kwargs):
        """Bind a connected stream socket; returns its AIOConn (with ssl: a TLS
        connection; operations posted meanwhile run after the handshake)."""
        params = _tls_check_bind(ssl, server_side, server_hostname, ssl_handshake_timeout)
        if params is not None:
            tls_require()
        conn = self._bind(sock, option, kwargs)
        if params is not None:
            try:
                tls_attach_gil(self, conn, params, NULL)      # core/tls_setup.pxi
            except BaseException:
                conn._close(None)
                raise
        return conn

    def _bind_borrowed(self, sock, option=None, **kwargs):
        """goaio.aio hook: bind a socket its owner keeps (asyncio's
        loop.sock_* calls). The connection's close() only takes the fd out of
        the poller: it never closes the fd nor touches the socket object."""
        return conn_bind_gil(self, sock, -1, option, kwargs, -2, 0, 0, True)     # core/conn.pxi

    cdef AIOConn _bind(self, sock, option, dict kwargs):
        return conn_bind_gil(self, sock, -1, option, kwargs)     # core/conn.pxi

    cdef object _collect(self, Py_ssize_t maxn, timeout):
        cdef svc_t *s = self.s
        cdef int64_t until
        cdef op_t *head = NULL
        cdef op_t *op
        cdef int closed = 0
        cdef double t = -1.0
        cdef int64_t ns, slice_until
        if timeout is not None:
            t = _common.check_timeout(timeout)
        if s.closed:
            raise ServiceClosed(MSG_SERVICE_CLOSED)
        # fast path: results are waiting (a thread holding the GIL may take
        # s.lock: no holder of it ever waits for the GIL)
        pthread_mutex_lock(&s.lock)
        if s.cq_head != NULL:
            head = cq_pop_locked(s, maxn)
            s.last_collector = goaio_now_ns()
        pthread_mutex_unlock(&s.lock)
        if head == NULL:
            ns = to_ns(t) if t >= 0 else -1
            until = -1 if ns < 0 else (0 if ns == 0 else goaio_now_ns() + ns)
            # Wait in slices of at most MAX_WAIT_NS (a poll interrupted by a
            # signal ends its slice early), running Python's signal handlers
            # between them with the GIL and no C lock: Ctrl-C or a handler's
            # exception leaves the call; nothing was taken, nothing is lost.
            while True:
                if until == 0:
                    slice_until = 0
                else:
                    slice_until = goaio_now_ns() + MAX_WAIT_NS
                    if until > 0 and until < slice_until:
                        slice_until = until
                with nogil:
                    closed = cq_take(s, maxn, slice_until, &head)
                if closed == 1:
                    if s.closed == SVC_CLOSED:
                        discard_queued_gil(s)     # queued by a round that outlived close()
                    raise ServiceClosed(MSG_SERVICE_CLOSED)
                if head != NULL or until == 0 or (until > 0 and goaio_now_ns() >= until):
                    break
                PyErr_CheckSignals()
        if head != NULL:
            # A signal that came while we waited for the GIL or took the
            # chain: its handler runs here, not at the return (where Python
            # would run it and drop our return value); if it raises, the
            # results go back to the queue, nothing handed over is lost.
            try:
                PyErr_CheckSignals()
            except BaseException:
                cq_unpop(s, head)
                raise
        if maxn == 1 and head != NULL and head.next == NULL:
            return make_result_gil(s, head)
        out = []
        while head != NULL:
            op = head
            head = op.next
            out.append(make_result_gil(s, op))
        return out

    def get_complete_status(self, timeout=None):
        """The next result; None if `timeout` seconds passed first (0: don't wait)."""
        r = self._collect(1, timeout)
        if type(r) is list:
            return r[0] if r else None
        return r

    def get_complete_statuses(self, max_results=64, timeout=None):
        """Up to max_results results (at least one unless `timeout` expired: [])."""
        cdef Py_ssize_t m = _common.check_max_results(max_results)
        r = self._collect(m, timeout)
        if type(r) is not list:
            return [r]
        return r

    # issue 10: listening, connecting, introspection (core/listener.pxi,
    # core/connect.pxi, core/stats.pxi)
    def listen(self, address, backlog=1024, *, reuse_port=False, option=None, ssl=None,
               ssl_handshake_timeout=None, **options):
        """Listen on `address` ((host, port) or a Unix path), or take an already
        listening socket.socket; returns a Listener (with ssl: accepts complete
        after the TLS handshake)."""
        params = _tls_check_listen(ssl, ssl_handshake_timeout)
        if params is not None:
            tls_require()
        return svc_listen(self, address, backlog, reuse_port, option, options, params)

    def connect(self, context, address, *, timeout=None, local_address=None, option=None,
                ssl=None, server_hostname=None, ssl_handshake_timeout=None, **options):
        """Connect to `address` without blocking; completes with res.conn the
        connected, bound connection (or res.conn None and err); with ssl, once
        the TLS handshake after the TCP connect is done."""
        params = _tls_check_connect(ssl, server_hostname, ssl_handshake_timeout, address)
        if params is not None:
            tls_require()
        svc_connect(self, context, address, timeout, local_address, option, options, params)

    def _await_connect(self, context, int fd):
        """goaio.aio hook (loop.sock_connect): `fd` (the service's from now on:
        a dup of the caller's socket) has a non-blocking connect in progress;
        completes once it has ended, res.conn the connected fd bound (close
        it: the caller's socket stays connected), else err."""
        if fd < 0:
            raise ValueError("fd must be >= 0")
        svc_connect(self, context, None, None, None, None, {}, None, fd)

    def stats(self):
        """Counts of connections, pending operations, threads and totals (the
        same keys on every backend)."""
        return svc_stats(self)

    def _poll_fd(self):
        """goaio.aio hook: the poller's descriptor, readable while IO events
        wait (a thread then collecting with timeout=0 does that IO itself)."""
        return poller_fd(&self.s.poller) if not self.s.closed else -1

    def _set_external_collector(self, bint on):
        """goaio.aio hook: an event loop watches _poll_fd() and collects with
        timeout=0 whenever it is readable; while on, worker threads leave the
        poll to it (unless timers are armed), so IO stays on the loop thread."""
        pthread_mutex_lock(&self.s.lock)
        self.s.external_collector = on
        pthread_cond_broadcast(&self.s.w_cond)
        pthread_mutex_unlock(&self.s.lock)

    def _set_notify_fd(self, int fd):
        """goaio.aio hook: after a worker's poll round that left results
        queued, write 8 bytes (an eventfd's 1) to `fd` (-1: stop). The caller
        owns `fd` and closes it after closing the service."""
        pthread_mutex_lock(&self.s.lock)
        self.s.notify_fd = fd
        pthread_mutex_unlock(&self.s.lock)

    def _stats(self):
        """Debug counters: live operations, registered connections, threads."""
        return {
            "live_ops": self.s.live_ops,
            "conns": self.s.nconns,
            "threads": sum(1 for t in self._threads if t.is_alive()),
            "queued": self.s.cq_len,
            "timers": self.s.heap_len,
            "tls_offloaded": self.s.hsw_runs,
        }

    def close(self):
        """Close every connection, discard uncollected results, stop the threads."""
        cdef svc_t *s = self.s
        cdef conn_t *c
        cdef tentry_t *heap
        cdef Py_ssize_t n, k
        cdef uint32_t i
        cdef bint own_round
        # From a callback of a poll round (share_buff.acquire() on the polling
        # thread) while another thread is closing: that close waits for our
        # round to end, so this call cannot wait for it; it returns at once.
        with nogil:
            pthread_mutex_lock(&s.lock)
            own_round = s.closed != SVC_OPEN and in_own_poll_round(s)
            pthread_mutex_unlock(&s.lock)
        if own_round:
            return
        with self._close_lock:
            if s.closed:
                return
            with nogil:
                pthread_mutex_lock(&s.lock)
                s.closed = SVC_CLOSING
                pthread_cond_broadcast(&s.cq_cond)
                pthread_cond_broadcast(&s.w_cond)
                poller_wake(&s.poller)
                pthread_mutex_unlock(&s.lock)
            for t in self._threads:
                if t is not _threading.current_thread():
                    t.join()
            # a collector may still be inside a poll round, a bind registering:
            # wait for them (not for a round this thread is in: see above)
            with nogil:
                pthread_mutex_lock(&s.lock)
                wait_quiet_locked(s)
                pthread_mutex_unlock(&s.lock)
            close_lifecycle(self)       # listeners, resolver, connects (core/connect.pxi)
            tls_setup_discard_gil(s)    # TLS sockets not bound yet (core/tls_setup.pxi)
            with nogil:
                hsw_discard(s)          # handshake steps no worker took (core/tls.pxi)
            conns = []
            goaio_lock(&s.reg_lock)
            for i in range(s.nslots):
                c = s.slots[i]
                if c != NULL and c.pyobj != NULL:
                    conns.append(<object>c.pyobj)
            goaio_unlock(&s.reg_lock)
            for conn in conns:
                (<AIOConn>conn)._close(ServiceClosed(MSG_SERVICE_CLOSED))
            conns = None
            tls_setup_discard_gil(s)    # (TLS connections those closes gave back)
            # discard what nobody collected (share buffers go back to their pools)
            discard_queued_gil(s)
            with nogil:
                goaio_lock(&s.tlock)
                heap = s.heap
                n = s.heap_len
                s.heap = NULL
                s.heap_len = s.heap_cap = 0
                goaio_unlock(&s.tlock)
                for k in range(n):
                    heap[k].conn.heap_idx = -1
                    conn_decref_nogil(heap[k].conn)
                PyMem_RawFree(heap)
                # the last users of the poller (connections closing) leave
                # first; then it goes, under s.lock (see svc_wake)
                pthread_mutex_lock(&s.lock)
                s.poller_gone = 1
                wait_quiet_locked(s)
                poller_close(&s.poller)
                pthread_mutex_unlock(&s.lock)
            s.closed = SVC_CLOSED
            self._threads = []
            _live_services.discard(_weakref.ref(self))

