"""goaio.aio: loop.sock_recv / sock_recv_into / sock_sendall on goaio.

A mixin of :class:`goaio.aio.Loop`. As asyncio's selector loop does, each call
first tries the system call at once (one ``recv``/``send`` in the common
case); only what would block becomes a goaio operation, posted on a
*borrowed* connection of the loop's service (``svc._bind_borrowed``): the
socket stays the user's, and closing that connection only takes the fd out
of goaio's poller (it never closes the fd nor touches the socket object).

Per user socket the loop keeps a :class:`_SockState` (keyed by fd, checked
against a weak reference to the socket): the borrowed connection, the
receives and the sends waiting, in call order (one goaio receive and one
goaio send in flight at a time), and the bytes of a receive whose caller was
cancelled after goaio had read them (``held``: the next receive gets them
first, so a cancelled ``sock_recv`` loses no byte). The connection is
released (unregistered) as soon as the socket has nothing pending, one loop
iteration later: a socket the user drops is never kept alive by the loop,
and a socket the user closes is never watched. See docs/aio.md,
"sock_* on goaio".

``sock_accept`` and ``sock_connect`` are goaio/_aio_sockconn.py's; the
datagram calls stay asyncio's readiness code, and so does any call on a
socket goaio cannot bind (not a ``SOCK_STREAM`` socket of a supported
family, a listening socket).
"""

import collections
import errno
import os
import socket
import weakref

from asyncio import CancelledError, base_events

from ._errors import Cancelled, ConnClosed, ServiceClosed, UnsupportedConn

_STREAM_FAMILIES = (socket.AF_INET, socket.AF_INET6, getattr(socket, "AF_UNIX", -1))


def _ebadf():
    return OSError(errno.EBADF, os.strerror(errno.EBADF))


def _byte_view(data):
    mv = memoryview(data)
    if mv.format != "B" or mv.ndim != 1 or mv.itemsize != 1:
        mv = mv.cast("B")
    return mv



def _fail(queue, req, exc):
    """A request that could not be posted leaves its queue with ``exc`` (a
    closed connection or service: asyncio's EBADF)."""
    queue.popleft()
    req.fut.set_exception(_ebadf() if isinstance(exc, (ConnClosed, ServiceClosed)) else exc)

class _Req:
    """One waiting sock_* call. Its bound ``_on_done`` is the context of the
    goaio operation that serves it (compared with ``is`` by conn.cancel)."""

    __slots__ = ("st", "fut", "buf", "n", "pos", "cb")
    # what the pure backend's collector reads of a context's owner
    # (goaio/aio.py, _PyCollector.dispatch): never a transport's receive
    _recv_iter = -1
    _read_cb = None

    def __init__(self, st, fut, buf, n):
        self.st = st
        self.fut = fut
        self.buf = buf      # recv_into: the user's buffer; sendall: the view; recv: None
        self.n = n          # recv: the size asked for
        self.pos = 0        # sendall: bytes sent
        self.cb = self._on_done

    def _on_done(self, res):
        raise NotImplementedError


class _RecvReq(_Req):
    __slots__ = ()

    def cancelled(self):
        """The awaiting task was cancelled (CancelledError at the await)."""
        fut = self.fut
        st = self.st
        if not fut.done():
            fut.cancel()
        elif not fut.cancelled():
            # its result had come when the task was cancelled: what it got
            # goes to the next receive
            exc = fut.exception()
            if exc is None:
                got = fut.result()
                data = got if self.buf is None else bytes(_byte_view(self.buf)[:got])
                if data:
                    st.held[:0] = data
                    rop = st.rop
                    if rop is not None and rop is not self:
                        st.withdraw(rop)      # what it reads comes after these
            elif st.held_exc is None:
                st.held_exc = exc
        if st.rop is self:
            # withdraw it; if goaio had read already, _on_done keeps the bytes
            st.withdraw(self)
        else:
            try:
                st.rq.remove(self)
            except ValueError:
                pass
            st.pump_recv()
            st.idle_check()

    def _on_done(self, res):
        st = self.st
        if st.rop is self:
            st.rop = None
        try:
            st.rq.remove(self)
        except ValueError:
            pass
        err = res.err
        k = res.bytes_transferred
        buf = res.buff
        data = None
        if k:
            if self.buf is None:
                data = bytes(memoryview(buf)[:k])
            elif self.fut.done():
                data = bytes(_byte_view(self.buf)[:k])
        if buf is not None and self.buf is None and self.n >= st.share_min:
            st.pool.release(buf)         # a share-buffer receive's pool buffer
        fut = self.fut
        if fut.done():
            # cancelled: what goaio read is the next receive's
            if data:
                st.held += data
            elif err is not None and not isinstance(err, (Cancelled, EOFError, ConnClosed,
                                                          ServiceClosed)):
                st.held_exc = err
        elif st.held:
            # bytes read before came back meanwhile (a task cancelled after
            # its result): they go first, then these, then the error
            if k:
                st.held += data if self.buf is None else _byte_view(self.buf)[:k]
            if err is not None and st.held_exc is None and not isinstance(
                    err, (Cancelled, EOFError, ConnClosed, ServiceClosed)):
                st.held_exc = err
            self.serve_held()
        elif k or err is None:
            fut.set_result(data if self.buf is None else k)
        elif isinstance(err, EOFError):
            fut.set_result(b"" if self.buf is None else 0)
        elif isinstance(err, Cancelled):
            # (not ours: ask again)
            st.rq.appendleft(self)
        elif isinstance(err, (ConnClosed, ServiceClosed)):
            fut.set_exception(_ebadf())
        else:
            fut.set_exception(err)
        st.pump_recv()
        st.idle_check()

    def serve_held(self):
        """Complete from st.held (or st.held_exc)."""
        st = self.st
        held = st.held
        if held:
            if self.buf is None:
                data = bytes(held[:self.n])
                del held[:self.n]
                self.fut.set_result(data)
            else:
                mv = _byte_view(self.buf)
                k = min(len(mv), len(held))
                mv[:k] = held[:k]
                del held[:k]
                self.fut.set_result(k)
        else:
            exc = st.held_exc
            st.held_exc = None
            self.fut.set_exception(exc)


class _SendReq(_Req):
    __slots__ = ()

    def cancelled(self):
        """The awaiting task was cancelled (CancelledError at the await)."""
        fut = self.fut
        st = self.st
        if not fut.done():
            fut.cancel()
        if st.sop is self:
            st.withdraw(self)
        else:
            try:
                st.sq.remove(self)
            except ValueError:
                pass
            st.idle_check()

    def _on_done(self, res):
        st = self.st
        if st.sop is self:
            st.sop = None
        self.pos += res.bytes_transferred
        err = res.err
        fut = self.fut
        try:
            st.sq.remove(self)
        except ValueError:
            pass
        if fut.done():
            pass
        elif err is None:
            fut.set_result(None)
        elif isinstance(err, Cancelled):
            st.sq.appendleft(self)       # (not ours: send the rest)
        elif isinstance(err, (ConnClosed, ServiceClosed)):
            fut.set_exception(_ebadf())
        else:
            fut.set_exception(err)
        st.pump_send()
        st.idle_check()


class _SockState:
    """A user socket's goaio side (see the module's docstring)."""

    __slots__ = ("loop", "fd", "sock_ref", "conn", "rq", "sq", "rop", "sop", "held",
                 "held_exc", "releasing", "pool", "share_min")

    def __init__(self, loop, sock, fd):
        self.loop = loop
        self.fd = fd
        self.sock_ref = weakref.ref(sock)
        self.conn = None
        self.rq = collections.deque()   # receives waiting (rop, if any, among them)
        self.sq = collections.deque()
        self.rop = None                 # the receive whose goaio op is in flight
        self.sop = None
        self.held = bytearray()         # read for a cancelled receive
        self.held_exc = None            # the error a cancelled receive got
        self.releasing = False
        self.pool = loop._pool
        self.share_min = loop._goaio_share_min()

    def withdraw(self, req):
        conn = self.conn
        if conn is not None:
            try:
                conn.cancel(req.cb)
            except (ConnClosed, ServiceClosed):
                pass

    def busy(self):
        return bool(self.rq or self.sq or self.rop is not None or self.sop is not None)

    def ensure_conn(self, sock):
        if self.conn is None:
            self.conn = self.loop._svc._bind_borrowed(sock, recvq_size=2, sendq_size=2,
                                                      share_buff=self.pool)
        return self.conn

    def _posting_conn(self):
        """The borrowed connection to post on, bound now if needed;
        ConnClosed when the socket was closed (or its fd reused) meanwhile."""
        conn = self.conn
        if conn is None:
            sock = self.sock_ref()
            if sock is None or sock.fileno() != self.fd:
                raise ConnClosed()
            conn = self.ensure_conn(sock)
        return conn

    def pump_recv(self):
        rq = self.rq
        while rq and self.rop is None:
            req = rq[0]
            if req.fut.done():
                rq.popleft()
                continue
            if self.held or self.held_exc is not None:
                rq.popleft()
                req.serve_held()
                continue
            try:
                conn = self._posting_conn()
                buf = req.buf
                if buf is None:
                    conn.recv(req.cb, None if req.n >= self.share_min else bytearray(req.n))
                else:
                    conn.recv(req.cb, buf)
            except BaseException as exc:
                _fail(rq, req, exc)
                continue
            self.rop = req
            self.loop._goaio.dirty = True

    def pump_send(self):
        sq = self.sq
        while sq and self.sop is None:
            req = sq[0]
            if req.fut.done():
                sq.popleft()
                continue
            try:
                self._posting_conn().send(req.cb, req.buf[req.pos:])
            except BaseException as exc:
                _fail(sq, req, exc)
                continue
            self.sop = req
            self.loop._goaio.dirty = True

    def idle_check(self):
        """Release the connection one iteration after the socket went idle."""
        if self.releasing or self.busy():
            return
        if self.conn is None:
            self.release()
        else:
            self.releasing = True
            self.loop.call_soon(self._release_if_idle)

    def _release_if_idle(self):
        self.releasing = False
        if not self.busy():
            self.release()

    def release(self, reason=None):
        """Unregister the borrowed connection; forget the socket unless some
        bytes are held for it."""
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.close(reason)
        if not self.held and self.held_exc is None and not self.busy():
            socks = self.loop._goaio_socks
            if socks is not None and socks.get(self.fd) is self:
                del socks[self.fd]


def _goaio_sockable(sock):
    return (type(sock) is socket.socket or isinstance(sock, socket.socket)) \
        and sock.type == socket.SOCK_STREAM and sock.family in _STREAM_FAMILIES


class SockMixin:
    """sock_recv, sock_recv_into, sock_sendall of :class:`goaio.aio.Loop`."""

    #: fd -> _SockState (made on first use)
    _goaio_socks = None
    _goaio_pool_size = 0

    def _goaio_share_min(self):
        """sock_recv(n) with n at least this waits on a share-buffer receive
        (a pool buffer taken only once the data is there, and no more than n
        bytes read); a smaller n on a bytearray(n)."""
        size = self._goaio_pool_size
        if not size:
            size = self._goaio_pool_size = self._pool.stats()["buffer_size"]
        return size

    # -- the per-socket state --

    def _goaio_sock_state(self, sock, fd):
        """The live state of sock (at fd), or None."""
        socks = self._goaio_socks
        if not socks:
            return None
        st = socks.get(fd)
        if st is None:
            return None
        if st.sock_ref() is sock:
            return st
        # fd reused: the old socket was closed (or collected)
        del socks[fd]
        st.held.clear()
        st.held_exc = None
        st.release(_ebadf())
        return None

    def _goaio_new_state(self, sock, fd):
        socks = self._goaio_socks
        if socks is None:
            socks = self._goaio_socks = {}
        st = socks[fd] = _SockState(self, sock, fd)
        try:
            st.ensure_conn(sock)
        except (UnsupportedConn, ValueError, OSError):
            del socks[fd]
            return None
        return st

    def _ensure_fd_no_transport(self, fd):
        super()._ensure_fd_no_transport(fd)
        # a transport or add_reader/add_writer is about to take the fd: an
        # idle borrowed connection goes now (two epoll sets may watch one fd,
        # but bind() would refuse a bound one)
        socks = self._goaio_socks
        if socks:
            fileno = fd if isinstance(fd, int) else fd.fileno()
            st = socks.get(fileno)
            if st is not None and st.conn is not None and not st.busy():
                st.release()

    # -- the calls --

    async def sock_recv(self, sock, n):
        return await self._goaio_sock_recv(sock, None, n, sock.recv, n, "sock_recv")

    async def sock_recv_into(self, sock, buf):
        return await self._goaio_sock_recv(sock, buf, 0, sock.recv_into, buf, "sock_recv_into")

    async def _goaio_sock_recv(self, sock, buf, n, attempt, arg, name):
        """sock_recv / sock_recv_into: ``attempt(arg)`` at once unless calls
        are queued; a would-block waits on goaio (or asyncio's ``name``)."""
        base_events._check_ssl_socket(sock)
        if self._debug and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")
        fd = sock.fileno()
        st = self._goaio_sock_state(sock, fd)
        if st is None or not (st.rq or st.held or st.held_exc is not None):
            try:
                return attempt(arg)
            except (BlockingIOError, InterruptedError):
                pass
        req = self._goaio_recv(sock, fd, st, buf, n)
        if req is None:
            return await getattr(super(), name)(sock, arg)
        try:
            return await req.fut
        except CancelledError:
            req.cancelled()
            raise

    def _goaio_recv(self, sock, fd, st, buf, n):
        """The waiting receive (its .fut), or None: asyncio's then."""
        self._check_closed()        # (as asyncio's _add_reader)
        if st is None:
            self._ensure_fd_no_transport(fd)
            if not _goaio_sockable(sock):
                return None
            st = self._goaio_new_state(sock, fd)
            if st is None:
                return None
        elif not st.rq and st.conn is None:
            self._ensure_fd_no_transport(fd)
        req = _RecvReq(st, self.create_future(), buf, n)
        if buf is None and n <= 0 or buf is not None and not _byte_view(buf).nbytes:
            req.fut.set_result(b"" if buf is None else 0)     # (nothing to wait for)
        else:
            st.rq.append(req)
            st.pump_recv()
        st.idle_check()
        return req

    async def sock_sendall(self, sock, data):
        base_events._check_ssl_socket(sock)
        if self._debug and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")
        fd = sock.fileno()
        st = self._goaio_sock_state(sock, fd)
        if st is None or not st.sq:
            try:
                n = sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            if n == len(data):
                return
        else:
            n = 0
            if not len(data):
                # nothing to send, and nothing to wait for but the sends
                # before it, whose bytes the kernel has or will have
                return
        self._check_closed()        # (as asyncio's _add_writer)
        if st is None:
            self._ensure_fd_no_transport(fd)
            if not _goaio_sockable(sock):
                return await self._goaio_sendall_rest(sock, data, n)
            st = self._goaio_new_state(sock, fd)
            if st is None:
                return await self._goaio_sendall_rest(sock, data, n)
        elif not st.sq and st.conn is None:
            self._ensure_fd_no_transport(fd)
        req = _SendReq(st, self.create_future(), _byte_view(data), 0)
        req.pos = n
        st.sq.append(req)
        st.pump_send()
        try:
            return await req.fut
        except CancelledError:
            req.cancelled()
            raise

    async def _goaio_sendall_rest(self, sock, data, n):
        # asyncio's own path for a socket goaio cannot bind (its first send
        # is done: what is left is asyncio's writer)
        return await super().sock_sendall(sock, memoryview(data)[n:])

    # -- closing --

    def close(self):
        socks = self._goaio_socks
        if socks:
            for st in list(socks.values()):
                conn = st.conn
                st.conn = None
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:
                        pass
            socks.clear()
        super().close()
