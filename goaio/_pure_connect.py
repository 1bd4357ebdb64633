"""Connecting in the pure backend: ``svc.connect(context, address, ...)``.

One pending connect is a :class:`Connect`: the addresses still to try, the
socket of the attempt in progress, its deadline, and a lock under which every
step runs (the attempt, the poller's report, the timeout, the service's
close), so exactly one of them completes it.

Steps: numeric hosts and Unix paths start at once in the caller's thread
(non-blocking ``connect``); a host name goes to the service's resolver thread
(``socket.getaddrinfo``, looked up at call time), which starts the attempts
when the answer comes. Each address is tried in turn; an attempt in progress
is watched for WRITE, then ``SO_ERROR`` says how it ended. One timer covers
the whole connect (resolution included). A success binds the socket to the
service with the connect's options.
"""

import collections
import errno
import os
import socket
import threading
import weakref
from time import monotonic

from . import _messages as M
from . import _pure_tls
from ._addresses import numeric, parse, same_family
from ._common import AIOResult, check_timeout, make_option
from ._errors import ConnectTimeout, ServiceClosed, oserror

__all__ = ["Connect", "Resolver", "Timer", "connect"]

_AF_UNIX = getattr(socket, "AF_UNIX", None)
_INF = float("inf")
_INET = (socket.AF_INET, socket.AF_INET6)
#: connect_ex results that mean "in progress" (EAGAIN only for TCP: a Unix
#: connect says EAGAIN when the listener's queue is full, an error)
_IN_PROGRESS = frozenset((errno.EINPROGRESS, errno.EALREADY, errno.EINTR,
                          getattr(errno, "EWOULDBLOCK", errno.EAGAIN)))


class Timer:
    """An entry of the service's timer heap that calls ``fn`` when due.

    It has the two fields the heap checks on every entry: ``conn`` (not None
    while armed) and ``deadline``.
    """

    __slots__ = ("conn", "deadline", "fn")

    def __init__(self, fn, deadline):
        self.conn = True
        self.deadline = deadline
        self.fn = fn

    def cancel(self):
        self.conn = None
        self.deadline = None

    def run(self):
        if self.conn is None:
            return
        self.conn = None
        self.fn()


def connect(svc, context, address, timeout, local_address, option, options, tls=None):
    """``AIOService.connect`` of the pure backend."""
    if svc._closed:
        raise ServiceClosed(M.SERVICE_CLOSED)
    target = parse(address)
    local = None if local_address is None else parse(local_address, "local_address")
    if timeout is not None:
        timeout = check_timeout(timeout)
    opt = make_option(option, options)
    op = Connect(svc, context, opt, local)
    op.tls = tls
    svc._add_connect(op)   # ServiceClosed if closed meanwhile
    with op.lock:
        if op.done:   # the service closed meanwhile and dropped it
            raise ServiceClosed(M.SERVICE_CLOSED)
        if timeout is not None and timeout != _INF:   # math.inf: no limit
            op.deadline = monotonic() + timeout
            op.timer = svc._call_at(op.deadline, op._on_timeout)
        if target[0] == "unix":
            op.addrs = collections.deque([(_AF_UNIX, target[1])])
            op._try_next()
        else:
            _, host, port, rest = target
            addrs = numeric(host, port, rest)
            if local is not None and local[0] == "inet" and numeric(*local[1:]) is None:
                addrs = None   # bind() would resolve the local name: not in the caller
            if addrs is not None:
                op.addrs = collections.deque(addrs)
                op._try_next()
            else:
                op.name = (host, port)
                svc._resolver().submit(op)
        done = op.done
    if done:
        svc._results_ready()


def await_connect(svc, context, fd):
    """``AIOService._await_connect`` (goaio.aio's sock_connect): ``fd``, which
    the service owns from now on (the caller's dup of its socket), has a
    non-blocking connect in progress; complete when it has ended, with the
    connected fd bound (no TCP_NODELAY: the socket is the caller's) or its
    error (fd closed)."""
    if svc._closed:
        os.close(fd)
        raise ServiceClosed(M.SERVICE_CLOSED)
    s = socket.socket(fileno=fd)
    op = Connect(svc, context, make_option(None, {}), None)
    op.given = True
    op.addrs = collections.deque()
    try:
        svc._add_connect(op)
    except BaseException:
        s.close()
        raise
    with op.lock:
        if op.done:
            s.close()
            raise ServiceClosed(M.SERVICE_CLOSED)
        op.sock = s
        op.fd = fd
        try:
            svc._watch_connect(op)
        except (OSError, ValueError) as exc:
            op.sock = None
            op.fd = -1
            s.close()
            op._finish(None, exc)
        done = op.done
    if done:
        svc._results_ready()


class Connect:
    """One pending connect."""

    __slots__ = ("svc", "ctx", "option", "local", "lock", "addrs", "name", "sock", "fd",
                 "deadline", "timer", "first_err", "done", "tls", "hs_conn", "given", "_ref",
                 "__weakref__")

    def __init__(self, svc, ctx, option, local):
        self.svc = svc
        self.ctx = ctx
        self.option = option
        self.local = local
        self.lock = threading.Lock()
        self.addrs = None
        self.name = None
        self.sock = None
        self.fd = -1
        self.deadline = None
        self.timer = None
        self.first_err = None
        self.done = False
        self.tls = None           # TLSParams: after the TCP connect, the handshake
        self.hs_conn = None       # the connection in its handshake (held alive here)
        self.given = False        # await_connect: the caller's socket (no TCP_NODELAY)
        self._ref = weakref.ref(self)

    # -- steps (lock held) --

    def _try_next(self):
        """Start the next attempt; complete with the first error when none is left."""
        addrs = self.addrs
        local = self.local
        while addrs:
            fam, sa = addrs.popleft()
            if local is not None and not same_family(local, fam):
                self._record(OSError(errno.EAFNOSUPPORT, "local_address is of another family"))
                continue
            try:
                s = socket.socket(fam, socket.SOCK_STREAM)
            except OSError as exc:
                self._record(exc)
                continue
            try:
                s.setblocking(False)
                if local is not None:
                    s.bind(local[1] if local[0] == "unix" else self._local_sa(fam, local))
                err = s.connect_ex(sa)
            except (OSError, OverflowError, TypeError, ValueError) as exc:
                s.close()
                self._record(exc)
                continue
            if err == 0:
                self._connected(s)
                return
            if err in _IN_PROGRESS and (fam != _AF_UNIX or err != errno.EAGAIN):
                self.sock = s
                self.fd = s.fileno()
                try:
                    self.svc._watch_connect(self)
                except (OSError, ValueError) as exc:
                    self.sock = None
                    self.fd = -1
                    s.close()
                    self._record(exc)
                    continue
                return
            s.close()
            self._record(oserror(err))
        self._finish(None, self.first_err if self.first_err is not None
                     else OSError(errno.EADDRNOTAVAIL, "no address to connect to"))

    @staticmethod
    def _local_sa(fam, local):
        _, host, port, rest = local
        if fam == socket.AF_INET6 and not rest:
            return (host, port, 0, 0)
        return (host, port) + rest

    def _record(self, exc):
        if self.first_err is None:
            self.first_err = exc

    def _drop_attempt(self):
        s = self.sock
        if s is not None:
            self.sock = None
            self.svc._unwatch_connect(self)
            self.fd = -1
            s.close()

    def _connected(self, s):
        if s.family in _INET and not self.given:
            try:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        try:
            conn = self.svc.bind(s, self.option)
        except Exception as exc:  # noqa: BLE001 - delivered in the result
            s.close()
            self._finish(None, exc)
            return
        if self.tls is not None:
            # the TCP connect is done: its timeout is over, the handshake's begins
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            self.deadline = None
            self.hs_conn = conn
            try:
                _pure_tls.attach(conn, self.tls, self._handshaken)
            except Exception as exc:  # noqa: BLE001 - delivered in the result
                self.hs_conn = None
                conn.close()
                self._finish(None, exc)
            return
        self._finish(conn, None)

    def _handshaken(self, conn, err):
        """The TLS handshake of the connected socket ended (no lock held):
        complete with the connection, or with the error (the socket closed)."""
        with self.lock:
            self.hs_conn = None
            if self.done:          # abandoned: the service is closing
                close = True
            elif err is not None:
                self._finish(None, err)
                close = True
            else:
                self._finish(conn, None)
                close = False
        if close:
            conn.close()
        self.svc._results_ready()

    def _finish(self, conn, err):
        self.done = True
        self.addrs = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.deadline = None
        svc = self.svc
        svc._remove_connect(self)
        svc._count_op()     # (first: a collector may take the result at once)
        svc._q.append(AIOResult(conn, self.ctx, None, 0, err))

    # -- events (take the lock) --

    def _on_event(self, ev):
        """The attempt in progress became writable (or failed)."""
        with self.lock:
            s = self.sock
            if self.done or s is None:
                return
            try:
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            except OSError as exc:
                err = exc.errno or errno.EBADF
            if not err:
                try:
                    s.getpeername()
                except OSError:
                    return      # still in progress (a spurious report)
            self.sock = None
            self.svc._unwatch_connect(self)
            self.fd = -1
            if not err:
                self._connected(s)
            else:
                s.close()
                self._record(oserror(err))
                self._try_next()
        self.svc._results_ready()

    def _resolved(self, infos, err):
        """The resolver's answer (called in the resolver thread)."""
        with self.lock:
            if self.done:
                return
            if err is not None:
                self._finish(None, err)
            else:
                seen = set()
                addrs = collections.deque()
                for fam, _, _, _, sa in infos:
                    if (fam, sa) not in seen and fam in _INET:
                        seen.add((fam, sa))
                        addrs.append((fam, sa))
                self.addrs = addrs
                self._try_next()
        self.svc._results_ready()

    def _on_timeout(self):
        with self.lock:
            if self.done:
                return
            self.timer = None
            self._drop_attempt()
            self._finish(None, ConnectTimeout(M.CONNECT_TIMEOUT))
        self.svc._results_ready()

    def _abandon(self):
        """The service closes: drop the attempt, make no result."""
        with self.lock:
            if self.done:
                return
            self.done = True
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            self.deadline = None
            self._drop_attempt()


class Resolver:
    """The resolver thread of one service: ``socket.getaddrinfo`` off the
    callers' threads, one name at a time, in submission order."""

    def __init__(self, name):
        self._q = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._stop = False
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def submit(self, op):
        with self._cond:
            self._q.append(op)
            self._cond.notify()

    def _run(self):
        q = self._q
        cond = self._cond
        while True:
            with cond:
                while not q and not self._stop:
                    cond.wait()
                if self._stop:
                    return
                op = q.popleft()
            if op.done:
                continue
            host, port = op.name
            try:
                infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
            except UnicodeError as exc:  # a label the IDNA codec refuses: no such name
                op._resolved(None, socket.gaierror(socket.EAI_NONAME, f"bad host name: {exc}"))
            except Exception as exc:  # noqa: BLE001 - gaierror and the like: delivered
                op._resolved(None, exc)
            else:
                op._resolved(infos, None)
            op = None

    def stop(self, timeout=5.0):
        with self._cond:
            self._stop = True
            self._q.clear()
            self._cond.notify_all()
        if self.thread is not threading.current_thread():
            self.thread.join(timeout)

    def alive(self):
        return self.thread.is_alive()
