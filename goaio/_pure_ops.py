"""Half-close, cancellation and introspection of the pure backend.

``AIOConn.shutdown``/``cancel`` and ``AIOService.stats`` are thin methods in
``_pure.py`` that call these; each runs under the connection's lock (or, for
stats, takes only the service lock for the counters, never a lock held
across IO).

Shutdown is an entry of the send queue (kind ``SHUTDOWN``, no buffer). The
connection's ``_shut`` is 0 (open), 1 (a shutdown is pending) or 2 (shut
down); while it is not 0, ``send`` raises ``BrokenPipeError``. A send that
fails while a shutdown is pending leaves its error in ``_shut_err``; the
shutdown then completes with that very error and shuts nothing down. A
shutdown removed by a send timeout, a cancel or a close resets ``_shut``.
"""

import collections
import heapq
import socket
import threading
from time import monotonic

from . import _messages as M
from . import _pure_connect, _pure_listen, _pure_tls
from ._pure_tls import START_TLS
from ._tls import check_connect_tls, check_listen_tls
from ._errors import Busy, Cancelled, ConnClosed, ServiceClosed, oserror

__all__ = ["SHUTDOWN", "cancel", "run_shutdown", "shutdown", "stats"]

#: the op kind of a shutdown in the send queue (receives 0/1, sends 2)
SHUTDOWN = 3


def shutdown(conn, context, new_op):
    """``conn.shutdown(context)``: queue a half-close behind the pending sends."""
    svc = conn._svc
    if svc._closed:
        raise ServiceClosed(M.SERVICE_CLOSED)
    n = 0
    with conn._lock:
        if conn._closed:
            raise ConnClosed(M.CONN_CLOSED)
        if conn._shut:
            raise BrokenPipeError(M.SEND_AFTER_SHUTDOWN)
        sq = conn._sendq
        if len(sq) >= conn._sq_max:
            raise Busy(M.SENDQ_FULL)
        op = new_op(conn, context)
        conn._shut = 1
        conn._shut_err = None
        sq.append(op)
        if len(sq) == 1:
            n = conn._run_sends()
        if sq:
            conn._activate()
            if conn._sto and op.conn is not None:
                svc._arm(op, monotonic() + conn._sto)
        if conn._level:
            conn._want()
    if n:
        svc._results_ready()


def run_shutdown(conn, op):
    """The shutdown reached the head of the send queue (lock held, op popped)."""
    err = conn._shut_err
    conn._shut_err = None
    if err is None:
        try:
            conn._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            err = oserror(exc.errno) if exc.errno else exc
    conn._shut = 0 if err is not None else 2
    conn._finish(op, 0, err)


def cancel(conn, context, reason):
    """``conn.cancel(context, reason)``; returns how many operations it completed."""
    if reason is not None and not isinstance(reason, BaseException):
        raise TypeError(M.REASON_TYPE)
    svc = conn._svc
    n = 0
    more = 0
    with conn._lock:
        if conn._closed:
            return 0
        rq = conn._recvq
        if rq:
            keep = []
            for op in rq:
                if op.ctx is context:
                    conn._finish(op, op.done, Cancelled(M.CANCELLED) if reason is None else reason)
                    n += 1
                else:
                    keep.append(op)
            if n:
                rq[:] = keep
        sq = conn._sendq
        i = 0
        while i < len(sq):
            op = sq[i]
            if op.ctx is not context:
                i += 1
                continue
            if i == 0 and op.done:
                # started: like its send timeout, it and every send behind it
                # complete, so the stream holds exactly the bytes reported
                ops = sq[:]
                sq.clear()
                for o in ops:
                    if o.kind == SHUTDOWN:
                        conn._shut = 0
                    elif o.kind == START_TLS:
                        _pure_tls.drop_start(conn)
                    conn._finish(o, o.done, Cancelled(M.CANCELLED) if reason is None else reason)
                n += len(ops)
                break
            del sq[i]
            if op.kind == SHUTDOWN:
                conn._shut = 0
            elif op.kind == START_TLS:
                _pure_tls.drop_start(conn)
            conn._finish(op, op.done, Cancelled(M.CANCELLED) if reason is None else reason)
            n += 1
        if n and sq and (conn._writable or sq[0].kind == SHUTDOWN or not sq[0].total):
            more = conn._run_sends()   # a new head that can go now
        conn._deactivate_if_idle()
        if conn._level:
            conn._want()
    if n or more:
        svc._results_ready()
    return n


def stats(svc):
    """``svc.stats()``: a snapshot; reads lengths and counters, takes no
    connection lock (so it never waits for IO)."""
    conns = precv = psend = timers = 0
    live = svc._conns_snapshot()
    ops, brecv, bsent = svc._counters(live)
    for c in live:
        if c._closed:
            continue
        conns += 1
        rq = c._recvq
        sq = c._sendq
        precv += len(rq)
        psend += len(sq)
        for q in (rq, sq):
            if q:
                for op in list(q):
                    if op.deadline is not None:
                        timers += 1
        tls = c._tls
        if tls is not None and tls.timer is not None:   # a handshake's timeout
            timers += 1
    listeners = svc._listeners_snapshot()
    connects = svc._connects_snapshot()
    for op in connects:
        if op.deadline is not None:
            timers += 1
    accepted = svc._accepted
    polls = svc._polls_c + svc._polls_w
    return {
        "connections": conns,
        "listeners": len(listeners),
        "pending_recv": precv,
        "pending_send": psend,
        "pending_accept": sum(ln._pending() for ln in listeners),
        "pending_connect": len(connects),
        "queued_results": 0 if svc._closed else len(svc._q),
        "timers": timers,
        "threads": svc._live_threads(),
        "ops_completed": ops,
        "bytes_received": brecv,
        "bytes_sent": bsent,
        "accepted": accepted,
        "polls": polls,
    }


# --- the mixins AIOConn and AIOService of _pure.py derive from ------------------

class ConnLifecycle:
    """Half-close, cancel, addresses and counters of a pure AIOConn."""

    __slots__ = ("_shut", "_shut_err", "_nops", "_brecv", "_bsent", "_peer")

    def _init_lifecycle(self):
        # the peer's address, read once at bind (accept, connect): it stays
        # known after the peer went and the TCP state is CLOSED
        try:
            self._peer = self._sock.getpeername()
        except OSError:
            self._peer = None   # already gone (reset before the bind)
        self._shut = 0          # 0 open, 1 shutdown pending, 2 shut down (for writing)
        self._shut_err = None   # the error of a send that failed while a shutdown was pending
        self._nops = 0          # results made, bytes moved (under the conn's lock)
        self._brecv = 0
        self._bsent = 0

    def shutdown(self, context):
        """Half-close: shut the socket down for writing once every send posted
        before has completed (the peer reads EOF), then complete."""
        shutdown(self, context, _new_shutdown_op)

    def cancel(self, context, reason=None):
        """Complete now every pending operation posted with this very
        ``context`` (``is``) with ``reason`` or ``Cancelled()``; returns how many."""
        return cancel(self, context, reason)

    @property
    def peername(self):
        """``getpeername()`` of the socket as it was bound; None once closed
        (or if the peer had already gone when it was bound)."""
        if self._closed:
            return None
        return self._peer

    @property
    def sockname(self):
        """``getsockname()`` of the socket; None once closed."""
        if self._closed:
            return None
        try:
            return self._sock.getsockname()
        except OSError:
            return None

    # -- helpers (the connection's lock is held) --

    def _activate(self):
        if not self._active:
            self._active = True
            self._svc._active.add(self)

    def _deactivate_if_idle(self):
        if self._active and not self._recvq and not self._sendq:
            self._active = False
            self._svc._active.discard(self)

    def _fold(self):
        """The connection closes: its counters move to the service's totals."""
        # (under the service lock, which stats() holds while it adds them
        # up: never counted twice, nor missed)
        with self._svc._lock:
            self._svc._fold.append((self._nops, self._brecv, self._bsent))
            self._nops = self._brecv = self._bsent = 0


def _new_shutdown_op(conn, context):
    from ._pure import _Op
    return _Op(conn, context, None, None, None, 0, SHUTDOWN)


class ServiceLifecycle:
    """Listeners, connects, timers of other kinds and stats of a pure AIOService."""

    def _init_lifecycle(self):
        self._listeners = set()    # open listeners (held: they serve until closed)
        self._connects = set()     # pending connects
        self._resolver_obj = None
        self._fold = collections.deque()   # counters of closed connections, drained by stats
        self._totals = [0, 0, 0]           # ops_completed, bytes_received, bytes_sent (service lock)
        self._accepted = 0

    # -- public --

    def listen(self, address, backlog=1024, *, reuse_port=False, option=None, ssl=None,
               ssl_handshake_timeout=None, **options):
        """Listen on ``address`` ((host, port) or a Unix path), or take an already
        listening ``socket.socket``; returns a :class:`Listener`. With ``ssl``
        accepts complete once the TLS handshake (server side) is done."""
        if self._closed:
            raise ServiceClosed(M.SERVICE_CLOSED)
        tls = check_listen_tls(ssl, ssl_handshake_timeout)
        return _pure_listen.listen(self, address, backlog, reuse_port, option, options, tls)

    def connect(self, context, address, *, timeout=None, local_address=None, option=None,
                ssl=None, server_hostname=None, ssl_handshake_timeout=None, **options):
        """Connect to ``address`` without blocking; completes with ``res.conn``
        the connected, bound connection (or ``res.conn`` None and ``err``).
        With ``ssl``, once the TLS handshake is done too (``timeout`` bounds
        the TCP connect, ``ssl_handshake_timeout`` the handshake)."""
        if self._closed:
            raise ServiceClosed(M.SERVICE_CLOSED)
        tls = check_connect_tls(ssl, server_hostname, ssl_handshake_timeout, address)
        _pure_connect.connect(self, context, address, timeout, local_address, option, options, tls)

    def _await_connect(self, context, fd):
        """goaio.aio hook (loop.sock_connect): ``fd`` (the service's from now
        on: a dup of the caller's socket) has a non-blocking connect in
        progress; completes once it has ended, ``res.conn`` the connected fd
        bound (close it: the caller's socket stays connected), else ``err``."""
        _pure_connect.await_connect(self, context, fd)

    def stats(self):
        """Counts of connections, pending operations, threads and totals (a dict
        with the same keys on every backend)."""
        return stats(self)

    # -- listeners and connects --

    def _add_listener(self, ln):
        with self._lock:
            if self._closed:
                raise ServiceClosed(M.SERVICE_CLOSED)
            self._poller.register(ln._fd, ln._ref, 0 if ln._level else _READ)
            self._listeners.add(ln)

    def _remove_listener(self, ln):
        with self._lock:
            self._listeners.discard(ln)

    def _add_connect(self, op):
        with self._lock:
            if self._closed:
                raise ServiceClosed(M.SERVICE_CLOSED)
            self._connects.add(op)

    def _remove_connect(self, op):
        with self._lock:
            self._connects.discard(op)

    def _watch_connect(self, op):
        """Watch the attempt in progress for WRITE (its lock is held)."""
        self._poller.register(op.fd, op._ref, _WRITE)

    def _unwatch_connect(self, op):
        self._poller.unregister(op.fd, op._ref)

    def _resolver(self):
        with self._lock:
            if self._closed:
                raise ServiceClosed(M.SERVICE_CLOSED)
            r = self._resolver_obj
            if r is None:
                r = self._resolver_obj = _pure_connect.Resolver("goaio-pure-resolver")
            return r

    def _close_lifecycle(self):
        """svc.close(): close the listeners, drop the connects, stop the resolver."""
        with self._lock:
            listeners = list(self._listeners)
            connects = list(self._connects)
            self._connects.clear()
            r, self._resolver_obj = self._resolver_obj, None
        for ln in listeners:
            try:
                ln.close()
            except Exception:  # noqa: BLE001 - a close goes on
                pass
        for op in connects:
            op._abandon()
        if r is not None:
            r.stop()

    # -- timers of other kinds --

    def _call_at(self, deadline, fn):
        """Run ``fn()`` (in a poller thread, no lock held) at ``deadline``;
        returns a handle with ``cancel()``."""
        t = _pure_connect.Timer(fn, deadline)
        with self._lock:
            heapq.heappush(self._timers, (deadline, self._tseq(), t))
            self._after_arm(deadline)
        return t

    def _call_later(self, delay, fn):
        return self._call_at(monotonic() + delay, fn)

    # -- results and counters --

    def _results_ready(self):
        """Results were queued outside a poll round: wake a collector."""
        if self._cwaiters or self._pcoll:
            self._wake_for_results()

    def _count_op(self, accepted=False):
        """A listener or a connect made a result."""
        with self._lock:
            self._totals[0] += 1
            if accepted:
                self._accepted += 1

    def _counters(self, conns):
        """ops_completed, bytes_received, bytes_sent: the closed connections'
        (folded) and those of ``conns``, a closing one's included (its
        close's results may be taken already; it folds them under this lock)."""
        with self._lock:
            t = self._totals
            fold = self._fold
            while fold:
                ops, br, bs = fold.popleft()
                t[0] += ops
                t[1] += br
                t[2] += bs
            ops, br, bs = t
            for c in conns:
                ops += c._nops
                br += c._brecv
                bs += c._bsent
            return ops, br, bs

    def _conns_snapshot(self):
        out = []
        for r in list(self._fdmap.values()):
            c = r()
            if c is not None:
                out.append(c)
        return out

    def _listeners_snapshot(self):
        with self._lock:
            return list(self._listeners)

    def _connects_snapshot(self):
        with self._lock:
            return list(self._connects)

    def _live_threads(self):
        n = sum(1 for t in self._threads if t.is_alive())
        r = self._resolver_obj
        if r is not None and r.alive():
            n += 1
        return n


_READ = 1   # _purepoll.READ / WRITE
_WRITE = 2
