"""The pure-Python backend of goaio: any OS whose ``select`` module offers
epoll, kqueue, poll or select (goaio/_purepoll.py holds the pollers).

Layout of the machinery:

* One poller per service, picked when the service is made (the best one
  here, or the one ``GOAIO_PURE_POLLER`` names). The events only set the
  connection's ``readable``/``writable`` flags, which are cleared when a system
  call says ``EAGAIN`` (or a read/write comes back short).
  - Edge-triggered pollers (epoll, kqueue): every bound socket is registered
    once, at bind, for both directions; any byte or buffer space that appears
    after a call raises a new event, so a short transfer proves the socket
    drained.
  - Level-triggered pollers (poll, select): a socket is watched only for what
    it waits for now (``AIOConn._want``): READ while a receive is pending,
    WRITE while a send is queued, nothing while idle, so no ready idle
    socket makes the poller spin.
* Each connection has a lock, a deque of pending receives and one of pending
  sends. All IO on a connection happens under its lock and ``close()`` takes
  the same lock, so the fd is never closed while a thread is inside a system
  call on it.
* Completions go to one deque per service. They are appended while the
  connection's lock is held, so the results of one connection and direction
  enter the queue in posting order.
* Leader/follower: a collector that finds the queue empty polls the epoll
  itself when nobody else does; the ``workers`` threads poll only when no
  collector has been around for ``_GRACE`` seconds. A collector that arrives
  while a worker polls wakes it (the poller's wake fd) and takes over. So a busy collector
  produces and consumes its completions on its own thread.
* Timeouts: one heap of ``(deadline, seq, op)`` per service, lazily
  invalidated; the poller sleeps at most until the earliest deadline.
* No wait is longer than ``_messages.MAX_WAIT``: longer ones, of any size,
  are loops of such slices.
"""

import atexit
import collections
import errno
import time
import heapq
import itertools
import os
import socket
import sys
import threading
import warnings
import weakref
from _thread import allocate_lock as _allocate_lock
from time import monotonic

from . import _messages as M
from ._common import (
    DEFAULT_RECV_BUFF_SIZE,
    AIOResult,
    BufferPool,
    bound_fds,
    check_conn_timeout,
    check_max_results,
    check_send_nbytes as _check_send_nbytes,
    check_socket,
    check_timeout,
    check_workers,
    make_option,
)
from ._pure_ops import SHUTDOWN as _SHUTDOWN, ConnLifecycle, ServiceLifecycle, run_shutdown
from ._pure_connect import Timer as _Timer
from ._pure_listen import Listener
from . import _pure_tls
from . import _pure_reentry
from ._tls import check_bind_tls
from ._errors import (
    Busy,
    ConnClosed,
    EmptyBuffer,
    RecvTimeout,
    SendTimeout,
    ServiceClosed,
    oserror,
)
from ._purepoll import ERR, HUP, READ, WAKE, WRITE, make_poller

__all__ = ["AIOService", "AIOConn", "AIOResult", "BufferPool", "Listener"]

#: events that make a read worth trying / a write worth trying
_IN_EV = READ | HUP | ERR
_OUT_EV = WRITE | ERR
#: events after which a short read no longer proves the socket drained
_HUP_EV = HUP | ERR

_MSG_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)
try:  # the most buffers one readv/writev (recvmsg/sendmsg) takes
    _IOV_MAX = os.sysconf("SC_IOV_MAX")
except (AttributeError, ValueError, OSError):
    _IOV_MAX = 1024
if _IOV_MAX <= 0:
    _IOV_MAX = 1024
#: gather IO in one call where the platform has it (not on Windows)
_HAVE_SENDMSG = hasattr(socket.socket, "sendmsg")
_HAVE_RECVMSG_INTO = hasattr(socket.socket, "recvmsg_into")

#: how long the worker threads leave the poller role to a collector that was
#: recently active, so that a busy collector is not robbed of its completions.
_GRACE = M.WORKER_GRACE
#: the longest single wait of a collector or a poller (see _messages.MAX_WAIT)
_MAX_WAIT = M.MAX_WAIT
_INF = float("inf")

_RECV = 0
_RECV_FULL = 1
_SEND = 2
_START_TLS = _pure_tls.START_TLS

_rnew = object.__new__


def _new_result(conn, ctx, buff, n, err):
    """An AIOResult, made without a call of its class: on CPython 3.11 a
    class call that runs a Python ``__init__`` costs about twice as much as
    setting the slots here (two results per request/answer)."""
    r = _rnew(AIOResult)
    r.conn = conn
    r.context = ctx
    r.buff = buff
    r.bytes_transferred = n
    r.err = err
    return r


#: a send of the first nbytes of a bytes/bytearray sends a copy of them when
#: at most this many (a small copy costs less than two memoryviews)
_COPY_MAX = 2048

#: Per thread: how deep it is inside a share_buff callback (acquire/release).
#: Such a thread may hold a connection's lock, so a svc.close() it calls must
#: not wait for the close to finish.
_tls = threading.local()


def _in_callback():
    return getattr(_tls, "depth", 0) > 0


def _main_ident():
    return threading.main_thread().ident


#: The main thread's id (refreshed in a forked child, whose forking thread is
#: its main thread). Python runs signal handlers only on the main thread,
#: between any two bytecodes, and a handler that raises right after a call of
#: lock.acquire() returns (before the try that releases it) would leave the
#: lock held for good. 'with lock' has no such gap, but costs about twice an
#: explicit acquire()/release() pair (two special-method lookups, a bound
#: method each and an argument tuple: 104 against 48 ns on CPython 3.11), so
#: the once-per-request posting paths take the explicit pair on any other
#: thread (a server's collector) and 'with' on the main thread.
_main_id = _main_ident()
_get_ident = threading.get_ident


# --- buffers -----------------------------------------------------------------

def _view(buff, writable):
    """A byte view pinning ``buff`` (the export is held until release)."""
    try:
        mv = memoryview(buff)
    except TypeError:
        raise TypeError(M.NOT_BUFFER.format(type(buff).__name__)) from None
    if writable and mv.readonly:
        mv.release()
        raise TypeError(M.READ_ONLY.format(type(buff).__name__))
    if not mv.c_contiguous:
        mv.release()
        raise BufferError(M.NOT_CONTIGUOUS)
    if mv.ndim != 1 or mv.format != "B":
        cast = mv.cast("B")
        mv.release()
        mv = cast
    return mv


def _views(buffs, writable):
    """Byte views of every buffer of a list, and their total length."""
    mvs = []
    total = 0
    try:
        for b in buffs:
            mv = _view(b, writable)
            mvs.append(mv)
            total += mv.nbytes
    except BaseException:
        for mv in mvs:
            mv.release()
        raise
    return mvs, total


def _iov(mvs):
    """The views a gather call moves: the non-empty ones. (An empty entry
    would take a slot of the call's IOV_MAX, and a call made only of empty
    entries moves 0 bytes, which a receive would read as EOF.)"""
    for m in mvs:
        if not m.nbytes:
            return [m for m in mvs if m.nbytes]
    return list(mvs)


def _recv_views(buff):
    """(views, iov, total) of a receive buffer or list, checked and pinned."""
    if type(buff) is list:
        mvs, total = _views(buff, True)
        if not total:
            for m in mvs:
                m.release()
            raise EmptyBuffer(M.EMPTY_RECV if mvs else M.EMPTY_LIST)
        return mvs, _iov(mvs), total
    mv = _view(buff, True)
    total = mv.nbytes
    if not total:
        mv.release()
        raise EmptyBuffer(M.EMPTY_RECV)
    return mv, None, total


def _share_view(b):
    """The pinned view of what share_buff.acquire() returned."""
    try:
        mv = _view(b, True)
    except TypeError as exc:
        raise TypeError(M.SHARE_UNUSABLE.format(exc)) from None
    if not mv.nbytes:
        mv.release()
        raise EmptyBuffer(M.SHARE_EMPTY)
    return mv


def _hook_args_type():
    """The type sys.unraisablehook takes (the default hook accepts no other),
    caught once from an exception raised in a __del__."""
    got = []
    hook = sys.unraisablehook
    sys.unraisablehook = got.append
    try:
        class _Raises:
            def __del__(self):
                raise RuntimeError

        _Raises()
    finally:
        sys.unraisablehook = hook
    return type(got[0]) if got else None


_HookArgs = _hook_args_type()


def _unraisable(exc, obj):
    """Report an exception nobody can catch (a user callback's, raised while
    goaio works for another thread), as CPython reports one from a __del__."""
    try:
        args = (type(exc), exc, exc.__traceback__, None, obj)
        sys.unraisablehook(_HookArgs(args) if _HookArgs is not None else args)
    except BaseException:  # noqa: BLE001 - a hook that raises is the user's to fix
        pass


def _release_views(op):
    mv = op.mv
    if mv is not None:
        op.mv = None
        if op.iov is None:
            mv.release()
        else:
            for m in op.iov:
                m.release()
            op.iov = None
            for m in mv:
                m.release()


def _advance(op, n):
    """Move a gather op's iovec past ``n`` more transferred bytes.

    ``op.iov`` holds the op's own views, except that its head may be a slice
    made at an earlier partial transfer (``op.cut``), released once passed.
    """
    iov = op.iov
    i = 0
    for m in iov:
        ln = m.nbytes
        if n < ln:
            break
        n -= ln
        i += 1
    cut = op.cut
    if i or n:
        if cut is not None:
            op.cut = None
            if i:
                cut.release()
        rest = iov[i:]
        if n:
            head = rest[0]
            rest[0] = op.cut = head[n:]
            if head is cut:
                cut.release()
        op.iov = rest


def _sendv(sock, iov, flags):
    """Write a list of views: one sendmsg, or, where there is none, send()
    per view until one comes back short. Raises like send() if nothing went."""
    if _HAVE_SENDMSG:
        if len(iov) > _IOV_MAX:
            iov = iov[:_IOV_MAX]
        return sock.sendmsg(iov, (), flags), sum([m.nbytes for m in iov])
    done = 0
    for m in iov:
        try:
            n = sock.send(m, flags)
        except BlockingIOError:
            if done:
                return done, done + 1  # short: the socket is full
            raise
        done += n
        if n < m.nbytes:
            return done, done + 1
    return done, done


def _recvv(sock, iov):
    """Read into a list of views: one recvmsg_into, or recv_into per view
    until one comes back short. Returns (bytes, bytes asked)."""
    if _HAVE_RECVMSG_INTO:
        if len(iov) > _IOV_MAX:
            iov = iov[:_IOV_MAX]
        return sock.recvmsg_into(iov)[0], sum([m.nbytes for m in iov])
    done = 0
    for m in iov:
        try:
            n = sock.recv_into(m)
        except BlockingIOError:
            if done:
                return done, done + 1  # short: drained
            raise
        done += n
        if n < m.nbytes:
            return done, done + 1
    return done, done


class _Op:
    """One pending operation. Its views pin the user's buffer(s)."""

    __slots__ = ("conn", "ctx", "buff", "mv", "iov", "cut", "done", "total", "kind", "deadline")

    def __init__(self, conn, ctx, buff, mv, iov, total, kind):
        self.conn = conn
        self.ctx = ctx
        self.buff = buff
        self.mv = mv          # memoryview, a list of them (gather IO), or None (recv(ctx, None))
        self.iov = iov        # gather IO: the views still to transfer; else None
        self.cut = None       # gather IO: our slice at the head of iov, if any
        self.done = 0
        self.total = total
        self.kind = kind
        self.deadline = None


def _new_op(conn, ctx, buff, mv, total, kind):
    """_Op(conn, ctx, buff, mv, None, total, kind), made as _new_result is."""
    op = _rnew(_Op)
    op.conn = conn
    op.ctx = ctx
    op.buff = buff
    op.mv = mv
    op.iov = None
    op.cut = None
    op.done = 0
    op.total = total
    op.kind = kind
    op.deadline = None
    return op


# --- connections ---------------------------------------------------------------

class AIOConn(ConnLifecycle):
    """A socket bound to an :class:`AIOService`; post ``recv``/``send`` on it."""

    __slots__ = (
        "_svc", "_sock", "_fd", "_lock", "_recvq", "_sendq", "_readable", "_writable",
        "_rdhup", "_eof", "_closed", "_active", "_rq_max", "_sq_max", "_share",
        "_rto", "_sto", "_recv_into", "_send", "_q_append", "_ref", "_level", "_interest",
        "_tls", "user_data", "_gc", "_borrowed", "__weakref__",
    )

    def __init__(self, *args, **kwargs):
        raise TypeError(M.NOT_MADE_BY_BIND)

    def _setup(self, svc, sock, fd, option, borrowed=False):
        # bind() makes connections through __new__ and this (as compiled does)
        self._svc = svc
        self._sock = sock
        self._fd = fd
        self._lock = threading.Lock()
        # lists, not deques: they hold at most a few dozen ops, and an idle
        # connection should cost little memory
        self._recvq = []
        self._sendq = []
        # The registration raises an event at once if the socket is ready, so
        # 'readable' starts False (no share buffer is taken on a guess).
        self._readable = False
        self._writable = True
        self._rdhup = False
        self._eof = False
        self._closed = False
        self._active = False
        self._rq_max = option.recvq_size
        self._sq_max = option.sendq_size
        self._share = option.share_buff
        self.user_data = option.user_data
        self._rto = 0.0
        self._sto = 0.0
        self._recv_into = sock.recv_into
        self._send = sock.send
        self._q_append = svc._q.append
        self._init_lifecycle()
        self._ref = weakref.ref(self)   # the poller's token
        self._level = not svc._poller.edge
        self._interest = 0              # level-triggered poller: what it watches for us
        # the close of a connection garbage-collected unclosed: a weakref
        # callback, whose weakref close() drops, so a closed connection runs
        # no Python code when dropped (no __del__: an exception there, a
        # KeyboardInterrupt say, is lost). Not weakref.finalize: it stops
        # calling back once its atexit hook has run, before services close.
        wr = weakref.ref(self, _gc_close)
        self._gc = key = id(wr)
        _unclosed[key] = (wr, svc, sock, fd, self._ref, borrowed)
        self._tls = None                # TLS: the _pure_tls.Layer between ops and socket
        self._borrowed = borrowed       # svc._bind_borrowed: close() leaves the fd open

    # -- public attributes --

    @property
    def fd(self):
        """The socket's fd, ``-1`` once closed."""
        return -1 if self._closed else self._fd

    @property
    def closed(self):
        return self._closed

    def __repr__(self):
        try:
            state = "closed" if self._closed else f"fd={self._fd}"
        except AttributeError:
            state = "?"
        return f"<goaio.AIOConn {state} (pure)>"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- TLS (goaio/_pure_tls.py) --

    @property
    def tls(self):
        """A :class:`goaio.TLSInfo` on a TLS connection, None on a plain one."""
        layer = self._tls
        return None if layer is None or layer.phase == _pure_tls.WAITING else layer.info

    def start_tls(self, context, ssl, *, server_side=False, server_hostname=None,
                  ssl_handshake_timeout=None):
        """Upgrade to TLS once the sends posted before are written; completes
        (``res.conn`` this connection) when the handshake is done."""
        _pure_tls.start_tls(self, context, ssl, server_side, server_hostname, ssl_handshake_timeout,
                            _new_start_op)

    # -- posting --

    def _closed_or_stale(self):
        """Raise ConnClosed; first, if the user closed the socket behind our
        back (the number may belong to another file now, which must never see
        our IO), close the connection: pending ops get OSError(EBADF)."""
        if not self._closed:
            self.close(oserror(errno.EBADF))
        raise ConnClosed(M.CONN_CLOSED)

    def _evict_if_stale(self, fd):
        """The bound-fd registry's hook, per connection: close it if its
        socket no longer owns fd; True when it did."""
        if self._closed or self._fd != fd or self._sock.fileno() == fd:
            return False
        self.close(oserror(errno.EBADF))
        return True

    def recv(self, context, buff=None):
        """Read some bytes into ``buff`` (a buffer, a list of them, or None)."""
        svc = self._svc
        if svc._closed:
            raise ServiceClosed(M.SERVICE_CLOSED)
        if self._closed or self._sock.fileno() != self._fd:
            self._closed_or_stale()
        if type(buff) is bytearray:
            # the common case, with nothing to check: a bytearray is writable,
            # contiguous and made of bytes
            total = len(buff)
            if not total:
                raise EmptyBuffer(M.EMPTY_RECV)
            # _new_op(), inlined: this runs once per request of a server
            op = _rnew(_Op)
            op.conn = self
            op.ctx = context
            op.buff = buff
            op.mv = memoryview(buff)
            op.iov = op.cut = op.deadline = None
            op.done = 0
            op.total = total
            op.kind = _RECV
            if _get_ident() != _main_id:
                # the commonest case of all (an answer went out, the next
                # request is not here yet): queue it, the event will come.
                # Off the main thread, with the cheaper explicit lock (see
                # _main_id); the main thread takes _post_recv's 'with'
                lk = self._lock
                lk.acquire()
                try:
                    if (not self._recvq and not self._readable and self._tls is None and not self._closed
                            and not self._eof and not self._rto and not self._level):
                        self._recvq.append(op)
                        if not self._active:
                            self._active = True
                            svc._active.add(self)
                        return None
                finally:
                    lk.release()
            return self._post_recv(op)
        if buff is None:
            return self._post_recv(_new_op(self, context, None, None, 0, _RECV))
        return self._post_recv(_Op(self, context, buff, *_recv_views(buff), _RECV))

    def recv_full(self, context, buff):
        """Read until ``buff`` (a buffer or a list of them) is full."""
        svc = self._svc
        if svc._closed:
            raise ServiceClosed(M.SERVICE_CLOSED)
        if self._closed or self._sock.fileno() != self._fd:
            self._closed_or_stale()
        if buff is None:
            raise TypeError(M.RECV_FULL_NEEDS_BUFFER)
        return self._post_recv(_Op(self, context, buff, *_recv_views(buff), _RECV_FULL))

    def _post_recv(self, op):
        # 'with', not acquire()/try: a signal handler raising right after an
        # acquire() call would leave the lock held for good
        with self._lock:
            if self._closed:
                _release_views(op)
                raise ConnClosed(M.CONN_CLOSED)
            rq = self._recvq
            if len(rq) >= self._rq_max:
                _release_views(op)
                raise Busy(M.RECVQ_FULL)
            rq.append(op)
            if not self._active:
                self._active = True
                self._svc._active.add(self)
            n = 0
            try:
                if self._eof:
                    n = self._fail_recvs_eof()
                elif len(rq) == 1 and (self._readable or self._tls is not None):
                    n = self._run_recvs()
            except BaseException:
                # a signal handler raised here: the poller re-checks readiness,
                # so the op queued is not left waiting for an event consumed
                self._svc._request_recheck()
                raise
            if rq:
                if self._rto and op.conn is not None:
                    self._svc._arm(op, monotonic() + self._rto)
            elif self._active and not self._sendq:
                self._active = False
                self._svc._active.discard(self)
            if self._level:
                self._want()
        if n:
            svc = self._svc
            if svc._cwaiters or svc._pcoll:
                svc._wake_for_results()

    def send(self, context, buff, *, nbytes=None):
        """Write every byte of ``buff`` (a bytes-like object or a list of
        them), or its first ``nbytes`` bytes (one buffer)."""
        svc = self._svc
        if svc._closed:
            raise ServiceClosed(M.SERVICE_CLOSED)
        if self._closed or self._sock.fileno() != self._fd:
            self._closed_or_stale()
        if self._shut:
            raise BrokenPipeError(M.SEND_AFTER_SHUTDOWN)
        tb = type(buff)
        if tb is bytes or tb is bytearray:
            # the common case: nothing to check but nbytes, and an idle
            # writable socket takes the bytes without a view or an _Op
            blen = len(buff)
            total = blen
            if nbytes is not None:
                if type(nbytes) is not int or nbytes < 0 or nbytes > blen:
                    nbytes = _check_send_nbytes(nbytes, buff)
                    if nbytes > blen:
                        raise ValueError(M.SEND_NBYTES_RANGE.format(blen, nbytes))
                total = nbytes
            if total and (total == blen or total <= _COPY_MAX) and _get_ident() != _main_id:
                # off the main thread (see _main_id): the explicit lock
                lk = self._lock
                lk.acquire()
                try:
                    if self._writable and not self._sendq and self._tls is None and not self._closed:
                        # the commonest outcome inline (once per answer of a
                        # server): the idle socket takes every byte, no _Op
                        try:
                            done = self._send(buff if total == blen else buff[:total], _MSG_NOSIGNAL)
                        except OSError as exc:
                            n = self._send_rest(context, buff, blen, total, 0, exc)
                        else:
                            if done == total:
                                self._nops += 1
                                self._bsent += done
                                r = _rnew(AIOResult)        # _new_result(), inlined
                                r.conn = self
                                r.context = context
                                r.buff = buff
                                r.bytes_transferred = done
                                r.err = None
                                self._q_append(r)
                                n = 1
                            else:
                                n = self._send_rest(context, buff, blen, total, done, None)
                        if n and (svc._cwaiters or svc._pcoll):
                            svc._wake_for_results()
                        return
                finally:
                    lk.release()
            mv = memoryview(buff)
            if total < blen:
                part = mv[:total]
                mv.release()
                mv = part
            iov = None
            with self._lock:
                n = self._send_locked(context, buff, mv, iov, total)
            if n:
                if svc._cwaiters or svc._pcoll:
                    svc._wake_for_results()
            return
        if nbytes is not None:
            nbytes = _check_send_nbytes(nbytes, buff)
        if tb is list:
            mv, total = _views(buff, False)
            iov = _iov(mv)
        else:
            mv = _view(buff, False)
            total = mv.nbytes
            iov = None
            if nbytes is not None:
                if nbytes > total:
                    mv.release()
                    raise ValueError(M.SEND_NBYTES_RANGE.format(total, nbytes))
                if nbytes < total:
                    part = mv[:nbytes]
                    mv.release()
                    mv = part
                    total = nbytes
        with self._lock:
            n = self._send_locked(context, buff, mv, iov, total)
        if n:
            if svc._cwaiters or svc._pcoll:
                svc._wake_for_results()

    def _send_locked(self, context, buff, mv, iov, total):
        """send() with the connection's lock held; returns how many results it made."""
        svc = self._svc
        if self._closed:
            if iov is None:
                mv.release()
            else:
                for m in mv:
                    m.release()
            raise ConnClosed(M.CONN_CLOSED)
        sq = self._sendq
        done = 0
        tls = self._tls
        if tls is not None and not sq and self._writable and iov is None and total and tls.fast_ok(total):
            # TLS fast path: encrypt and write at once (_pure_tls.Layer.fast_send)
            done = tls.fast_send(self, context, buff, mv, total)
            if done < 0:
                return 1
        elif not sq and self._writable and iov is None and total and tls is None:
            # fast path: an idle writable socket usually takes it all at
            # once, and then no _Op is needed
            try:
                done = self._send(mv, _MSG_NOSIGNAL)
            except BlockingIOError:
                self._writable = False
            except InterruptedError:
                pass
            except OSError as exc:
                mv.release()
                self._nops += 1
                self._q_append(_new_result(self, context, buff, 0,
                                           oserror(exc.errno) if exc.errno else exc))
                done = -1
            else:
                if done == total:
                    mv.release()
                    self._nops += 1
                    self._bsent += done
                    self._q_append(_new_result(self, context, buff, done, None))
                    done = -1
                else:
                    self._writable = False
            if done < 0:
                return 1
        elif len(sq) >= self._sq_max:
            if iov is None:
                mv.release()
            else:
                for m in mv:
                    m.release()
            raise Busy(M.SENDQ_FULL)
        return self._queue_send(context, buff, mv, iov, total, done)

    def _send_rest(self, context, buff, blen, total, done, exc):
        """send()'s fast path when the socket did not take every byte at once
        (lock held; no send queued, no TLS): ``done`` bytes of the first
        ``total`` of a bytes or bytearray written, or the write raised
        ``exc``. What is left waits in an _Op, pinned by a view. Returns how
        many results it made."""
        if exc is not None:
            if isinstance(exc, BlockingIOError):
                self._writable = False
            elif not isinstance(exc, InterruptedError):
                self._nops += 1
                self._q_append(_new_result(self, context, buff, 0, oserror(exc.errno) if exc.errno else exc))
                return 1
        else:
            self._writable = False
        mv = memoryview(buff)
        if total < blen:
            part = mv[:total]
            mv.release()
            mv = part
        return self._queue_send(context, buff, mv, None, total, done)

    def _queue_send(self, context, buff, mv, iov, total, done):
        """Queue a send, ``done`` of its bytes written (lock held)."""
        svc = self._svc
        sq = self._sendq
        op = _Op(self, context, buff, mv, iov, total, _SEND)
        op.done = done
        sq.append(op)
        if not self._active:
            self._active = True
            svc._active.add(self)
        n = 0
        try:
            if len(sq) == 1 and (self._writable or not total):
                n = self._run_sends()
        except BaseException:
            svc._request_recheck()  # as in _post_recv
            raise
        if sq:
            if self._sto and op.conn is not None:
                svc._arm(op, monotonic() + self._sto)
        elif self._active and not self._recvq:
            self._active = False
            svc._active.discard(self)
        if self._level:
            self._want()
        return n

    # -- IO (the connection's lock is held) --

    def _want(self):
        """Level-triggered poller: have it watch for what this connection now
        waits for, and nothing else (an idle ready socket would spin it)."""
        if self._tls is None:
            want = (READ if self._recvq else 0) | (WRITE if self._sendq else 0)
        else:
            want = self._tls.want(self)
        if want != self._interest:
            self._interest = want
            try:
                self._svc._poller.modify(self._fd, self._ref, want)
            except (OSError, ValueError):
                pass  # closed behind our back: the next send/recv says EBADF

    def _finish(self, op, n, err):
        """Complete ``op``: release its views and queue its result."""
        if op.iov is None:
            mv = op.mv
            if mv is not None:
                op.mv = None
                mv.release()
        else:
            _release_views(op)
        op.conn = None
        self._nops += 1
        if op.kind == _SEND:
            self._bsent += n
        elif op.kind != _SHUTDOWN:
            self._brecv += n
        self._q_append(_new_result(self, op.ctx, op.buff, n, err))

    def _run_recvs(self):
        """Serve pending receives while the socket is readable; returns results made."""
        if self._tls is not None:
            return self._tls.run_recvs(self)
        rq = self._recvq
        count = 0
        while rq:
            op = rq[0]
            mv = op.mv
            if op.kind == _RECV and op.iov is None and mv is not None:
                # a receive into one buffer: completes with the first bytes
                try:
                    n = self._recv_into(mv)
                except BlockingIOError:
                    self._readable = False
                    return count
                except InterruptedError:
                    continue
                except OSError as exc:
                    rq.pop(0)
                    self._finish(op, 0, oserror(exc.errno) if exc.errno else exc)
                    return count + 1 + self._fail_recvs_error(exc)
                if not n:
                    return count + self._fail_recvs_eof()
                rq.pop(0)
                op.mv = None
                mv.release()
                op.conn = None
                self._nops += 1
                self._brecv += n
                r = _rnew(AIOResult)        # _new_result(), inlined (once per request)
                r.conn = self
                r.context = op.ctx
                r.buff = op.buff
                r.bytes_transferred = n
                r.err = None
                self._q_append(r)
                count += 1
                if n < op.total and not self._rdhup:
                    self._readable = False
                    return count
                continue
            pooled = None
            if mv is None:
                # recv(ctx, None): take a buffer only now that data is ready
                try:
                    b, mv, pooled = self._take_buffer()
                except BaseException as exc:
                    # any exception, KeyboardInterrupt included, is this
                    # receive's result: it must not kill the polling thread
                    rq.pop(0)
                    self._finish(op, 0, exc)
                    count += 1
                    continue
                try:
                    n = self._recv_into(mv)
                except BlockingIOError:
                    mv.release()
                    if pooled is not None:
                        self._give_back(pooled)
                    self._readable = False
                    return count
                except InterruptedError:
                    mv.release()
                    if pooled is not None:
                        self._give_back(pooled)
                    continue
                except OSError as exc:
                    mv.release()
                    if pooled is not None:
                        self._give_back(pooled)
                    rq.pop(0)
                    self._finish(op, 0, oserror(exc.errno) if exc.errno else exc)
                    return count + 1 + self._fail_recvs_error(exc)
                ln = mv.nbytes
                mv.release()
                if not n:
                    if pooled is not None:
                        self._give_back(pooled)
                    return count + self._fail_recvs_eof()
                rq.pop(0)
                op.buff = b
                op.conn = None
                self._nops += 1
                self._brecv += n
                res = _new_result(self, op.ctx, b, n, None)
                if pooled is not None:
                    self._svc._pooled[id(res)] = res
                self._q_append(res)
                count += 1
                if n < ln and not self._rdhup:
                    self._readable = False
                    return count
                continue
            iov = op.iov
            done = op.done
            try:
                if iov is None:
                    want = op.total - done
                    n = self._recv_into(mv[done:] if done else mv)
                else:
                    n, want = _recvv(self._sock, iov)
            except BlockingIOError:
                self._readable = False
                return count
            except InterruptedError:
                continue
            except OSError as exc:
                rq.pop(0)
                self._finish(op, done, oserror(exc.errno) if exc.errno else exc)
                return count + 1 + self._fail_recvs_error(exc)
            if not n:
                return count + self._fail_recvs_eof()
            done += n
            if op.kind == _RECV or done >= op.total:
                rq.pop(0)
                if iov is None:
                    op.mv = None
                    mv.release()
                    op.conn = None
                    self._nops += 1
                    self._brecv += done
                    self._q_append(_new_result(self, op.ctx, op.buff, done, None))
                else:
                    self._finish(op, done, None)
                count += 1
            else:
                op.done = done
                if iov is not None:
                    _advance(op, n)
            if n < want and not self._rdhup:
                self._readable = False
                return count
        return count

    def _fail_recvs_eof(self):
        """The peer closed: every pending receive completes with EOFError."""
        self._eof = True
        rq = self._recvq
        ops = rq[:]
        rq.clear()
        for op in ops:
            self._finish(op, op.done, EOFError(M.PEER_CLOSED))
        return len(ops)

    def _fail_recvs_error(self, exc):
        """A read failed (the peer reset the connection, say): every receive
        pending now completes with that error, each with its own instance,
        as all of them get EOFError at EOF. The error is not sticky: a
        receive posted later gets what the socket then reports."""
        rq = self._recvq
        ops = rq[:]
        rq.clear()
        for op in ops:
            self._finish(op, op.done, oserror(exc.errno) if exc.errno else exc)
        return len(ops)

    def _run_sends(self):
        """Write pending sends while the socket is writable; returns results made."""
        tls = self._tls
        if tls is not None and tls.phase != _pure_tls.WAITING:
            return tls.run_sends(self)
        sq = self._sendq
        count = 0
        while sq:
            op = sq[0]
            total = op.total
            if not total:
                sq.pop(0)
                if op.kind == _SHUTDOWN:
                    run_shutdown(self, op)
                elif op.kind == _START_TLS:
                    # the sends before it are written: the rest waits for the handshake
                    return count + _pure_tls.begin_start(self, op)
                else:
                    self._finish(op, 0, EmptyBuffer(M.EMPTY_SEND))
                count += 1
                continue
            if not self._writable:
                return count
            done = op.done
            iov = op.iov
            try:
                if iov is None:
                    mv = op.mv
                    want = total - done
                    n = self._send(mv[done:] if done else mv, _MSG_NOSIGNAL)
                else:
                    n, want = _sendv(self._sock, iov, _MSG_NOSIGNAL)
            except BlockingIOError:
                self._writable = False
                return count
            except InterruptedError:
                continue
            except OSError as exc:
                sq.pop(0)
                err = oserror(exc.errno) if exc.errno else exc
                if self._shut == 1:   # the pending shutdown fails with it
                    self._shut_err = err
                self._finish(op, done, err)
                count += 1
                continue
            done += n
            if done >= total:
                sq.pop(0)
                if iov is None:
                    op.mv = None
                    mv.release()
                    op.conn = None
                    self._nops += 1
                    self._bsent += total
                    self._q_append(_new_result(self, op.ctx, op.buff, total, None))
                else:
                    self._finish(op, total, None)
                count += 1
                continue
            op.done = done
            if iov is not None:
                _advance(op, n)
            if n < want:
                self._writable = False
                return count
        return count

    def _take_buffer(self):
        """The buffer of a ``recv(ctx, None)`` whose data is here: a share
        buffer (or a new one), as (buffer, its view, the pooled buffer or
        None). What
        acquire() raises, KeyboardInterrupt included, is raised with nothing
        held."""
        share = self._share
        pooled = b = None
        try:
            if share is not None:
                _tls.depth = getattr(_tls, "depth", 0) + 1
                try:
                    b = share.acquire()
                finally:
                    _tls.depth -= 1
                pooled = b
            if b is None:
                b = bytearray(DEFAULT_RECV_BUFF_SIZE)
            return b, _share_view(b), pooled
        except BaseException:
            if pooled is not None:
                self._give_back(pooled)
            raise

    def _give_back(self, buff):
        """Return a share buffer the user never saw. A release() that raises
        loses nothing: its error goes to sys.unraisablehook."""
        release = self._share.release
        _tls.depth = getattr(_tls, "depth", 0) + 1
        try:
            release(buff)
        except BaseException as exc:
            _unraisable(exc, release)
        finally:
            _tls.depth -= 1

    def _timeout(self, op):
        """A deadline passed (called with the connection's lock held)."""
        if op.kind >= _SEND:   # a send or a shutdown
            sq = self._sendq
            try:
                i = sq.index(op)
            except ValueError:
                return 0
            # this send and every send queued behind it: the stream then holds
            # exactly the bytes reported, and the user can resend in order
            count = 0
            while len(sq) > i:
                o = sq.pop(i)
                if o.kind == _SHUTDOWN:
                    self._shut = 0
                elif o.kind == _START_TLS:
                    _pure_tls.drop_start(self)
                self._finish(o, o.done, SendTimeout(M.SEND_TIMEOUT))
                count += 1
            return count
        rq = self._recvq
        try:
            rq.remove(op)
        except ValueError:
            return 0
        self._finish(op, op.done, RecvTimeout(M.RECV_TIMEOUT))
        return 1

    # -- timeouts --

    def set_recv_timeout(self, seconds):
        """Every pending and later receive must complete within ``seconds``."""
        s = check_conn_timeout(seconds)
        self._set_timeout(s, True)

    def set_send_timeout(self, seconds):
        """Every pending and later send must complete within ``seconds``."""
        s = check_conn_timeout(seconds)
        self._set_timeout(s, False)

    def _set_timeout(self, s, recv):
        if s == _INF:  # no limit: no timer
            s = 0.0
        svc = self._svc
        with self._lock:
            if recv:
                self._rto = s
                q = self._recvq
            else:
                self._sto = s
                q = self._sendq
            if self._closed or not q:
                return
            if s:
                svc._arm_many(q, monotonic() + s)
            else:
                for op in q:
                    op.deadline = None

    # -- closing --

    def close(self, reason=None):
        """Close the connection and its socket; pending operations complete
        with ``reason`` (or a fresh ``ConnClosed``)."""
        if reason is not None and not isinstance(reason, BaseException):
            raise TypeError(M.REASON_TYPE)
        if _pure_reentry.nested():      # a signal handler inside our code on this thread
            _pure_reentry.later(self.close, reason)
            return
        svc = self._svc
        with self._lock:
            if self._closed:
                return
            self._closed = True
            _unclosed.pop(self._gc, None)
            n = armed = 0
            for q in (self._recvq, self._sendq):
                ops = q[:]
                q.clear()
                for op in ops:
                    if op.deadline is not None:
                        armed += 1
                    self._finish(op, op.done, ConnClosed(M.CONN_CLOSED) if reason is None else reason)
                n += len(ops)
            if self._active:
                self._active = False
                svc._active.discard(self)
            tls = self._tls
            if tls is not None:
                n += tls.closed(self, reason)
            self._fold()
            self._release_fd()
        if tls is not None:
            tls.run_later()
        if armed:
            svc._drop_timers(armed)
        if n and (svc._cwaiters or svc._pcoll):
            svc._wake_for_results()

    def _release_fd(self):
        """Unregister and close the fd (lock held, or no other reference)."""
        _release_fd(self._svc, self._sock, self._fd, self._ref, self._borrowed)


def _release_fd(svc, sock, fd, ref, borrowed=False):
    """Unregister and close a connection's fd (a borrowed one's only
    unregistered: the fd and the socket object stay their owner's). Takes no
    lock: bound_fds.discard is lock-free."""
    try:
        mine = (sock.fileno() if borrowed else sock.detach()) == fd
    except Exception:
        mine = False
    try:
        svc._poller.unregister(fd, ref, forget=not mine)
    except (OSError, ValueError):
        pass
    svc._fdmap.pop(fd, None)
    bound_fds.discard(fd)
    if mine and not borrowed:
        # (had the user closed the socket object himself, the number
        # might already belong to another file: it is left alone)
        try:
            os.close(fd)
        except OSError:
            pass


#: The connections bound and not closed: id(weakref) -> (weakref with the
#: _gc_close callback, service, socket, fd, poller token, borrowed).
_unclosed = {}


def _gc_close(wr):
    """A bound connection was garbage-collected unclosed (so with nothing
    pending: a pending operation keeps it alive): close its socket and warn,
    as socket does. Runs in whatever thread dropped the last reference,
    possibly in the middle of our own code: it takes no lock. (The counters
    of the connection are gone with it.)"""
    st = _unclosed.pop(id(wr), None)
    if st is None:
        return
    _wr, svc, sock, fd, ref, borrowed = st
    try:
        _release_fd(svc, sock, fd, ref, borrowed)
    finally:
        # A connection of a service being closed is not leaked: the service
        # closes it anyway (results dropped meanwhile, say), as in compiled.
        # Under an 'error' filter the warning surfaces as an unraisable
        # exception, after the fd is closed.
        if not svc._closed:
            warnings.warn(f"unclosed goaio connection fd={fd} (pure)", ResourceWarning, stacklevel=2)


# --- the service -----------------------------------------------------------------

_live_lock = threading.Lock()
_live = weakref.WeakSet()


class AIOService(ServiceLifecycle):
    """Bound connections, their pending operations and the completion queue."""

    def __init__(self, workers=1):
        workers = check_workers(workers)
        self._lock = threading.Lock()
        self._ccond = threading.Condition(self._lock)   # collectors wait here
        self._wcond = threading.Condition(self._lock)   # workers wait here
        self._q = collections.deque()
        self._pooled = {}          # id(result) -> result holding a share buffer
        self._fdmap = {}           # fd -> weakref(AIOConn)
        self._active = set()       # connections with operations pending (kept alive)
        self._tls_starting = set() # ... and those whose start_tls op is in its handshake
                                   # (in neither queue: _pure_tls.Layer.start_op)
        self._timers = []          # heap of (deadline, seq, op)
        self._tseq = itertools.count().__next__
        self._tcompact = 256
        self._tdead = 0            # entries of closed connections' ops (see _drop_timers)
        self._closed = False
        self._polling = False      # somebody holds the poller role
        self._pcoll = False        # ... and it is a collector
        self._poller_ident = None
        self._wake_at = _INF       # when the current poller wakes up at the latest
        self._wake_pending = False
        self._cwaiters = 0
        self._mwaiters = []        # the main thread's wait locks (see _collect)
        self._wwaiting = 0
        self._last_cpoll = 0.0
        # A collector took results straight from the queue (the fast paths of
        # get_complete_status*) since a worker last looked, and the last one
        # to wait in _collect could poll (not the main thread): that
        # collector is active, so a worker leaves the poll to it.
        self._qtaken = False
        self._cpolls = False
        self._polls_c = 0          # poll rounds done by collectors / by workers
        self._polls_w = 0
        self._closer = None        # the thread that runs close()
        self._close_done = threading.Event()
        self._recheck = False      # an exception may have cut a round short: re-check readiness
        self._poller = poller = make_poller()   # GOAIO_PURE_POLLER, else the best one here
        # epoll: its events are dispatched as the OS gives them (_dispatch)
        raw = getattr(poller, "raw_tokens", None)
        self._raw_get = None if raw is None else raw.get
        self._wait = poller.wait if raw is None else poller.wait_raw
        self._notify_fd = -1           # goaio.aio hook (_set_notify_fd)
        self._external = False         # goaio.aio hook (_set_external_collector)
        self._grace = _GRACE           # goaio.aio hook (_set_worker_grace)
        self._write_wake = self._poller.wake
        self._init_lifecycle()
        with _live_lock:
            _live.add(self)
        self._threads = []
        for i in range(workers):
            t = threading.Thread(target=self._worker, name=f"goaio-pure-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def __repr__(self):
        return f"<goaio.AIOService (pure) {'closed' if self._closed else 'open'} conns={len(self._fdmap)}>"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- binding --

    def bind(self, sock, option=None, *, ssl=None, server_side=False, server_hostname=None,
             ssl_handshake_timeout=None, **kwargs):
        """Bind a connected stream socket; returns its :class:`AIOConn`. With
        ``ssl`` (an ``ssl.SSLContext``) the connection runs TLS: operations
        may be posted at once and run after the handshake."""
        if self._closed:
            raise ServiceClosed(M.SERVICE_CLOSED)
        tls = check_bind_tls(ssl, server_side, server_hostname, ssl_handshake_timeout)
        conn = self._bind(sock, option, kwargs)
        if tls is not None:
            _pure_tls.attach(conn, tls)
        return conn

    def _bind_borrowed(self, sock, option=None, **kwargs):
        """goaio.aio hook: bind a socket its owner keeps (asyncio's
        loop.sock_* calls). The connection's close() only takes the fd out of
        the poller: it never closes the fd nor touches the socket object."""
        if self._closed:
            raise ServiceClosed(M.SERVICE_CLOSED)
        return self._bind(sock, option, kwargs, True)

    def _bind(self, sock, option, kwargs, borrowed=False):
        fd = check_socket(sock)
        bound_fds.add(fd)
        try:
            opt = make_option(option, kwargs)
            sock.setblocking(False)
            conn = AIOConn.__new__(AIOConn)
            conn._setup(self, sock, fd, opt, borrowed)
            try:
                with self._lock:
                    if self._closed:
                        raise ServiceClosed(M.SERVICE_CLOSED)
                    self._fdmap[fd] = conn._ref
                    try:
                        # edge-triggered: once, for good; level-triggered:
                        # for nothing until an operation waits
                        self._poller.register(fd, conn._ref, 0 if conn._level else READ | WRITE)
                    except BaseException:
                        del self._fdmap[fd]
                        raise
            except BaseException:
                conn._closed = True  # the socket stays the user's: no close when collected
                _unclosed.pop(conn._gc, None)
                raise
        except BaseException:
            bound_fds.discard(fd)
            raise
        return conn

    # -- collecting --

    def get_complete_status(self, timeout=None):
        """The next completion (an :class:`AIOResult`), or None once ``timeout`` expired."""
        if timeout is not None:
            timeout = check_timeout(timeout)
        if self._closed:
            raise ServiceClosed(M.SERVICE_CLOSED)
        q = self._q
        if q:
            try:
                res = q.popleft()
            except IndexError:
                pass
            else:
                self._qtaken = True
                if self._pooled:
                    self._claim(res)
                return res
        got = self._collect(1, timeout)
        return got[0] if got else None

    def get_complete_statuses(self, max_results=64, timeout=None):
        """Up to ``max_results`` completions; ``[]`` once ``timeout`` expired."""
        check_max_results(max_results)
        if timeout is not None:
            timeout = check_timeout(timeout)
        if self._closed:
            raise ServiceClosed(M.SERVICE_CLOSED)
        q = self._q
        if q:
            out = []
            pop = q.popleft
            try:
                for _ in range(max_results if max_results < len(q) else len(q)):
                    out.append(pop())
            except IndexError:
                pass
            if out:
                self._qtaken = True
                if self._pooled:
                    for r in out:
                        self._claim(r)
                return out
        return self._collect(max_results, timeout)

    def __iter__(self):
        get = self.get_complete_status
        while True:
            try:
                res = get()
            except ServiceClosed:
                return
            yield res

    def _claim(self, res):
        """A result is being delivered: its share buffer now belongs to the user."""
        # under the lock: a conn.close() reclaiming this very result finishes
        # first, so the caller sees it either untouched or fully failed
        with self._lock:
            self._pooled.pop(id(res), None)

    def _take(self, n):
        """Pop up to n results (service lock held)."""
        q = self._q
        out = []
        while q and len(out) < n:
            out.append(q.popleft())
        pooled = self._pooled
        if pooled:
            for r in out:
                pooled.pop(id(r), None)
        return out

    def _collect(self, n, timeout):
        q = self._q
        lock = self._lock
        deadline = None if timeout is None else monotonic() + timeout
        polled = False
        # The main thread never takes the poller role: Python runs signal
        # handlers there, between any two bytecodes, and one that raises in
        # the middle of the IO would lose a read's result or an event. It
        # waits (in slices, so that handlers run) while a worker polls, on a
        # lock of its own rather than a Condition (whose wait(), interrupted
        # at the wrong bytecode, returns without the lock). Every lock here
        # is taken with 'with', which no handler can cut short.
        # An event loop that collects for itself (goaio.aio, which runs no
        # raising handler inside its IO calls) is the exception: its thread
        # does the IO, main thread or not.
        main = _get_ident() == _main_id and not self._external
        self._cpolls = not main
        while True:
            waiter = None
            with lock:
                if self._closed:
                    raise ServiceClosed(M.SERVICE_CLOSED)
                if q:
                    return self._take(n)
                now = monotonic()
                if polled and deadline is not None and now >= deadline:
                    return []
                if main:
                    if not self._polling:
                        self._wcond.notify()  # a worker in its grace wait: poll now
                else:
                    self._last_cpoll = now
                if not self._polling and not main:
                    # take the poller role; 'polling' is set before the queue
                    # is looked at again, so a result pushed meanwhile by a
                    # poster either is seen here or wakes us
                    self._polling = True
                    self._pcoll = True
                    if q:
                        self._polling = self._pcoll = False
                        return self._take(n)
                    t = self._poll_timeout(now, deadline)
                    self._poller_ident = threading.get_ident()
                else:
                    if not self._pcoll and not self._wake_pending and not main:
                        # a worker polls: wake it, so that we take over
                        self._wake_pending = True
                        self._write_wake()
                    # in slices: a signal handler runs between them even if
                    # the signal went to another thread, and no timeout is
                    # ever too large for the OS
                    rem = _MAX_WAIT
                    if deadline is not None:
                        left = deadline - now
                        if left <= 0:
                            return []
                        if left < rem:
                            rem = left
                    self._cwaiters += 1
                    if main:
                        waiter = _allocate_lock()
                        waiter.acquire()
                        self._mwaiters.append(waiter)
                    else:
                        try:
                            self._ccond.wait(rem)
                        finally:
                            self._cwaiters -= 1
                        polled = True
                        continue
            if waiter is not None:
                try:
                    waiter.acquire(True, rem)  # released by _notify
                finally:
                    with lock:
                        self._cwaiters -= 1
                        if waiter in self._mwaiters:
                            self._mwaiters.remove(waiter)
                polled = True
                continue
            # we are the poller
            try:
                self._poll(t)
            finally:
                self._release_poller(True)
            polled = True

    def _notify(self, k=1):
        """Wake up to ``k`` waiting collectors (service lock held); the main
        thread's waits are always woken."""
        mw = self._mwaiters
        while mw:
            mw.pop().release()
        if k is None:
            self._ccond.notify_all()
        else:
            self._ccond.notify(k)

    def _poll_timeout(self, now, deadline):
        """How long a poller may wait (service lock held): until the earliest
        deadline, and never longer than one MAX_WAIT slice. Records when the
        poller wakes up at the latest."""
        wake = _INF if deadline is None else deadline
        timers = self._timers
        if timers:
            d = timers[0][0]
            if d < wake:
                wake = d
        t = wake - now
        if t > _MAX_WAIT:
            t = _MAX_WAIT
        elif t < 0:
            t = 0.0
        self._wake_at = now + t
        return t

    def _poll(self, t):
        """One round of the poller: wait for events, do the IO, fire timers."""
        if self._recheck:
            self._recheck = False
            self._recheck_all()
            t = 0
        try:
            events = self._wait(t)
        except InterruptedError:
            events = ()
        except (OSError, ValueError):
            if self._closed:
                return
            raise
        if events:
            self._dispatch(events)
        if self._timers and self._timers[0][0] <= monotonic():
            self._fire_timers()

    def _release_poller(self, collector):
        with self._lock:
            self._polling = False
            self._pcoll = False
            self._poller_ident = None
            self._wake_at = _INF
            if collector:
                self._last_cpoll = monotonic()
                self._polls_c += 1
            else:
                self._polls_w += 1
            if self._closed:
                self._notify(None)
            elif self._cwaiters:
                k = len(self._q) + 1
                self._notify(k if k < self._cwaiters else self._cwaiters)
            if self._wwaiting:
                self._wcond.notify()

    def _dispatch(self, events):
        active = self._active
        get = self._raw_get
        if get is None:     # (token, READ/WRITE/HUP/ERR) pairs
            in_ev, out_ev, hup_ev = _IN_EV, _OUT_EV, _HUP_EV
            canon = None
        else:               # epoll's own (fd, bits): no Python work per event in the poller
            poller = self._poller
            in_ev, out_ev, hup_ev = poller.IN_EV, poller.OUT_EV, poller.HUP_EV
            canon = poller.canon
        for token, ev in events:
            if get is not None:
                token = get(token)
                if token is None:
                    continue
            if token is WAKE:
                # the wake fd is drained before the wake is acted on: a wake
                # written since leaves it readable, so none is lost
                if get is not None:
                    poller.drain_wake()
                self._wake_pending = False
                continue
            c = token()
            if c is None:
                continue
            if c.__class__ is not AIOConn:   # a listener or a connect in progress
                c._on_event(ev if canon is None else canon(ev))
                continue
            if c._tls is not None:
                _pure_tls.on_event(c, ev if canon is None else canon(ev))
                continue
            lock = c._lock
            lock.acquire()
            late_tls = False
            try:
                if c._closed:
                    continue
                if c._tls is not None:
                    late_tls = True
                    continue
                # read before acting on a hang-up: the data still queued
                # comes first, then EOF or the error
                if ev & in_ev:
                    c._readable = True
                    if ev & hup_ev:
                        c._rdhup = True
                    if c._recvq:
                        c._run_recvs()
                if ev & out_ev:
                    c._writable = True
                    if c._sendq:
                        c._run_sends()
                if c._active and not c._recvq and not c._sendq:
                    c._active = False
                    active.discard(c)
                if c._level:
                    c._want()
            finally:
                lock.release()
                if late_tls:
                    # attach() or start_tls() made it a TLS connection while
                    # this event waited for the lock: the TLS layer takes the
                    # event (an edge-triggered one is not reported again, and
                    # the handshake would wait for it for ever)
                    _pure_tls.on_event(c, ev if canon is None else canon(ev))

    def _recheck_all(self):
        """An exception (a signal handler's, in a posting call) may have cut
        short the IO of an operation just queued, after an edge-triggered
        event was consumed: try every connection with operations pending as
        if it were ready. A wrong guess costs one EAGAIN."""
        for c in list(self._active):
            with c._lock:
                if c._closed:
                    continue
                c._readable = c._writable = True
                if c._recvq:
                    c._run_recvs()
                if c._sendq:
                    c._run_sends()
                if c._active and not c._recvq and not c._sendq:
                    c._active = False
                    self._active.discard(c)
                if c._level:
                    c._want()
        with self._lock:
            if self._cwaiters:
                self._notify(None)

    def _request_recheck(self):
        self._recheck = True
        self._write_wake()

    # -- timers --

    def _arm(self, op, deadline):
        """Give a pending op a deadline (its connection's lock is held)."""
        op.deadline = deadline
        with self._lock:
            heapq.heappush(self._timers, (deadline, self._tseq(), op))
            self._after_arm(deadline)

    def _arm_many(self, ops, deadline):
        with self._lock:
            timers = self._timers
            seq = self._tseq
            for op in ops:
                op.deadline = deadline
                heapq.heappush(timers, (deadline, seq(), op))
            self._after_arm(deadline)

    def _after_arm(self, deadline):
        timers = self._timers
        if len(timers) >= self._tcompact:
            self._compact_timers()
        if self._polling and deadline < self._wake_at and not self._wake_pending:
            # the poller sleeps past this deadline: make it recompute
            self._wake_pending = True
            self._write_wake()

    def _compact_timers(self):
        """Drop the entries of completed or re-armed operations (lock held)."""
        timers = self._timers
        live = [e for e in timers if e[2].conn is not None and e[2].deadline == e[0]]
        heapq.heapify(live)
        timers[:] = live    # (in place: one step, and pollers hold the list)
        self._tdead = 0
        self._tcompact = max(256, 2 * len(live))

    def _drop_timers(self, k):
        """A connection closed with k armed operations: their entries leave
        the heap with it, by a compaction once the dead entries are half the
        heap (so each entry costs O(1) amortised, and a heap of closed
        connections only is emptied at once)."""
        with self._lock:
            self._tdead += k
            if 2 * self._tdead >= len(self._timers):
                self._compact_timers()

    def _fire_timers(self):
        now = monotonic()
        due = []
        with self._lock:
            timers = self._timers
            pop = heapq.heappop
            while timers and timers[0][0] <= now:
                d, _, op = pop(timers)
                if op.conn is not None and op.deadline == d:
                    due.append(op)
        for op in due:
            if op.__class__ is _Timer:
                op.run()
                continue
            c = op.conn
            if c is None:
                continue
            with c._lock:
                if c._closed or op.conn is None or op.deadline is None or op.deadline > now:
                    continue
                c._timeout(op)
                if c._active and not c._recvq and not c._sendq:
                    c._active = False
                    self._active.discard(c)
                if c._level:
                    c._want()

    # -- waking --

    def _wake_for_results(self):
        """A poster queued results: tell a waiting collector, or wake the
        collector that sleeps in epoll."""
        with self._lock:
            if self._cwaiters:
                self._notify()
            elif self._pcoll and not self._wake_pending and self._poller_ident != threading.get_ident():
                self._wake_pending = True
                self._write_wake()

    # -- workers --

    def _worker(self):
        lock = self._lock
        wcond = self._wcond
        while True:
            with lock:
                while True:
                    if self._closed:
                        return
                    if not self._polling:
                        if self._qtaken:
                            # a collector that can poll keeps taking what our
                            # rounds queue: it is active, hand the poll back
                            self._qtaken = False
                            if self._cpolls:
                                self._last_cpoll = monotonic()
                        idle = monotonic() - self._last_cpoll
                        grace = self._grace
                        if idle >= grace:
                            if not (self._external and not self._timers):
                                break
                            # goaio.aio hook: a loop collects (no timers armed)
                            wcond.wait(4 * _GRACE)
                            continue
                        wcond.wait(grace - idle)
                    else:
                        self._wwaiting += 1
                        try:
                            wcond.wait()
                        finally:
                            self._wwaiting -= 1
                self._polling = True
                self._pcoll = False
                self._poller_ident = threading.get_ident()
                t = self._poll_timeout(monotonic(), None)
            try:
                self._poll(t)
            except BaseException as exc:  # noqa: BLE001 - the worker must go on
                if self._closed:
                    return
                _unraisable(exc, self._worker)
            finally:
                self._release_poller(False)
            if self._notify_fd >= 0 and self._q:
                self._notify_worker_results()

    # -- goaio.aio hooks: an event loop watches these descriptors --

    def _poll_fd(self):
        """The poller's descriptor, readable while IO events wait (a thread
        then collecting with timeout=0 does that IO itself); -1 if the poller
        has none (poll, select) or the service is closed."""
        fileno = getattr(self._poller, "fileno", None)
        if self._closed or fileno is None:
            return -1
        return fileno()

    def _set_external_collector(self, on):
        """An event loop watches _poll_fd() and collects with timeout=0
        whenever it is readable; while on, the workers leave the poll to it
        (unless timers are armed), so IO stays on the loop thread."""
        with self._lock:
            self._external = bool(on)
            self._wcond.notify_all()

    def _set_worker_grace(self, seconds):
        """How long the workers leave the poll to collectors (default
        WORKER_GRACE). An event loop on a poller without a descriptor
        (poll, select) sets 0: the workers do the IO, the loop takes the
        results when the notify fd says so (a hop, but no grace delay)."""
        with self._lock:
            self._grace = float(seconds)
            self._wcond.notify_all()

    def _set_notify_fd(self, fd):
        """After a worker's poll round that left results queued, write 8
        bytes (an eventfd's 1) to ``fd`` (-1: stop). The caller owns ``fd``."""
        self._notify_fd = int(fd)

    def _notify_worker_results(self):
        try:
            os.write(self._notify_fd, b"\x01\0\0\0\0\0\0\0")
        except OSError:
            pass   # full pipe (already readable) or closed: nothing to add

    # -- share buffers of undelivered results --

    # -- stats and closing --

    def _stats(self):
        """Counters for tests: live operations, open connections, live threads."""
        live = 0
        conns = 0
        for r in list(self._fdmap.values()):
            c = r()
            if c is not None and not c._closed:
                conns += 1
                live += len(c._recvq) + len(c._sendq)
        return {
            "live_ops": live,
            "conns": conns,
            "threads": sum(1 for t in self._threads if t.is_alive()),
            "results": len(self._q),
            "timers": len(self._timers),
            "pooled": len(self._pooled),
            "collector_polls": self._polls_c,
            "worker_polls": self._polls_w,
        }

    @property
    def closed(self):
        return self._closed

    def close(self):
        """Close every connection, discard undelivered results, stop the threads.

        Idempotent; a second call made while the first runs returns when the
        service is closed. Called from inside a share_buff callback (which
        may hold a connection's lock), or from a signal handler that runs
        inside goaio's code on the main thread, it starts the close and
        returns."""
        if _pure_reentry.nested():
            _pure_reentry.later(self.close)
            return
        me = threading.get_ident()
        with self._lock:
            first = not self._closed
            if first:
                self._closed = True
                self._closer = me
        if not first:
            if self._close_done.is_set() or self._closer == me or _in_callback():
                return
            while not self._close_done.is_set():  # no Event.wait: see _close_rest
                time.sleep(0.002)
            return
        if _in_callback():
            threading.Thread(target=self._close_rest, name="goaio-pure-close", daemon=True).start()
        else:
            self._close_rest()

    def _close_rest(self):
        me = threading.get_ident()
        try:
            with self._lock:
                self._notify(None)
                self._wcond.notify_all()
            # wait for the poller to leave the poll before closing anything
            # (polling the flag: no Condition wait, which a signal handler
            # could leave without its lock on the main thread)
            while True:
                with self._lock:
                    if not (self._polling and self._poller_ident != me):
                        break
                    self._write_wake()
                time.sleep(0.002)
            for r in list(self._fdmap.values()):
                c = r()
                if c is not None:
                    try:
                        c.close()
                    except Exception:
                        pass
            self._close_lifecycle()
            for t in self._threads:
                if t.ident != me:
                    t.join(5.0)
            self._threads = [t for t in self._threads if t.is_alive()]
            give = []
            with self._lock:
                q = self._q
                pooled = self._pooled
                while q:
                    r = q.popleft()
                    if pooled.pop(id(r), None) is not None:
                        give.append((r.conn, r.buff))
                        r.buff = None
                pooled.clear()
                self._timers.clear()
                self._active.clear()
                self._tls_starting.clear()
            # outside the lock: a release() may call back into the service
            for conn, buff in give:
                conn._give_back(buff)
            self._close_poller()
            with _live_lock:
                _live.discard(self)
        finally:
            self._close_done.set()

    def _close_poller(self):
        """Close the poller and its wake fd (the last step of a close)."""
        self._poller.close()

    def _after_fork_child(self):
        """In a forked child the threads are gone and the epoll is shared with
        the parent: the service is dead here. Leave the sockets to the user."""
        self._lock = threading.Lock()
        self._ccond = threading.Condition(self._lock)
        self._wcond = threading.Condition(self._lock)
        self._mwaiters = []
        self._closed = True
        self._close_done = threading.Event()
        self._close_done.set()
        self._polling = False
        self._threads = []
        for r in list(self._fdmap.values()):
            c = r()
            if c is not None:
                c._lock = threading.Lock()
                c._closed = True
                _unclosed.pop(c._gc, None)
                c._recvq.clear()
                c._sendq.clear()
                bound_fds.discard(c._fd)
        self._fdmap.clear()
        for ln in self._listeners:
            bound_fds.discard(ln._fd)
        self._listeners.clear()
        self._connects.clear()
        self._resolver_obj = None
        self._q.clear()
        self._pooled.clear()
        self._active.clear()
        self._tls_starting.clear()
        self._timers.clear()
        self._close_poller()


def _new_start_op(conn, context):
    return _Op(conn, context, None, None, None, 0, _START_TLS)


def _close_all():
    with _live_lock:
        services = list(_live)
    for svc in services:
        try:
            svc.close()
        except Exception:
            pass


def _after_fork():
    global _live_lock, _main_id
    _live_lock = threading.Lock()
    _main_id = _main_ident()
    for svc in list(_live):
        try:
            svc._after_fork_child()
        except Exception:
            pass
    _live.clear()


def _evict_stale_fd(fd):
    """The bound-fd registry's hook (goaio/_common.py): close a connection of
    any live service registered under fd whose socket no longer owns it."""
    with _live_lock:
        services = list(_live)
    evicted = False
    for svc in services:
        ref = svc._fdmap.get(fd)
        conn = None if ref is None else ref()
        if conn is not None and conn._evict_if_stale(fd):
            evicted = True
    return evicted


bound_fds.add_stale_hook(_evict_stale_fd)
atexit.register(_close_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
