# core/transport.pxi -- goaio.aio's per-message path, compiled (issue 12).
#
# AioCore: the state of one asyncio stream transport over an AIOConn. Its
# receive is posted straight onto the connection (a share-buffer receive
# from the loop's BufferPool for a Protocol, the protocol's own get_buffer()
# for a BufferedProtocol); its completions are handed to it by the loop's
# AioCollector without an AIOResult: the collector takes the completed ops
# from the service's queue (doing the ready IO on the loop thread, as
# get_complete_statuses(timeout=0) does) and calls AioCore.on_op(op), which
# calls protocol.data_received / buffer_updated. write() sends at once when
# nothing is queued (send(2) on the loop thread), else posts a goaio send.
#
# The asyncio.Transport object users see is a Python class made by
# aio_transport_class() (subclassing goaio.aio.GoaioTransport, which is an
# asyncio.Transport and a _FlowControlMixin); its methods are compiled and
# call the core. The behaviour is the pure Python transport's (goaio/aio.py,
# _PyTransport), docs/aio.md describes both. GIL held everywhere here; the
# only C lock taken is through AIOConn._post and the collection (cq_take).

from cpython.bytes cimport (PyBytes_FromStringAndSize, PyBytes_CheckExact, PyBytes_GET_SIZE,
                            PyBytes_AS_STRING)

# set once by aio_init() (goaio.aio imports asyncio; the backend does not)
cdef object _aio_logger = None
cdef object _aio_tsock = None            # asyncio.trsock.TransportSocket
cdef object _aio_set_result = None       # asyncio.futures._set_result_unless_cancelled
cdef object _aio_protocols_buffered = None   # asyncio.BufferedProtocol
cdef Py_ssize_t _aio_connlost_log = 5    # constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES
cdef int AIO_MAX_INFLIGHT = 16
cdef int AIO_BATCH = 256
cdef int AIO_GATHER = 512


def aio_init(logger, tsock, set_result, buffered, connlost_log, max_inflight, batch):
    """goaio.aio hook: the asyncio objects and tunables the compiled transport uses."""
    global _aio_logger, _aio_tsock, _aio_set_result, _aio_protocols_buffered
    global _aio_connlost_log, AIO_MAX_INFLIGHT, AIO_BATCH
    _aio_logger = logger
    _aio_tsock = tsock
    _aio_set_result = set_result
    _aio_protocols_buffered = buffered
    _aio_connlost_log = connlost_log
    AIO_MAX_INFLIGHT = max_inflight
    AIO_BATCH = batch


cdef inline int aio_check_open(AIOConn conn) except -1:
    # AIOConn._check_open without its fileno() check: the socket is the
    # transport's own (users get asyncio's TransportSocket), never closed
    # behind goaio's back
    if conn._svc.s.closed:
        raise ServiceClosed(MSG_SERVICE_CLOSED)
    if conn.c.closed:
        raise ConnClosed(MSG_CONN_CLOSED)
    return 0


cdef int aio_post(AIOConn conn, op_t *op, object context) except -1:
    """AIOConn._post, always keeping the GIL: the loop thread is the only one
    posting, and taking c.lock (then s.lock) with the GIL held is allowed
    (no holder of either waits for the GIL; docs/architecture.md). Releasing
    and retaking the GIL cost more than the post itself."""
    cdef conn_t *c = conn.c
    cdef svc_t *s = conn._svc.s
    cdef bint sending = op.kind == OP_SEND
    cdef int rc
    op.conn = c
    op.context = <PyObject *>context
    Py_INCREF(context)
    op.pyconn = <PyObject *>conn
    Py_INCREF(conn)
    rc = post_queue_nogil(s, c, op, sending)      # core/post.pxi
    if s.closed == SVC_CLOSED:
        discard_queued_gil(s)
    if rc:
        op_release_gil(op, False)
        if rc == 1:
            raise ConnClosed(MSG_CONN_CLOSED)
        if rc == 3:
            raise BrokenPipeError(MSG_SEND_AFTER_SHUTDOWN)
        raise Busy(MSG_SENDQ_FULL if sending else MSG_RECVQ_FULL)
    return 0


cdef inline bint aio_quiet_err(object exc):
    return isinstance(exc, (ConnClosed, ServiceClosed))


@cython.final
cdef class AioCollector:
    """goaio.aio hook: takes a loop's completions and hands them to their
    transports (docs/aio.md, "Delivery"); the loop's selector.select is
    replaced by select()."""
    cdef AIOService svc
    cdef op_t *head
    cdef op_t *tail
    cdef public long iter             # select() calls (loop iterations)
    cdef public bint dirty            # something was posted: take before waiting
    cdef public bint dispatch_pending
    cdef public long long collects
    cdef public long long results
    cdef public object loop
    cdef object ready                 # the loop's _ready deque
    cdef object handle                # an asyncio.Handle of dispatch_queued
    cdef object orig_select

    def __init__(self, AIOService svc, loop, ready, orig_select):
        self.svc = svc
        self.loop = loop
        self.ready = ready
        self.orig_select = orig_select

    def set_handle(self, handle):
        self.handle = handle

    def __dealloc__(self):
        self._clear()

    cdef void _clear(self):
        cdef op_t *op
        while self.head != NULL:
            op = self.head
            self.head = op.next
            op_release_gil(op, True)
        self.tail = NULL

    def clear(self):
        """Release every completion taken and not dispatched (loop.close())."""
        self._clear()
        self.orig_select = None
        self.ready = None
        self.handle = None

    def select(self, timeout=None):
        self.iter += 1
        if self.dispatch_pending:
            timeout = 0
        elif self.dirty:
            self.dirty = False
            # only what is queued (ops the callbacks' posts completed): IO
            # that is not done yet shows as the poller's descriptor being
            # readable in the loop's own select, and io_ready() does it
            if self.take(False):
                self.dispatch_pending = True
                self.ready.append(self.handle)
                timeout = 0
        return self.orig_select(timeout)

    cpdef bint take(self, bint poll=True) except -1:
        """Take what the service has (poll: doing on this thread the IO that
        is ready); True if there is something to dispatch."""
        cdef svc_t *s = self.svc.s
        cdef op_t *got = NULL
        cdef op_t *last
        cdef int closed
        cdef long n
        if s.closed:
            return self.head != NULL
        pthread_mutex_lock(&s.lock)
        if s.cq_head != NULL:
            got = cq_pop_locked(s, AIO_BATCH)
            s.last_collector = goaio_now_ns()
        pthread_mutex_unlock(&s.lock)
        if got == NULL and not poll:
            return self.head != NULL
        if got == NULL:
            with nogil:
                closed = cq_take(s, AIO_BATCH, 0, &got)
            if closed == 1:
                if s.closed == SVC_CLOSED:
                    discard_queued_gil(s)
                return self.head != NULL
            if got == NULL:
                return self.head != NULL
        try:
            PyErr_CheckSignals()
        except BaseException:
            cq_unpop(s, got)
            raise
        n = 1
        last = got
        while last.next != NULL:
            last = last.next
            n += 1
        if self.tail == NULL:
            self.head = got
        else:
            self.tail.next = got
        self.tail = last
        self.collects += 1
        self.results += n
        return True

    def dispatch_queued(self):
        self.dispatch_pending = False
        self.dispatch()

    def io_ready(self):
        """The service's poller is readable: do that IO here and dispatch."""
        if self.take():
            self.dispatch()

    cpdef dispatch(self):
        """Hand each completion taken to its transport."""
        cdef op_t *head = self.head
        cdef op_t *op
        cdef op_t *dh = NULL
        cdef op_t *dt = NULL
        cdef op_t *rest
        cdef long it = self.iter
        cdef object ctx
        cdef AioCore core
        self.head = self.tail = NULL
        try:
            while head != NULL:
                op = head
                head = op.next
                op.next = NULL
                ctx = <object>op.context
                if type(ctx) is AioCore:
                    core = <AioCore>ctx
                    if op.kind == OP_RECV and core.recv_iter == it:
                        # posted in this very iteration: its data waits for
                        # the next one, as a readiness loop reads a socket
                        # once per iteration
                        if dt == NULL:
                            dh = op
                        else:
                            dt.next = op
                        dt = op
                        continue
                    core.on_op(op)
                else:
                    ctx(make_result_gil(self.svc.s, op))
        except BaseException:
            # (SystemExit, KeyboardInterrupt from a protocol): nothing is lost
            rest = head
            if dt != NULL:
                dt.next = rest
                rest = dh
            self._prepend(rest)
            raise
        if dh != NULL:
            self._prepend(dh)
            self.dirty = True

    cdef void _prepend(self, op_t *chain):
        cdef op_t *last
        if chain == NULL:
            return
        last = chain
        while last.next != NULL:
            last = last.next
        last.next = self.head
        if self.head == NULL:
            self.tail = last
        self.head = chain


@cython.final
cdef class AioCore:
    """The C state of one goaio.aio stream transport (see the top of this file)."""
    cdef AIOConn conn
    cdef AioCollector col        # (col.loop: the loop)
    cdef object shell            # the asyncio.Transport users hold
    cdef object protocol
    cdef object server
    cdef object tsock            # TransportSocket, made when first asked for
    cdef list backlog            # writes waiting for a free send slot (None: none)
    cdef object empty_waiter
    cdef object reading_proto    # the protocol whose buffer the posted receive uses
    cdef tuple held              # a completed receive kept while paused:
                                 #   (data, err, giver, buf, n) as deliver() takes them
    cdef Py_ssize_t buffer_size
    cdef Py_ssize_t high
    cdef Py_ssize_t low
    cdef long recv_iter
    cdef int sending
    cdef int conn_lost
    cdef int fd
    cdef char alive              # until connection_lost ran (the Python "_sock is not None")
    cdef char buffered
    cdef char protocol_connected
    cdef char closing
    cdef char paused
    cdef char eof
    cdef char shut
    cdef char read_eof
    cdef char reading
    cdef char proto_paused
    cdef char send_first
    cdef char writes_held        # TLS test hook (_ssl_protocol): writes wait in backlog
    cdef object tls_shell        # a TLS transport: the shell, told of the EOF and the close

    def __init__(self, AioCollector col, shell, AIOConn conn, protocol, server,
                 bint send_first, Py_ssize_t high, Py_ssize_t low):
        self.col = col
        self.shell = shell
        self.conn = conn
        self.fd = conn.c.fd
        self.server = server
        self.send_first = send_first
        self.high = high
        self.low = low
        self.recv_iter = -1
        self.alive = True
        self.set_protocol(protocol)

    # -- protocol --

    def set_protocol(self, protocol):
        self.buffered = isinstance(protocol, _aio_protocols_buffered)
        self.protocol = protocol
        self.protocol_connected = True

    def get_protocol(self):
        return self.protocol

    # -- state the Python side reads --

    @property
    def sock(self):
        return self.conn._socket() if self.alive else None

    @property
    def transport_socket(self):
        if self.tsock is None and self.conn is not None:
            self.tsock = _aio_tsock(self.conn._socket())
        return self.tsock

    @property
    def peername(self):
        return self.conn._peer() if self.conn is not None else None

    def sockname(self):
        cdef object sock = self.conn._socket() if self.conn is not None else None
        if sock is None:
            return None
        try:
            return sock.getsockname()
        except OSError:
            return None

    def set_limits(self, Py_ssize_t high, Py_ssize_t low):
        self.high = high
        self.low = low

    def repr_info(self):
        info = []
        if not self.alive:
            info.append("closed")
        elif self.closing:
            info.append("closing")
        info.append(f"fd={self.fd}")
        if self.alive:
            info.append("read=" + ("paused" if self.paused else "polling"))
            info.append(f"write=<bufsize={self.buffer_size}>")
        return info

    def detach(self):
        """goaio.aio's start_tls: give the connection up, open, to the TLS
        transport that takes it over; this transport is then closed without
        connection_lost (its protocol moved on). Returns (conn, server), or
        None when it cannot be taken over in place: sends still queued, or a
        receive completed whose bytes were not delivered yet."""
        cdef AIOConn conn = self.conn
        if conn is None or not self.alive or self.conn_lost or self.closing:
            return None
        if self.sending or self.backlog is not None or self.held is not None:
            return None
        if self.reading and conn.cancel(self) != 1:
            return None         # completed: its result is on its way to us
        server = self.server
        shell = self.shell
        self.closing = True
        self.conn_lost += 1
        self.alive = False
        self.reading_proto = None
        self.protocol = None
        self.conn = None
        self.server = None
        self.shell = None
        self.col.loop._transports._goaio_forget(self.fd, shell)
        return conn, server

    def finalize(self, warn, shell):
        """The transport is collected unclosed: warn and close the connection."""
        if self.alive:
            warn(f"unclosed transport {shell!r}", ResourceWarning, source=shell)
            self.alive = False
            if self.conn is not None:
                self.conn._close(None)

    # -- reading --

    def is_closing(self):
        return self.closing

    def is_reading(self):
        return not self.closing and not self.paused

    def pause_reading(self):
        if self.closing or self.paused:
            return
        self.paused = True
        if self.col.loop.get_debug():
            _aio_logger.debug("%r pauses reading", self.shell)

    def resume_reading(self):
        if self.closing or not self.paused:
            return
        self.paused = False
        if self.col.loop.get_debug():
            _aio_logger.debug("%r resumes reading", self.shell)
        if self.held is not None:
            self.col.loop.call_soon(self.deliver_held)
        else:
            self.start_reading()

    def deliver_held(self):
        held = self.held
        if held is None:
            self.start_reading()
            return
        self.held = None
        self.deliver(held[0], held[1], held[2], held[3], held[4])

    cpdef start_reading(self):
        """Post the next receive (one at a time)."""
        cdef op_t *op
        cdef object buf = None
        cdef object proto = None
        cdef AIOConn conn = self.conn
        if self.reading or self.paused or self.closing or self.read_eof or self.conn_lost:
            return
        if conn is None:
            return
        if self.buffered:
            proto = self.protocol
            try:
                buf = proto.get_buffer(-1)
                if not len(buf):
                    raise RuntimeError("get_buffer() returned an empty buffer")
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal error: protocol.get_buffer() call failed.")
                return
        try:
            aio_check_open(conn)
            op = op_new(OP_RECV, buf is not None or conn.c.share_buff == NULL)
            try:
                if buf is None:
                    if conn.c.share_buff != NULL:
                        op.flags = OPF_NEEDBUF | OPF_NONEBUF
                    else:
                        op.flags = OPF_NONEBUF
                        fill_buffers(op, bytearray(DEFAULT_RECV_BUFF_SIZE), True)
                else:
                    fill_buffers(op, buf, True)
            except BaseException:
                op_release_gil(op, False)
                raise
            aio_post(conn, op, self)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal read error on socket transport")
            return
        self.reading = True
        self.reading_proto = proto
        self.col.dirty = True
        self.recv_iter = self.col.iter

    cdef int on_op(self, op_t *op) except -1:
        """A completed op of ours (the collector's call); frees it."""
        cdef Py_ssize_t n = op.done
        cdef object err = None
        cdef object data = None
        cdef object giver
        cdef object buf = None
        cdef char *p
        cdef Py_ssize_t total
        if op.kind == OP_RECV:
            giver = self.reading_proto
            self.reading = False
            self.reading_proto = None
            if self.conn_lost or self.closing:
                op_release_gil(op, True)
                return 0
            if op.err:
                err = make_err_gil(op)
            elif giver is None:
                # a pool buffer: one copy into the bytes the protocol keeps
                if op.flags & OPF_POOLBUF:
                    p = <char *>op.conn.pool.views[op.pool_idx].buf
                    data = PyBytes_FromStringAndSize(p, n)
                else:
                    data = bytes(memoryview(<object>op.buffobj)[:n])
            elif op.buffobj != NULL:
                buf = <object>op.buffobj
            op_release_gil(op, True)
            self.deliver(data, err, giver, buf, n)
            return 0
        # a send (or the shutdown of none: we never post one)
        total = op.total
        if op.err:
            err = make_err_gil(op)
        op_release_gil(op, True)
        self.on_write(total, err)
        return 0

    cdef int deliver(self, object data, object err, object giver, object buf, Py_ssize_t n) except -1:
        """data: the bytes of a pool-buffer receive; else n bytes are in buf, giver's buffer."""
        if self.conn_lost or self.closing:
            return 0
        if self.paused:
            self.held = (data, err, giver, buf, n)
            return 0
        if err is not None:
            if isinstance(err, EOFError):
                self._on_eof()
            elif not aio_quiet_err(err):
                self._fatal_error(err, "Fatal read error on socket transport")
            return 0
        if giver is None:
            if not self._feed(data):
                return 0
        elif giver is self.protocol:
            # read straight into the protocol's own buffer
            try:
                giver.buffer_updated(n)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal error: protocol.buffer_updated() call failed.")
                return 0
        else:
            # the protocol changed while the receive was pending (start_tls):
            # the bytes belong to the new one
            if not self._feed(bytes(memoryview(buf)[:n])):
                return 0
        self.start_reading()
        return 0

    cdef bint _feed(self, object data) except -1:
        """Give data to the current protocol; False after a fatal error."""
        cdef object proto = self.protocol
        cdef Py_ssize_t k
        if not self.buffered:
            try:
                proto.data_received(data)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")
                return False
            return True
        view = memoryview(data)
        while view:
            try:
                buf = proto.get_buffer(len(view))
                k = min(len(buf), len(view))
                if not k:
                    raise RuntimeError("get_buffer() returned an empty buffer")
                memoryview(buf)[:k] = view[:k]
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal error: protocol.get_buffer() call failed.")
                return False
            try:
                proto.buffer_updated(k)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal error: protocol.buffer_updated() call failed.")
                return False
            view = view[k:]
            if self.conn_lost:
                return False
        return True

    cdef int _on_eof(self) except -1:
        self.read_eof = True
        if self.tls_shell is not None:
            self.tls_shell._tls_eof()       # (asyncio's TLS rules: once per connection)
            return 0
        if self.col.loop.get_debug():
            _aio_logger.debug("%r received EOF", self.shell)
        try:
            keep_open = self.protocol.eof_received()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.eof_received() call failed.")
            return 0
        if not keep_open:
            self.close()
        return 0

    # -- writing --

    cdef int _lost_write(self) except -1:
        if self.conn_lost >= _aio_connlost_log:
            _aio_logger.warning("socket.send() raised exception.")
        self.conn_lost += 1
        return 0

    cpdef write(self, data):
        cdef Py_buffer v
        cdef bint is_bytes = PyBytes_CheckExact(data)
        cdef char *p
        cdef ssize_t n
        cdef int e
        cdef Py_ssize_t size
        if not is_bytes and not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
        if self.eof:
            raise RuntimeError("Cannot call write() after write_eof()")
        if self.empty_waiter is not None:
            raise RuntimeError("unable to write; sendfile is in progress")
        if is_bytes:
            size = PyBytes_GET_SIZE(data)
            p = PyBytes_AS_STRING(data)
        else:
            PyObject_GetBuffer(data, &v, PyBUF_FULL_RO)
            size = v.len
            p = <char *>v.buf
            if not PyBuffer_IsContiguous(&v, b'C'):
                # (a non-contiguous view goes out as a copy, through a goaio send)
                PyBuffer_Release(&v)
                data = bytes(data)
                size = PyBytes_GET_SIZE(data)
                p = PyBytes_AS_STRING(data)
                is_bytes = True
            else:
                PyBuffer_Release(&v)     # (data keeps the memory alive meanwhile)
        if size == 0:
            return
        if self.conn_lost:
            self._lost_write()
            return
        if not self.sending and self.backlog is None and self.send_first \
                and not self.conn.c.closed:
            # nothing queued: write at once, as asyncio does (an error is then
            # seen by this very call, and the common case needs no result)
            while True:
                n = send(self.fd, p, <size_t>size, MSG_NOSIGNAL | MSG_DONTWAIT)
                if n >= 0:
                    break
                e = errno
                if e == EINTR:
                    continue
                if goaio_would_block(e):
                    n = 0
                    break
                self._fatal_error(_oserror(e), "Fatal write error on socket transport")
                return
            if n == size:
                return
            if n:
                data = PyBytes_FromStringAndSize(p + n, size - n)
                size -= n
                is_bytes = True
        if not is_bytes:
            # the caller may change a mutable buffer once write() returns
            data = bytes(data)
        self.buffer_size += size
        if self.sending >= AIO_MAX_INFLIGHT or self.backlog is not None:
            if self.backlog is None:
                self.backlog = [data]
            else:
                self.backlog.append(data)
        else:
            self._post_send(data)
        self._maybe_pause()

    def writelines(self, list_of_data):
        cdef Py_ssize_t size = 0, n
        if self.eof:
            raise RuntimeError("Cannot call writelines() after write_eof()")
        if self.empty_waiter is not None:
            raise RuntimeError("unable to writelines; sendfile is in progress")
        items = []
        for data in list_of_data:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
            if data:
                if not PyBytes_CheckExact(data):
                    data = bytes(data)
                items.append(data)
                size += len(data)
        if not items:
            return
        if self.conn_lost:
            self._lost_write()
            return
        if not self.sending and self.backlog is None and self.send_first:
            # nothing queued: one gather send(2) at once (sendmsg)
            try:
                n = self.conn._socket().sendmsg(items[:AIO_GATHER])
            except (BlockingIOError, InterruptedError):
                n = 0
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal write error on socket transport")
                return
            size -= n
            if not size:
                return
            while n:
                first = items[0]
                if n >= len(first):
                    n -= len(first)
                    del items[0]
                else:
                    items[0] = first[n:]
                    n = 0
        self.buffer_size += size
        if self.sending >= AIO_MAX_INFLIGHT or self.backlog is not None:
            if self.backlog is None:
                self.backlog = items
            else:
                self.backlog.extend(items)
        else:
            # one gather send (writev)
            self._post_send(items[:AIO_GATHER] if len(items) > 1 else items[0])
            if len(items) > AIO_GATHER:
                self.backlog = items[AIO_GATHER:]
        self._maybe_pause()

    cdef int _post_send(self, data) except -1:
        cdef op_t *op
        cdef AIOConn conn = self.conn
        try:
            aio_check_open(conn)
            op = op_new(OP_SEND)
            try:
                fill_buffers(op, data, False)
            except BaseException:
                op_release_gil(op, False)
                raise
            aio_post(conn, op, self)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal write error on socket transport")
            return 0
        self.sending += 1
        self.col.dirty = True
        return 0

    cdef int on_write(self, Py_ssize_t total, object err) except -1:
        """A send completed."""
        cdef list backlog
        self.sending -= 1
        if self.conn_lost:
            return 0
        self.buffer_size -= total
        if err is not None:
            if not aio_quiet_err(err):
                self._fatal_error(err, "Fatal write error on socket transport")
            return 0
        backlog = self.backlog
        if backlog is not None and not self.writes_held:
            if len(backlog) > AIO_GATHER:
                self.backlog = backlog[AIO_GATHER:]
                batch = backlog[:AIO_GATHER]
            else:
                self.backlog = None
                batch = backlog
            self._post_send(batch if len(batch) > 1 else batch[0])
            if self.conn_lost:
                return 0
        self._maybe_resume()
        if self.sending or self.backlog is not None:
            return 0
        waiter = self.empty_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.closing:
            self.conn_lost += 1
            self.call_connection_lost(None)
        elif self.eof:
            self._shutdown_write()
        return 0

    cdef int _maybe_pause(self) except -1:
        if self.buffer_size <= self.high or self.proto_paused:
            return 0
        self.proto_paused = True
        self.shell._protocol_paused = True
        try:
            self.protocol.pause_writing()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self.col.loop.call_exception_handler({
                "message": "protocol.pause_writing() failed",
                "exception": exc,
                "transport": self.shell,
                "protocol": self.protocol,
            })
        return 0

    cdef int _maybe_resume(self) except -1:
        if not self.proto_paused or self.buffer_size > self.low:
            return 0
        self.proto_paused = False
        self.shell._protocol_paused = False
        try:
            self.protocol.resume_writing()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self.col.loop.call_exception_handler({
                "message": "protocol.resume_writing() failed",
                "exception": exc,
                "transport": self.shell,
                "protocol": self.protocol,
            })
        return 0

    def maybe_pause(self):
        """After the limits changed (set_write_buffer_limits)."""
        self._maybe_pause()

    cdef void _shutdown_write(self):
        if self.shut or not self.alive or self.conn is None or self.conn.c.closed:
            return
        self.shut = True
        goaio_shutdown_wr(self.fd)

    def get_write_buffer_size(self):
        return self.buffer_size

    def write_eof(self):
        if self.closing or self.eof:
            return
        self.eof = True
        if not self.sending and self.backlog is None:
            self._shutdown_write()

    def make_empty_waiter(self):
        if self.empty_waiter is not None:
            raise RuntimeError("Empty waiter is already set")
        self.empty_waiter = self.col.loop.create_future()
        if not self.sending and self.backlog is None:
            self.empty_waiter.set_result(None)
        return self.empty_waiter

    def reset_empty_waiter(self):
        self.empty_waiter = None

    # -- closing --

    def close(self):
        if self.closing:
            return
        self.closing = True
        if not self.sending and self.backlog is None:
            self.conn_lost += 1
            self.col.loop.call_soon(self.call_connection_lost, None)

    def abort(self):
        self._force_close(None)

    def fatal_error(self, exc, message="Fatal error on transport"):
        self._fatal_error(exc, message)

    cdef int _fatal_error(self, exc, message) except -1:
        if isinstance(exc, OSError):
            if self.col.loop.get_debug():
                _aio_logger.debug("%r: %s", self.shell, message, exc_info=True)
        else:
            self.col.loop.call_exception_handler({
                "message": message,
                "exception": exc,
                "transport": self.shell,
                "protocol": self.protocol,
            })
        self._force_close(exc)
        return 0

    def force_close(self, exc):
        self._force_close(exc)

    cdef int _force_close(self, exc) except -1:
        if self.conn_lost:
            return 0
        if self.backlog is not None or self.sending:
            self.backlog = None
            self.buffer_size = 0
            # pending sends must not reach the wire after an abort
            if self.conn is not None:
                self.conn._close(None)
        self.closing = True
        self.conn_lost += 1
        self.col.loop.call_soon(self.call_connection_lost, exc)
        return 0

    def call_connection_lost(self, exc):
        if not self.alive:
            return
        if self.tls_shell is not None and self.tls_shell._tls_close_first(exc):
            return          # close_notify first: lost_now() once it is out
        self.lost_now(exc)

    def lost_now(self, exc):
        cdef AIOConn conn
        if not self.alive:
            return
        self.tls_shell = None
        try:
            if self.protocol_connected:
                self.protocol.connection_lost(exc)
        finally:
            conn = self.conn
            self.alive = False
            self.held = None
            self.reading_proto = None
            if conn is not None:
                conn._close(None)        # closes the socket too
                self.col.dirty = True    # collect what the close completed
            waiter = self.empty_waiter
            if waiter is not None and not waiter.done():
                waiter.set_exception(ConnectionError("Connection is closed by peer"))
            self.protocol = None
            server = self.server
            shell = self.shell
            self.shell = None
            self.server = None
            shell._lost(server)


    # -- TLS (goaio.aio's compiled TLS transport, once per connection) --

    def set_tls(self, shell):
        """Make this the core of a TLS transport: no send(2) of our own (the
        socket carries records), no protocol call before the handshake, the
        EOF and the close asked of shell (_tls_eof, _tls_close_first)."""
        self.send_first = False
        self.protocol_connected = False
        self.tls_shell = shell

    def handshaken(self):
        """The handshake is done: the protocol is connected now."""
        self.protocol_connected = True

    def hold_writes(self, bint held):
        """Test hook: held, writes queue (nothing is sent, close() waits)."""
        cdef list backlog
        self.writes_held = held
        if held:
            if self.backlog is None:
                self.backlog = []
            return
        backlog = self.backlog
        while backlog and self.sending < AIO_MAX_INFLIGHT and not self.conn_lost:
            batch = backlog[:AIO_GATHER]
            del backlog[:AIO_GATHER]
            self._post_send(batch if len(batch) > 1 else batch[0])
        if not backlog:
            self.backlog = None
            if not self.sending and self.closing and not self.conn_lost:
                self.conn_lost += 1
                self.call_connection_lost(None)

    def append_backlog(self, data):
        """Test hook: queue data as a write, no flow control."""
        if self.conn_lost or self.conn is None:
            return
        data = bytes(data)
        self.buffer_size += len(data)
        if self.sending >= AIO_MAX_INFLIGHT or self.backlog is not None or self.writes_held:
            if self.backlog is None:
                self.backlog = [data]
            else:
                self.backlog.append(data)
        else:
            self._post_send(data)

    @property
    def alive_(self):
        return self.alive

    @property
    def conn_lost_(self):
        return self.conn_lost

    def mark_lost(self):
        """A close with no connection_lost owed (a handshake given up)."""
        self.closing = True
        self.conn_lost += 1


def aio_conn_socket(AIOConn conn):
    """goaio.aio hook: the ``socket.socket`` of a bound connection (an
    accepted or connected one's, for a transport made from it; None once
    closed)."""
    return conn._socket() if not conn.c.closed else None


def aio_transport_class(base):
    """goaio.aio hook: the asyncio.Transport class of this backend's
    compiled transport (a subclass of ``base``, goaio.aio.GoaioTransport)."""

    class CGoaioTransport(base):
        __slots__ = ("_c", "__weakref__")

        def write(self, data):
            (<AioCore>self._c).write(data)

        def writelines(self, list_of_data):
            (<AioCore>self._c).writelines(list_of_data)

        def write_eof(self):
            (<AioCore>self._c).write_eof()

        def can_write_eof(self):
            return True

        def get_write_buffer_size(self):
            return (<AioCore>self._c).buffer_size

        def is_closing(self):
            return (<AioCore>self._c).closing

        def is_reading(self):
            return (<AioCore>self._c).is_reading()

        def pause_reading(self):
            (<AioCore>self._c).pause_reading()

        def resume_reading(self):
            (<AioCore>self._c).resume_reading()

        def set_protocol(self, protocol):
            (<AioCore>self._c).set_protocol(protocol)

        def get_protocol(self):
            return (<AioCore>self._c).protocol

        def close(self):
            (<AioCore>self._c).close()

        def abort(self):
            (<AioCore>self._c)._force_close(None)

        def _fatal_error(self, exc, message="Fatal error on transport"):
            (<AioCore>self._c)._fatal_error(exc, message)

        def _force_close(self, exc):
            (<AioCore>self._c)._force_close(exc)

        def _make_empty_waiter(self):
            return (<AioCore>self._c).make_empty_waiter()

        def _reset_empty_waiter(self):
            (<AioCore>self._c).reset_empty_waiter()

        @property
        def _sock(self):
            return (<AioCore>self._c).sock

        @property
        def _closing(self):
            return (<AioCore>self._c).closing

        @property
        def _paused(self):
            return (<AioCore>self._c).paused

        @property
        def _protocol(self):
            return (<AioCore>self._c).protocol

        @property
        def _sock_fd(self):
            return (<AioCore>self._c).fd

        @property
        def _held(self):
            # a completed receive kept while reading is paused (its bytes;
            # a pool buffer went back at once), else None
            return (<AioCore>self._c).held

        @property
        def _conn(self):
            return (<AioCore>self._c).conn

    return CGoaioTransport
