"""Listeners of the pure backend: ``svc.listen`` and ``ln.accept(context)``.

A listener is one listening socket, a deque of pending accept contexts and a
lock. All ``accept()`` system calls on it happen under that lock, and so
does its close, so the fd is never closed under a thread inside a call.

Readiness: the poller reports the listening socket readable (token: a weak
reference to the listener, like a connection's). An edge-triggered poller
watches it for READ for good; a level-triggered one only while an accept is
pending and the listener is not backing off, so an idle readable listener
costs no wake-ups. An accept is also tried at once when posted.

Out of descriptors (EMFILE, ENFILE, ENOBUFS, ENOMEM) the first pending
accept completes with the error and the listener backs off (no accept call,
no interest) for BACKOFF_MIN seconds, doubling to BACKOFF_MAX, reset by a
success; a timer then retries for the accepts still pending. So a readable
listener with no descriptor to give never makes a thread spin, and accepting
resumes by itself once descriptors are free.
"""

import collections
import errno
import socket
import threading
import weakref

from . import _messages as M
from ._common import AIOResult, _check_int, bound_fds, make_option
from . import _pure_tls
from . import _pure_reentry
from ._addresses import check_listening, listening_socket, unlink_if_same
from ._errors import Busy, ConnClosed, ServiceClosed, oserror

__all__ = ["Listener", "listen"]

#: accept errors that mean "no descriptor or memory to give now": back off
_EXHAUSTED = frozenset(e for e in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
#: a connection that died in the kernel's queue (BSD): skip it, the accept stays pending
_ABORTED = frozenset(e for e in (errno.ECONNABORTED, getattr(errno, "EPROTO", None)) if e is not None)
BACKOFF_MIN = 0.1
BACKOFF_MAX = 1.0

_INET = (socket.AF_INET, socket.AF_INET6)


def listen(svc, address, backlog, reuse_port, option, options, tls=None):
    """``AIOService.listen`` of the pure backend."""
    if svc._closed:
        raise ServiceClosed(M.SERVICE_CLOSED)
    opt = make_option(option, options)
    if isinstance(address, socket.socket):
        check_listening(address)
        sock, created = address, None
    else:
        _check_int("backlog", backlog, 0)
        if reuse_port and not hasattr(socket, "SO_REUSEPORT"):
            raise ValueError("reuse_port is not supported here")
        sock, created = listening_socket(address, backlog, reuse_port)
    fd = sock.fileno()
    try:
        # one owner per socket: the registry of bound sockets holds listeners too
        bound_fds.add(fd)
    except ValueError:
        if sock is not address:
            unlink_if_same(created)
            sock.close()
        raise ValueError("the socket is already listening in a service") from None
    try:
        sock.setblocking(False)
        ln = Listener(svc, sock, opt, created, tls)
        svc._add_listener(ln)
    except BaseException:
        bound_fds.discard(fd)
        if sock is not address:
            unlink_if_same(created)
            sock.close()
        raise
    return ln


class Listener:
    """A listening socket of an :class:`AIOService`; post ``accept(context)`` on it."""

    __slots__ = ("_svc", "_sock", "_fd", "_lock", "_accepts", "_option", "_created",
                 "_closed", "_address", "_backoff", "_paused", "_timer", "_ref",
                 "_level", "_interest", "_tls", "_handshaking", "_ready", "__weakref__")

    def __init__(self, svc, sock, option, created, tls=None):
        self._svc = svc
        self._sock = sock
        self._fd = sock.fileno()
        self._lock = threading.Lock()
        self._accepts = collections.deque()
        self._option = option
        self._created = created
        self._closed = False
        self._address = sock.getsockname()
        self._backoff = 0.0
        self._paused = False
        self._timer = None
        self._ref = weakref.ref(self)   # the poller token
        self._level = not svc._poller.edge
        self._interest = 0
        # TLS: accepted connections handshake here before an accept gets them
        self._tls = tls                 # TLSParams, or None for a plain listener
        self._handshaking = set()       # connections in their handshake
        self._ready = collections.deque()   # (conn, None) or (None, err) no accept took yet

    # -- public attributes --

    @property
    def address(self):
        """``getsockname()`` of the listening socket (None once closed)."""
        return None if self._closed else self._address

    @property
    def fd(self):
        return -1 if self._closed else self._fd

    @property
    def closed(self):
        return self._closed

    def __repr__(self):
        if self._closed:
            return "<goaio.Listener closed (pure)>"
        return f"<goaio.Listener {self._address!r} fd={self._fd} (pure)>"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- posting --

    def accept(self, context):
        """Accept one connection; it completes with ``res.conn`` bound with the
        listener's options."""
        svc = self._svc
        if svc._closed:
            raise ServiceClosed(M.SERVICE_CLOSED)
        with self._lock:
            if self._closed:
                raise ConnClosed(M.LISTENER_CLOSED)
            q = self._accepts
            if len(q) >= M.MAX_PENDING_ACCEPTS:
                raise Busy(M.ACCEPTQ_FULL)
            q.append(context)
            n = 0
            ready = self._ready
            while ready and q:
                conn, err = ready.popleft()
                self._complete(q.popleft(), conn, err)
                n += 1
            if q and not self._paused:
                n += self._run()
            if self._level:
                self._want()
        if n:
            svc._results_ready()

    # -- accepting (the listener's lock is held) --

    def _complete(self, ctx, conn, err):
        # counted first: a collector may take the result at once (the
        # queue is read without the service lock), then read stats()
        self._svc._count_op(accepted=conn is not None)
        self._svc._q.append(AIOResult(conn, ctx, None, 0, err))

    def _run(self):
        """Accept while accepts are pending and the kernel has connections;
        returns how many results were made."""
        q = self._accepts
        svc = self._svc
        count = 0
        while q and self._room():
            try:
                s, _ = self._sock.accept()
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as exc:
                e = exc.errno
                if e in _ABORTED:
                    continue
                self._complete(q.popleft(), None, oserror(e) if e else exc)
                count += 1
                if e in _EXHAUSTED:
                    self._pause()
                    break
                continue
            if s.family in _INET:
                try:
                    # reset while it waited in the queue (Linux hands such a
                    # connection over, with no peer any more): skip it
                    s.getpeername()
                except OSError:
                    s.close()
                    continue
                try:
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    pass
            try:
                conn = svc.bind(s, self._option)
            except ServiceClosed:
                s.close()
                break
            except Exception as exc:  # noqa: BLE001 - delivered in the result
                s.close()
                self._complete(q.popleft(), None, exc)
                count += 1
                continue
            self._backoff = 0.0
            if self._tls is not None:
                try:
                    _pure_tls.attach(conn, self._tls, self._handshaken)
                except Exception as exc:  # noqa: BLE001 - delivered in the result
                    conn.close()
                    self._complete(q.popleft(), None, exc)
                    count += 1
                    continue
                self._handshaking.add(conn)
                continue
            self._complete(q.popleft(), conn, None)
            count += 1
        return count

    def _room(self):
        """TLS: may another connection start its handshake now? (lock held)"""
        if self._tls is None:
            return True
        return len(self._handshaking) + len(self._ready) < len(self._accepts) + M.TLS_ACCEPT_AHEAD

    def _handshaken(self, conn, err):
        """A TLS handshake ended (no lock held): one pending accept completes
        with the connection or the error (its socket closed); the listener
        goes on."""
        close = err is not None
        n = 0
        with self._lock:
            self._handshaking.discard(conn)
            if self._closed:
                close = True
            else:
                entry = (None, err) if err is not None else (conn, None)
                q = self._accepts
                if q:
                    self._complete(q.popleft(), *entry)
                    n = 1
                else:
                    self._ready.append(entry)
                if q and not self._paused:
                    n += self._run()
                if self._level:
                    self._want()
        if close:
            conn.close()
        if n:
            self._svc._results_ready()

    def _pause(self):
        """No descriptor to give: stop accepting for a while (lock held)."""
        b = self._backoff * 2 if self._backoff else BACKOFF_MIN
        self._backoff = b if b < BACKOFF_MAX else BACKOFF_MAX
        self._paused = True
        self._timer = self._svc._call_later(self._backoff, self._resume)

    def _resume(self):
        """The back-off is over (called by the service's timers)."""
        with self._lock:
            self._timer = None
            if self._closed or not self._paused:
                return
            self._paused = False
            n = self._run() if self._accepts else 0
            if self._level:
                self._want()
        if n:
            self._svc._results_ready()

    def _want(self):
        """Level-triggered poller: watch for READ only while it is of use."""
        want = 1 if self._accepts and not self._paused and self._room() else 0   # _purepoll.READ
        if want != self._interest:
            self._interest = want
            try:
                self._svc._poller.modify(self._fd, self._ref, want)
            except (OSError, ValueError):
                pass

    def _on_event(self, ev):
        """The poller says the listening socket is readable."""
        with self._lock:
            if self._closed or self._paused or not self._accepts:
                return
            n = self._run()
            if self._level:
                self._want()
        if n:
            self._svc._results_ready()

    # -- closing --

    def close(self, reason=None):
        """Close the listener: pending accepts complete with ``reason`` (or a
        fresh ``ConnClosed``); a Unix path it created is unlinked."""
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
            q = self._accepts
            n = len(q)
            while q:
                self._complete(q.popleft(), None,
                               ConnClosed(M.LISTENER_CLOSED) if reason is None else reason)
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            svc._remove_listener(self)
            svc._poller.unregister(self._fd, self._ref)
            bound_fds.discard(self._fd)
            try:
                self._sock.close()
            except OSError:
                pass
            unlink_if_same(self._created)
            # TLS: connections no accept took go with the listener
            drop = list(self._handshaking) + [c for c, _ in self._ready if c is not None]
            self._handshaking.clear()
            self._ready.clear()
        # a poll()/select() a worker is in still holds the listening socket:
        # wait for it to end, so no connection is taken once close returns
        svc._poller.settle()
        for conn in drop:   # (unlocked: a close runs the handshake's callback)
            conn.close()
        if n:
            svc._results_ready()

    def _pending(self):
        return len(self._accepts)
