"""goaio.aio: loop.sock_connect and loop.sock_accept on goaio.

A mixin of :class:`goaio.aio.Loop`. asyncio's own ``sock_connect`` and
``sock_accept`` do their checks and the address resolution, then call the
loop's ``_sock_connect(fut, sock, address)`` / ``_sock_accept(fut, sock)``;
this mixin replaces those two. As asyncio's, each tries the system call at
once; only what would block waits, and it waits on goaio, not on the
selector:

* ``sock_connect``: the connect is started by ``sock.connect()`` as asyncio
  starts it; goaio waits for its end on a ``dup()`` of the socket
  (``svc._await_connect``), then that duplicate is closed: the socket stays
  the user's, connected. A failure is asyncio's
  ``OSError(errno, "Connect call failed <address>")``.
* ``sock_accept``: one goaio ``Listener`` over a ``dup()`` of the listening
  socket, for as long as the call waits, with one accept posted; the
  accepted connection's descriptor is duplicated into the
  ``socket.socket`` returned (non-blocking, as asyncio's), and goaio's
  connection closed. A connection accepted for a call that was cancelled
  meanwhile is kept for the next ``sock_accept`` on that socket (the
  kernel's queue would have kept it), so none is lost.

A socket goaio cannot take (not a ``SOCK_STREAM`` socket of a supported
family) and ``loop.goaio_sock = False`` keep asyncio's readiness code. See
docs/aio.md, "sock_* on goaio".
"""

import os
import socket
import weakref

from ._errors import ServiceClosed, UnsupportedConn

_STREAM_FAMILIES = (socket.AF_INET, socket.AF_INET6, getattr(socket, "AF_UNIX", -1))


def _takeable(sock):
    return isinstance(sock, socket.socket) and sock.type == socket.SOCK_STREAM \
        and sock.family in _STREAM_FAMILIES


def _at_once(fut, fn, *args):
    """Try ``fn(*args)`` now, as asyncio's loop does: its result or error
    completes fut (True), or it would block (False)."""
    try:
        got = fn(*args)
    except (BlockingIOError, InterruptedError):
        return False
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        fut.set_exception(exc)
        return True
    fut.set_result(got)
    return True


def _accept(sock):
    conn, address = sock.accept()
    conn.setblocking(False)
    return conn, address


class _Wait:
    """The context of one goaio wait: hands the result to its callback."""

    __slots__ = ("fn", "args")
    # (the pure backend's collector reads these two of a context's __self__)
    _recv_iter = None
    _read_cb = None

    def __init__(self, fn, *args):
        self.fn = fn
        self.args = args

    def on_result(self, res):
        self.fn(res, *self.args)


def _connect_done(res, fut, address):
    conn = res.conn
    if conn is not None:
        conn.close()            # the duplicate: the user's socket stays connected
    if fut.done():
        return
    err = res.err
    if err is None:
        fut.set_result(None)
    elif isinstance(err, OSError) and err.errno:
        fut.set_exception(OSError(err.errno, f"Connect call failed {address}"))
    else:
        fut.set_exception(err)


def _accepted_socket(sock, conn):
    """(socket.socket, address) of an accepted AIOConn: its fd duplicated,
    the connection closed."""
    try:
        fd = os.dup(conn.fd)
    finally:
        addr = conn.peername
        conn.close()
    s = socket.socket(sock.family, sock.type, sock.proto, fileno=fd)
    s.setblocking(False)
    if addr is None:
        try:
            addr = s.getpeername()
        except OSError:
            addr = "" if sock.family == getattr(socket, "AF_UNIX", -1) else None
    return s, addr


class SockConnMixin:
    """sock_connect and sock_accept of :class:`goaio.aio.Loop`."""

    #: False: sock_connect / sock_accept use asyncio's readiness code (read at
    #: each call)
    goaio_sock = True

    #: listening socket -> [(socket, address)] accepted for a cancelled call
    _goaio_accepted = None

    # -- connect --

    def _sock_connect(self, fut, sock, address):
        if not self.goaio_sock or not _takeable(sock):
            return super()._sock_connect(fut, sock, address)
        if _at_once(fut, sock.connect, address):
            return
        fd = sock.fileno()
        self._ensure_fd_no_transport(fd)
        self._check_closed()        # (as asyncio's _add_writer)
        wait = _Wait(_connect_done, fut, address)
        try:
            self._svc._await_connect(wait.on_result, os.dup(fd))    # (it owns the dup)
        except ServiceClosed:
            raise RuntimeError("Event loop is closed") from None
        self._goaio.dirty = True
        # cancelled: the connect goes on in the kernel, as on asyncio; goaio's
        # wait ends with it (or when the service closes)

    # -- accept --

    def _sock_accept(self, fut, sock):
        if not self.goaio_sock or not _takeable(sock):
            return super()._sock_accept(fut, sock)
        kept = self._goaio_accepted
        if kept:
            got = kept.get(sock)
            if got:
                fut.set_result(got.pop(0))
                if not got:
                    del kept[sock]
                return
        if _at_once(fut, _accept, sock):
            return
        fd = sock.fileno()
        self._ensure_fd_no_transport(fd)
        self._check_closed()        # (as asyncio's _add_reader)
        dup = sock.dup()
        try:
            ln = self._svc.listen(dup)      # (the listener owns the dup)
        except (UnsupportedConn, ValueError, OSError):
            dup.close()
            return super()._sock_accept(fut, sock)
        except ServiceClosed:
            dup.close()
            raise RuntimeError("Event loop is closed") from None
        wait = _Wait(self._goaio_accept_done, fut, sock, ln)
        ln.accept(wait.on_result)
        self._goaio.dirty = True
        fut.add_done_callback(lambda f: f.cancelled() and self._goaio_close_listener(ln))

    def _goaio_close_listener(self, ln):
        ln.close()      # its pending accept completes with ConnClosed
        if not self.is_closed():
            self._goaio.dirty = True

    def _goaio_accept_done(self, res, fut, sock, ln):
        self._goaio_close_listener(ln)
        conn = res.conn
        if conn is None:
            if not fut.done():
                fut.set_exception(res.err)
            return
        try:
            got = _accepted_socket(sock, conn)
        except OSError as exc:
            if not fut.done():
                fut.set_exception(exc)
            return
        if not fut.done():
            fut.set_result(got)
            return
        # the call was cancelled after goaio had accepted: the next one gets it
        kept = self._goaio_accepted
        if kept is None:
            kept = self._goaio_accepted = weakref.WeakKeyDictionary()
        kept.setdefault(sock, []).append(got)

    def close(self):
        kept = self._goaio_accepted
        if kept:
            for got in list(kept.values()):
                for s, _ in got:
                    s.close()
            kept.clear()
        super().close()
