"""goaio.aio: an asyncio event loop whose stream networking runs on goaio.

::

    import goaio.aio
    goaio.aio.run(main())                                  # as asyncio.run(main())
    asyncio.set_event_loop_policy(goaio.aio.EventLoopPolicy())

:class:`Loop` is asyncio's own selector event loop (callbacks, timers, tasks,
``add_reader``, signals, subprocesses, executors, datagrams, debug mode are
asyncio's code) whose TCP and Unix stream transports are goaio connections:
every connection that ``create_connection``, ``create_server``,
``create_unix_*``, ``connect_accepted_socket``, the streams API or ``ssl=``
makes is bound to ``loop.service``, and its reads and writes are goaio
operations whose completions the loop thread collects itself. On the compiled
backends the transport and the dispatch of completions are compiled
(goaio/core/transport.pxi: no Python bytecode of goaio's and no AIOResult per
message); on ``pure`` they are the Python classes here. See docs/aio.md.
"""

import asyncio
import collections
import contextvars
import errno
import heapq
import os
import socket
import ssl
import sys
import time
import types
import warnings
import weakref

from asyncio import (base_events, constants, events, format_helpers, futures, protocols,
                     sslproto, tasks, transports, trsock)
from asyncio.log import logger

import goaio as _goaio
from ._aio_net import NetMixin as _NetMixin, _conn_sock
from ._errors import ConnClosed, ServiceClosed
from ._aio_sock import SockMixin as _SockMixin
from ._aio_sockconn import SockConnMixin as _SockConnMixin

__all__ = ["Loop", "EventLoopPolicy", "new_event_loop", "run", "GoaioTransport"]

#: Size of the pool buffers a plain Protocol's receives use (share-buffer
#: mode: an idle connection holds none).
RECV_BUFFER_SIZE = 64 * 1024
#: Sends posted at once on one connection; more writes wait in the transport
#: and go out as one gather send when one completes.
MAX_INFLIGHT_SENDS = 16
#: Results taken from the service per collection.
BATCH = 256

_ATTACH_TAKES_TRANSPORT = sys.version_info >= (3, 13)
_SHUT_WR = socket.SHUT_WR


def _set_nodelay(sock):
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM \
            and sock.proto == socket.IPPROTO_TCP:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


class GoaioTransport(transports._FlowControlMixin, transports.Transport):
    """A stream transport over a goaio connection (``asyncio.Transport``).

    The class of every transport ``goaio.aio.Loop`` makes: on the compiled
    backends a compiled one (goaio/core/transport.pxi), on ``pure`` the
    Python one below. One receive is posted at a time: into a pool buffer
    (then copied once into the ``bytes`` given to ``data_received``) for a
    ``Protocol``, straight into ``get_buffer()``'s buffer for a
    ``BufferedProtocol``. Writes with nothing queued are sent at once, the
    rest are goaio sends of the caller's bytes (copied first only when
    mutable).
    """

    __slots__ = ()
    _start_tls_compatible = True
    # native: asyncio's loop.sock_sendfile (os.sendfile) on the socket once
    # every goaio send has completed (write() meanwhile raises)
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE
    #: write() with nothing queued sends at once (a non-blocking send(2) on
    #: the loop thread); only what the kernel does not take becomes a goaio
    #: send. False: every write is a goaio send (see docs/aio.md, "Delivery").
    #: Read when a transport is made.
    try_send_first = True


class _PyTransport(GoaioTransport):
    """The Python transport (the pure backend's)."""

    _sock = None
    _conn = None
    _writes_held = False    # (the TLS transport's test hook, _ssl_protocol)

    def __init__(self, loop, sock, protocol, waiter=None, extra=None, server=None, conn=None):
        # conn: an AIOConn goaio already bound (an accept's, a connect's;
        # TCP_NODELAY set by goaio); sock is then None
        if conn is not None:
            sock = _conn_sock(loop, conn)
        super().__init__(extra, loop)
        self._extra["socket"] = trsock.TransportSocket(sock)
        try:
            self._extra["sockname"] = sock.getsockname()
        except OSError:
            self._extra["sockname"] = None
        if "peername" not in self._extra:
            try:
                self._extra["peername"] = sock.getpeername()
            except OSError:
                self._extra["peername"] = None
        if conn is None:
            _set_nodelay(sock)
        self._sock_fd = sock.fileno()
        self._buffered = False
        self._protocol_connected = False
        self.set_protocol(protocol)
        self._server = server
        self._conn_lost = 0
        self._closing = False
        self._paused = False
        self._eof = False            # write_eof() called
        self._shut = False           # ... and done
        self._read_eof = False       # the peer's EOF delivered
        self._reading = False        # a receive is posted
        self._reading_proto = None   # ... into this protocol's buffer (None: a pool buffer)
        self._held = None            # a completed receive kept while paused
        self._sending = 0            # sends posted, not completed
        self._buffer_size = 0        # bytes posted or waiting, not yet written
        self._backlog = []           # writes waiting for a free send slot
        self._empty_waiter = None
        self._read_cb = self._on_read      # the contexts of its operations
        self._write_cb = self._on_write
        self._recv_iter = -1               # loop iteration of the last receive posted
        self._send_first = self.try_send_first
        if conn is None:
            conn = loop._svc.bind(sock, recvq_size=2, sendq_size=MAX_INFLIGHT_SENDS + 1,
                                  share_buff=loop._pool)
        self._conn = conn
        self._sock = sock
        if server is not None:
            _attach(server, self)
        loop._transports[self._sock_fd] = self
        loop.call_soon(self._protocol.connection_made, self)
        # reading starts once connection_made() has run
        loop.call_soon(self._start_reading)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    def __repr__(self):
        info = [self.__class__.__name__]
        if self._sock is None:
            info.append("closed")
        elif self._closing:
            info.append("closing")
        info.append(f"fd={self._sock_fd}")
        if self._sock is not None:
            info.append("read=" + ("paused" if self._paused else "polling"))
            info.append(f"write=<bufsize={self._buffer_size}>")
        return "<{}>".format(" ".join(info))

    def __del__(self, _warn=warnings.warn):
        if self._sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            conn = self._conn
            self._sock = None
            if conn is not None:
                conn.close()

    # -- protocol --

    def set_protocol(self, protocol):
        self._buffered = isinstance(protocol, protocols.BufferedProtocol)
        self._protocol = protocol
        self._protocol_connected = True

    def get_protocol(self):
        return self._protocol

    # -- reading --

    def is_closing(self):
        return self._closing

    def is_reading(self):
        return not self._closing and not self._paused

    def pause_reading(self):
        if not self.is_reading():
            return
        self._paused = True
        if self._loop.get_debug():
            logger.debug("%r pauses reading", self)

    def resume_reading(self):
        if self._closing or not self._paused:
            return
        self._paused = False
        if self._loop.get_debug():
            logger.debug("%r resumes reading", self)
        held = self._held
        if held is not None:
            self._held = None
            self._loop.call_soon(self._deliver, *held)
        else:
            self._start_reading()

    def _start_reading(self):
        """Post the next receive (one at a time)."""
        if self._reading or self._paused or self._closing or self._read_eof or self._conn_lost:
            return
        conn = self._conn
        if conn is None:
            return
        if self._buffered:
            proto = self._protocol
            try:
                buf = proto.get_buffer(-1)
                if not len(buf):
                    raise RuntimeError("get_buffer() returned an empty buffer")
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal error: protocol.get_buffer() call failed.")
                return
        else:
            proto = None
            buf = None
        try:
            conn.recv(self._read_cb, buf)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal read error on socket transport")
            return
        self._reading = True
        self._reading_proto = proto
        col = self._loop._goaio
        col.dirty = True
        self._recv_iter = col.iter

    def _on_read(self, res):
        """A receive completed (called by the loop with its result)."""
        giver = self._reading_proto
        self._reading = False
        self._reading_proto = None
        self._deliver(res, giver)

    def _deliver(self, res, giver):
        """giver: the protocol whose buffer the receive used, None for a pool buffer."""
        if self._conn_lost or self._closing:
            if giver is None and res.err is None and res.buff is not None:
                self._loop._pool.release(res.buff)
            return
        if self._paused:
            self._held = (res, giver)
            return
        err = res.err
        if err is not None:
            if isinstance(err, EOFError):
                self._on_eof()
            elif not isinstance(err, (ConnClosed, ServiceClosed)):
                self._fatal_error(err, "Fatal read error on socket transport")
            return
        n = res.bytes_transferred
        buff = res.buff
        if giver is None:
            # our pool buffer: one copy into the bytes the protocol keeps
            try:
                data = bytes(memoryview(buff)[:n])
            finally:
                self._loop._pool.release(buff)
            if not self._feed(data):
                return
        elif giver is self._protocol:
            # read straight into the protocol's own buffer
            try:
                giver.buffer_updated(n)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal error: protocol.buffer_updated() call failed.")
                return
        else:
            # the protocol changed while the receive was pending (start_tls):
            # the bytes belong to the new one
            if not self._feed(bytes(memoryview(buff)[:n])):
                return
        self._start_reading()

    def _feed(self, data):
        """Give ``data`` to the current protocol; False after a fatal error."""
        proto = self._protocol
        if not self._buffered:
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
            if self._conn_lost:
                return False
        return True

    def _on_eof(self):
        self._read_eof = True
        if self._loop.get_debug():
            logger.debug("%r received EOF", self)
        try:
            keep_open = self._protocol.eof_received()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.eof_received() call failed.")
            return
        if not keep_open:
            self.close()

    # -- writing --

    def write(self, data):
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
        if self._eof:
            raise RuntimeError("Cannot call write() after write_eof()")
        if self._empty_waiter is not None:
            raise RuntimeError("unable to write; sendfile is in progress")
        if not data:
            return
        if self._conn_lost:
            if self._conn_lost >= constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                logger.warning("socket.send() raised exception.")
            self._conn_lost += 1
            return
        if not self._sending and not self._backlog and self._send_first:
            # nothing queued: write at once, as asyncio does (an error is then
            # seen by this very call, and the common case needs no result)
            try:
                n = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal write error on socket transport")
                return
            if n == len(data):
                return
            data = bytes(memoryview(data)[n:])
        elif type(data) is not bytes:
            # the caller may change a mutable buffer once write() returns
            data = bytes(data)
        self._buffer_size += len(data)
        if self._sending >= MAX_INFLIGHT_SENDS or self._backlog or self._writes_held:
            self._backlog.append(data)
        else:
            self._post_send(data)
        self._maybe_pause_protocol()

    def writelines(self, list_of_data):
        if self._eof:
            raise RuntimeError("Cannot call writelines() after write_eof()")
        if self._empty_waiter is not None:
            raise RuntimeError("unable to writelines; sendfile is in progress")
        items = []
        size = 0
        for data in list_of_data:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
            if data:
                if type(data) is not bytes:
                    data = bytes(data)
                items.append(data)
                size += len(data)
        if not items:
            return
        if self._conn_lost:
            if self._conn_lost >= constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                logger.warning("socket.send() raised exception.")
            self._conn_lost += 1
            return
        if not self._sending and not self._backlog and self._send_first:
            # nothing queued: one gather send(2) at once (sendmsg)
            try:
                n = self._sock.sendmsg(items[:512])
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
        self._buffer_size += size
        if self._sending >= MAX_INFLIGHT_SENDS or self._backlog or self._writes_held:
            self._backlog.extend(items)
        else:
            # one gather send (writev)
            self._post_send(items[:512] if len(items) > 1 else items[0])
            if len(items) > 512:
                self._backlog.extend(items[512:])
        self._maybe_pause_protocol()

    def _post_send(self, data):
        try:
            self._conn.send(self._write_cb, data)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal write error on socket transport")
            return
        self._sending += 1
        self._loop._goaio.dirty = True

    def _on_write(self, res):
        """A send completed."""
        self._sending -= 1
        if self._conn_lost:
            return
        err = res.err
        buff = res.buff
        self._buffer_size -= sum(map(len, buff)) if type(buff) is list else len(buff)
        if err is not None:
            if not isinstance(err, (ConnClosed, ServiceClosed)):
                self._fatal_error(err, "Fatal write error on socket transport")
            return
        backlog = self._backlog
        if backlog and not self._writes_held:
            self._backlog = backlog[512:]
            batch = backlog[:512]
            self._post_send(batch if len(batch) > 1 else batch[0])
            if self._conn_lost:
                return
        self._maybe_resume_protocol()
        if self._sending or self._backlog:
            return
        waiter = self._empty_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._closing:
            self._conn_lost += 1
            self._call_connection_lost(None)
        elif self._eof:
            self._shutdown_write()

    def _shutdown_write(self):
        if self._shut or self._sock is None:
            return
        self._shut = True
        try:
            self._sock.shutdown(_SHUT_WR)
        except OSError:
            pass

    def get_write_buffer_size(self):
        return self._buffer_size

    def can_write_eof(self):
        return True

    def write_eof(self):
        if self._closing or self._eof:
            return
        self._eof = True
        if not self._sending and not self._backlog:
            self._shutdown_write()

    def _make_empty_waiter(self):
        if self._empty_waiter is not None:
            raise RuntimeError("Empty waiter is already set")
        self._empty_waiter = self._loop.create_future()
        if not self._sending and not self._backlog:
            self._empty_waiter.set_result(None)
        return self._empty_waiter

    def _reset_empty_waiter(self):
        self._empty_waiter = None

    # -- closing --

    def close(self):
        if self._closing:
            return
        self._closing = True
        if not self._sending and not self._backlog:
            self._conn_lost += 1
            self._loop.call_soon(self._call_connection_lost, None)

    def abort(self):
        self._force_close(None)

    def _fatal_error(self, exc, message="Fatal error on transport"):
        if isinstance(exc, OSError):
            if self._loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=True)
        else:
            self._loop.call_exception_handler({
                "message": message,
                "exception": exc,
                "transport": self,
                "protocol": self._protocol,
            })
        self._force_close(exc)

    def _force_close(self, exc):
        if self._conn_lost:
            return
        if self._backlog or self._sending:
            self._backlog = []
            self._buffer_size = 0
            # pending sends must not reach the wire after an abort
            conn = self._conn
            if conn is not None:
                conn.close()
        self._closing = True
        self._conn_lost += 1
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc):
        if self._sock is None:
            return
        try:
            if self._protocol_connected:
                self._protocol.connection_lost(exc)
        finally:
            conn = self._conn
            self._sock = None
            held = self._held
            self._held = None
            if held is not None and held[1] is None and held[0].err is None:
                self._loop._pool.release(held[0].buff)   # a pool buffer never delivered
            self._reading_proto = None
            if conn is not None:
                conn.close()        # closes the socket too
                self._loop._goaio.dirty = True   # collect what the close completed
            waiter = self._empty_waiter
            if waiter is not None and not waiter.done():
                waiter.set_exception(ConnectionError("Connection is closed by peer"))
            self._protocol = None
            self._loop = None
            self._conn = None
            server = self._server
            if server is not None:
                self._server = None
                _detach(server, self)


def _tls_timeouts(handshake, shutdown):
    """A TLS transport's ssl_handshake_timeout and ssl_shutdown_timeout: None
    is asyncio's default; the checks, errors and messages are asyncio's
    SSLProtocol's (a value that does not compare with 0 raises its
    TypeError), made before the socket is touched; NaN, which asyncio takes
    (and then times out at no defined moment), is refused as <= 0 is."""
    if handshake is None:
        handshake = constants.SSL_HANDSHAKE_TIMEOUT
    elif handshake <= 0 or handshake != handshake:
        raise ValueError(f"ssl_handshake_timeout should be a positive number, got {handshake}")
    if shutdown is None:
        shutdown = constants.SSL_SHUTDOWN_TIMEOUT
    elif shutdown <= 0 or shutdown != shutdown:
        raise ValueError(f"ssl_shutdown_timeout should be a positive number, got {shutdown}")
    return handshake, shutdown


class _SSLTransport(_PyTransport):
    """A TLS stream transport on goaio's own TLS (``ssl=`` of
    ``create_connection`` / ``create_server`` and friends), on every
    backend: the socket is bound plain and upgraded at once
    (``conn.start_tls``); the protocol's ``connection_made`` comes once the
    handshake has completed, and a handshake failure is the waiter's
    exception, as asyncio's ``SSLProtocol`` gives them. Reads and writes are
    goaio operations moving plaintext (never a send(2) on the socket);
    ``close()`` sends close_notify (``conn.shutdown``) once the queued
    writes are out, then closes. (Its name says "SSL": CPython's
    test_events checks that a TLS transport's class name does.)"""

    # asyncio's TLS transport: no half-close, sendfile through write()
    _sendfile_compatible = constants._SendfileMode.FALLBACK

    def __init__(self, loop, sock, protocol, sslcontext, waiter=None, server_side=False,
                 server_hostname=None, extra=None, server=None, ssl_handshake_timeout=None,
                 ssl_shutdown_timeout=None, conn=None, call_connection_made=True):
        # what _PyTransport.__init__ does, but the protocol waits for the
        # handshake. conn: the socket's goaio connection, already bound
        # (start_tls, an accepted goaio connection), else sock is bound here;
        # sock may then be None (the addresses are the connection's).
        ssl_handshake_timeout, ssl_shutdown_timeout = _tls_timeouts(ssl_handshake_timeout,
                                                                    ssl_shutdown_timeout)
        transports._FlowControlMixin.__init__(self, extra, loop)
        extra = self._extra
        if sock is not None:
            extra["socket"] = trsock.TransportSocket(sock)
            try:
                extra["sockname"] = sock.getsockname()
            except OSError:
                extra["sockname"] = None
            if "peername" not in extra:
                try:
                    extra["peername"] = sock.getpeername()
                except OSError:
                    extra["peername"] = None
        else:
            extra["sockname"] = conn.sockname
            if "peername" not in extra:
                extra["peername"] = conn.peername
        if sslcontext is None:
            sslcontext = sslproto._create_transport_context(server_side, server_hostname)
        extra["sslcontext"] = sslcontext
        if conn is None:
            _set_nodelay(sock)
        self._sock_fd = sock.fileno() if sock is not None else conn.fd
        self._call_made = call_connection_made
        self._buffered = False
        self._protocol_connected = False
        self._protocol = protocol
        self._buffered = isinstance(protocol, protocols.BufferedProtocol)
        self._server = server
        self._conn_lost = 0
        self._closing = False
        self._paused = False
        self._eof = False
        self._shut = False
        self._read_eof = False
        self._reading = False
        self._reading_proto = None
        self._held = None
        self._sending = 0
        self._buffer_size = 0
        self._backlog = []
        self._empty_waiter = None
        self._read_cb = self._on_read
        self._write_cb = self._on_write
        self._recv_iter = -1
        self._send_first = False            # the socket carries records: goaio sends only
        self._waiter = waiter
        self._handshaking = True
        self._tls_closing = False           # close_notify posted
        self._handshake_timeout = ssl_handshake_timeout
        self._shutdown_timeout = ssl_shutdown_timeout
        if conn is None:
            conn = loop._svc.bind(sock, recvq_size=2, sendq_size=MAX_INFLIGHT_SENDS + 2,
                                  share_buff=loop._pool)
        self._conn = conn
        self._sock = sock if sock is not None else conn
        try:
            conn.start_tls(self._on_handshake, sslcontext, server_side=server_side,
                           server_hostname=server_hostname or None,
                           ssl_handshake_timeout=ssl_handshake_timeout)
        except BaseException:
            self._sock = self._conn = None
            conn.close()
            raise
        loop._goaio.dirty = True
        if server is not None:
            _attach(server, self)
        loop._transports[self._sock_fd] = self

    def _on_handshake(self, res):
        self._handshaking = False
        if self._sock is None:
            return                          # closed meanwhile
        err = res.err
        if err is None:
            tls = self._conn.tls
            if tls is None:
                err = ConnectionResetError("the TLS handshake did not complete")
        if err is not None:
            err = _handshake_error(err, self._handshake_timeout)
            if self._loop.get_debug():
                logger.debug("%r: SSL handshake failed", self, exc_info=err)
            self._closing = True
            self._conn_lost += 1
            self._aborted = True
            waiter = self._waiter
            self._waiter = None
            self._call_connection_lost(err)
            if waiter is not None and not waiter.cancelled():
                waiter.set_exception(err)
            return
        self._protocol_connected = True
        _tls_connected(self, tls, self._protocol, self._start_reading)

    def _start_reading(self):
        if self._handshaking:
            return
        super()._start_reading()

    def _on_eof(self):
        self._read_eof = True
        _tls_eof_received(self, self._protocol, self._fatal_error)

    def can_write_eof(self):
        return False

    def write_eof(self):
        raise NotImplementedError

    def close(self):
        if self._handshaking and not self._closing:
            # before connection_made: give up the handshake, and close the
            # connection now (no connection_lost is owed), so that the
            # handshake's result, which holds it and its SSLContext, is
            # collected at the next iteration (CPython's
            # test_handshake_timeout_handler_leak checks the context is gone
            # right after the cancelled create_connection)
            self._aborted = True
            self._closing = True
            self._conn_lost += 1
            waiter = self._waiter
            self._waiter = None
            self._lost(None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)     # (asyncio's SSLProtocol wakes it so)
            return
        super().close()

    def _force_close(self, exc):
        self._aborted = True
        wait = self._tls_wait
        if wait is not None:
            wait.done(exc)          # closing after our close_notify: now
            return
        super()._force_close(exc)

    _aborted = False
    _tls_wait = None            # the _TLSClosing of a close under way
    _raw_eof = False            # reading ended with a TCP EOF, no close_notify

    def _call_connection_lost(self, exc):
        if self._sock is None:
            return
        if exc is None and not self._aborted and not self._tls_closing and not self._handshaking \
                and not self._raw_eof:
            # close_notify first (then SHUT_WR); the connection closes when it is out
            self._tls_closing = True
            try:
                self._tls_wait = _TLSClosing(self._loop, self._conn, self._shutdown_timeout,
                                             self._lost)
                return
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                pass
        self._lost(exc)

    # -- test hooks (CPython's test_ssl reaches into asyncio's SSLProtocol
    #    through these two names; uvloop's TLS transport has them too) --

    @property
    def _ssl_protocol(self):
        """Test hook: an object whose ``pause_writing()`` holds the
        transport's outgoing writes (they queue, nothing is sent, ``close()``
        waits for them) and ``resume_writing()`` releases them."""
        return _TLSWriteGate(self)

    def _test__append_write_backlog(self, data):
        """Test hook: queue ``data`` as a write without flow control (no
        ``pause_writing()`` of the protocol); it is sent before the
        close_notify, as every queued write."""
        if self._conn_lost or self._conn is None:
            return
        data = bytes(data)
        self._buffer_size += len(data)
        if self._sending >= MAX_INFLIGHT_SENDS or self._backlog or self._writes_held:
            self._backlog.append(data)
        else:
            self._post_send(data)

    def _hold_writes(self, held):
        self._writes_held = held
        if held or self._conn_lost:
            return
        backlog = self._backlog
        while backlog and self._sending < MAX_INFLIGHT_SENDS and not self._conn_lost:
            batch = backlog[:512]
            del backlog[:512]
            self._post_send(batch if len(batch) > 1 else batch[0])

    def _lost(self, exc):
        if self._sock is None:
            return
        try:
            super()._call_connection_lost(exc)
        finally:
            # no cycle through the bound handlers: a transport its user
            # dropped (its SSLContext with it) goes without a gc pass, as
            # asyncio's TLS transport does
            self._read_cb = self._write_cb = None


def _handshake_error(err, timeout):
    """asyncio's exception for a failed goaio handshake's error."""
    if isinstance(err, _goaio.HandshakeTimeout):
        return ConnectionAbortedError(
            f"SSL handshake is taking longer than {timeout} seconds: aborting the connection")
    if isinstance(err, (EOFError, ConnClosed, ssl.SSLEOFError)) or (
            isinstance(err, ssl.SSLError)
            and getattr(err, "reason", None) == "UNEXPECTED_EOF_WHILE_READING"):
        # the peer went away mid-handshake: asyncio's error
        return ConnectionResetError("Connection lost during the SSL handshake")
    return err


def _tls_connected(tr, tls, protocol, start_reading):
    """A TLS transport's handshake is done (either class): the extra info,
    then connection_made, the reading, the waiter, as asyncio orders them."""
    extra = tr._extra
    extra["peercert"] = tls.getpeercert()
    extra["cipher"] = tls.cipher()
    extra["compression"] = tls.compression()
    extra["ssl_object"] = tls.ssl_object
    loop = tr._loop
    if tr._call_made:
        loop.call_soon(protocol.connection_made, tr)
    loop.call_soon(start_reading)
    waiter = tr._waiter
    tr._waiter = None
    if waiter is not None:
        loop.call_soon(futures._set_result_unless_cancelled, waiter, None)


def _tls_eof_received(tr, protocol, fatal_error):
    """A TLS transport's EOF (either class): the peer's close_notify, or its
    TCP EOF at a record boundary. As asyncio's TLS transport: eof_received()
    then close (a TCP EOF without close_notify is not answered with one)."""
    conn = tr._conn
    if conn is not None and not _close_notify_seen(tr._loop, conn):
        tr._raw_eof = True
    try:
        keep_open = protocol.eof_received()
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        fatal_error(exc, "Fatal error: protocol.eof_received() call failed.")
        return
    if keep_open:
        logger.warning("returning true from eof_received() has no effect when using ssl")
    tr.close()


class _TLSClosing:
    """A TLS transport's close after the protocol is done (either class), as
    asyncio's TLS transport closes: close_notify goes out after the queued
    writes (``conn.shutdown``, the SHUT_WR with it), then the peer's
    close_notify or FIN is waited for, what it sends meanwhile read and
    dropped, and only then is the connection closed and ``finish`` (the
    transport's connection_lost) called. Closed earlier, a socket with
    unread bytes in it (a TLS 1.3 session ticket the peer sent late, say)
    sends RST, and the peer's kernel throws away what its reader had not
    taken yet: our last data and our close_notify. ``ssl_shutdown_timeout``
    bounds it all (asyncio's default 30 s): then the connection is closed as
    it is and the protocol's ``connection_lost`` gets
    ``TimeoutError("SSL shutdown timed out")``. Once per connection."""

    __slots__ = ("_loop", "_conn", "_finish", "_timer", "_buf")
    _recv_iter = -1         # (what the pure loop's dispatch asks of a context's owner)
    _read_cb = None

    def __init__(self, loop, conn, timeout, finish):
        self._loop = loop
        self._conn = conn
        self._finish = finish
        self._buf = None
        self._timer = loop.call_later(timeout, self._expired)
        try:
            conn.shutdown(self._sent)   # (raises: the caller closes at once)
        except BaseException:
            self._finish = None
            self._timer.cancel()
            raise
        loop._goaio.dirty = True

    def _sent(self, res):
        """Our close_notify is out (or could not go)."""
        if self._finish is None:
            return
        if res.err is not None or _close_notify_seen(self._loop, self._conn):
            self.done(None)
            return
        self._buf = bytearray(16384)
        self._read()

    def _read(self):
        try:
            self._conn.recv(self._on_read, self._buf)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            self.done(None)
            return
        self._loop._goaio.dirty = True

    def _on_read(self, res):
        if self._finish is None:
            return
        err = res.err
        if err is None:
            self._read()                # the peer's data after our close: dropped
        elif isinstance(err, (EOFError, ConnClosed, ServiceClosed)):
            self.done(None)             # its close_notify, or its FIN
        else:
            self.done(err)              # (asyncio: the error is connection_lost's)

    def _expired(self):
        if self._finish is not None:
            self.done(TimeoutError("SSL shutdown timed out"))

    def done(self, exc):
        """Close now (also the transport's abort() while waiting)."""
        finish = self._finish
        if finish is None:
            return
        self._finish = None
        self._timer.cancel()
        self._buf = None
        finish(exc)


class _CSSLMixin:
    """The compiled backends' TLS transport: what _SSLTransport is on pure,
    with the compiled per-message path. The class is made per backend
    (``_ssl_transport_class``): this mixin first, then the backend's
    compiled transport class, whose ``AioCore`` carries the messages (the
    connection's TLS records are goaio's, in C: reads and writes are
    plaintext operations, never a send(2) of the transport's own). What
    runs once per connection is here, in Python: the handshake before
    ``connection_made``, the TLS EOF rules, close_notify before the close
    (the core asks ``_tls_eof`` and ``_tls_close_first``), the test hooks."""

    __slots__ = ()

    # asyncio's TLS transport: no half-close, sendfile through write()
    _sendfile_compatible = constants._SendfileMode.FALLBACK

    def __init__(self, loop, sock, protocol, sslcontext, waiter=None, server_side=False,
                 server_hostname=None, extra=None, server=None, ssl_handshake_timeout=None,
                 ssl_shutdown_timeout=None, conn=None, call_connection_made=True):
        # (what _CTransportBase.__init__ does, but the protocol waits for
        # the handshake; conn and sock as for _SSLTransport)
        ssl_handshake_timeout, ssl_shutdown_timeout = _tls_timeouts(ssl_handshake_timeout,
                                                                    ssl_shutdown_timeout)
        extra = dict(extra) if extra else {}
        if sslcontext is None:
            sslcontext = sslproto._create_transport_context(server_side, server_hostname)
        extra["sslcontext"] = sslcontext
        self._extra = extra
        self._loop = loop
        self._protocol_paused = False
        self._high_water = _HIGH_WATER
        self._low_water = _LOW_WATER
        self._waiter = waiter
        self._handshaking = True
        self._aborted = False
        self._tls_closing = False           # close_notify posted
        self._raw_eof = False               # reading ended with a TCP EOF, no close_notify
        self._handshake_timeout = ssl_handshake_timeout
        self._shutdown_timeout = ssl_shutdown_timeout
        self._tls_wait = None               # the _TLSClosing of a close under way
        self._call_made = call_connection_made
        if conn is None:
            _set_nodelay(sock)
            conn = loop._svc.bind(sock, recvq_size=2, sendq_size=MAX_INFLIGHT_SENDS + 2,
                                  share_buff=loop._pool)
        c = self._c = loop._goaio_mod.AioCore(loop._goaio, self, conn, protocol, server,
                                              False, _HIGH_WATER, _LOW_WATER)
        c.set_tls(self)
        try:
            conn.start_tls(self._on_handshake, sslcontext, server_side=server_side,
                           server_hostname=server_hostname or None,
                           ssl_handshake_timeout=ssl_handshake_timeout)
        except BaseException:
            c.mark_lost()
            c.lost_now(None)
            raise
        loop._goaio.dirty = True
        if server is not None:
            _attach(server, self)
        loop._transports[conn.fd] = self

    def _on_handshake(self, res):
        self._handshaking = False
        c = self._c
        if not c.alive_:
            return                          # closed meanwhile
        err = res.err
        conn = self._conn
        tls = conn.tls if conn is not None else None
        if err is None and tls is None:
            err = ConnectionResetError("the TLS handshake did not complete")
        loop = self._loop
        if err is not None:
            err = _handshake_error(err, self._handshake_timeout)
            if loop.get_debug():
                logger.debug("%r: SSL handshake failed", self, exc_info=err)
            self._aborted = True
            c.mark_lost()
            waiter = self._waiter
            self._waiter = None
            c.lost_now(err)                 # (no connection_lost: not connected)
            if waiter is not None and not waiter.cancelled():
                waiter.set_exception(err)
            return
        c.handshaken()
        _tls_connected(self, tls, c.get_protocol(), c.start_reading)

    # -- asked by the core --

    def _tls_eof(self):
        c = self._c
        _tls_eof_received(self, c.get_protocol(), c.fatal_error)

    def _tls_close_first(self, exc):
        """The connection is about to close: True if close_notify was posted
        first (the core's lost_now() runs once the peer's close_notify or FIN
        is in, _TLSClosing)."""
        if exc is not None or self._aborted or self._tls_closing or self._handshaking \
                or self._raw_eof:
            return False
        self._tls_closing = True
        try:
            self._tls_wait = _TLSClosing(self._loop, self._conn, self._shutdown_timeout,
                                         self._c.lost_now)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            return False
        return True

    # -- the transport --

    def can_write_eof(self):
        return False

    def write_eof(self):
        raise NotImplementedError

    def close(self):
        c = self._c
        if self._handshaking and not c.is_closing():
            # before connection_made: give up the handshake and close now
            # (as _SSLTransport.close)
            self._aborted = True
            c.mark_lost()
            waiter = self._waiter
            self._waiter = None
            c.lost_now(None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)     # (asyncio's SSLProtocol wakes it so)
            return
        c.close()

    def abort(self):
        self._force_close(None)

    def _force_close(self, exc):
        self._aborted = True
        wait = self._tls_wait
        if wait is not None:
            wait.done(exc)          # closing after our close_notify: now
            return
        self._c.force_close(exc)

    # -- test hooks (as _SSLTransport's) --

    @property
    def _ssl_protocol(self):
        return _TLSWriteGate(self)

    def _test__append_write_backlog(self, data):
        self._c.append_backlog(data)

    def _hold_writes(self, held):
        self._c.hold_writes(held)


#: the TLS transport classes (isinstance)
_TLS_CLASSES = (_SSLTransport, _CSSLMixin)
_ssl_classes = {}


def _ssl_transport_class(mod):
    """The TLS transport class for goaio backend module ``mod``."""
    cls = _ssl_classes.get(mod)
    if cls is None:
        base = _transport_class(mod)
        if base is _PyTransport:
            cls = _SSLTransport
        else:
            name = f"GoaioSSLTransport_{mod.BACKEND_NAME}"
            cls = type(name, (_CSSLMixin, base), {
                "__slots__": ("_waiter", "_handshaking", "_aborted", "_tls_closing",
                              "_raw_eof", "_handshake_timeout", "_shutdown_timeout",
                              "_tls_wait", "_call_made"),
                "__module__": __name__, "__qualname__": name})
        _ssl_classes[mod] = cls
    return cls


class _TLSWriteGate:
    """``_SSLTransport._ssl_protocol`` (a test hook, see there)."""

    __slots__ = ("_tr",)

    def __init__(self, tr):
        self._tr = tr

    def pause_writing(self):
        self._tr._hold_writes(True)

    def resume_writing(self):
        self._tr._hold_writes(False)


def _close_notify_seen(loop, conn):
    """True once the peer's close_notify was read on goaio TLS ``conn``."""
    fn = getattr(loop._goaio_mod, "_tls_close_notify_seen", None)
    if fn is None:
        from . import _pure_tls
        fn = _pure_tls.close_notify_seen
    return fn(conn)


def _tls_transport_from_conn(loop, conn, protocol, sslcontext, server_side, server_hostname,
                             handshake_timeout, waiter, server, sock=None, extra=None,
                             shutdown_timeout=None, call_connection_made=True):
    """A TLS transport over ``conn``, a plain goaio connection bound to
    ``loop.service`` (``sock``: its socket, if the caller has it), upgraded
    at once (``conn.start_tls``); ``protocol.connection_made`` and then the
    ``waiter`` (a future, or None) once the handshake has completed, a
    handshake failure is the waiter's exception; ``server``: the asyncio
    Server it belongs to, or None. For accepted goaio connections. ``conn``
    must be bound as the loop binds its own: ``share_buff=loop._pool`` (its
    receives take the loop's pool buffers), ``recvq_size >= 2``,
    ``sendq_size >= MAX_INFLIGHT_SENDS + 2``."""
    return loop._goaio_ssl_cls(loop, sock, protocol, sslcontext, waiter, server_side, server_hostname,
                         extra, server, handshake_timeout, shutdown_timeout, conn=conn,
                         call_connection_made=call_connection_made)


def _detach_plain(transport):
    """Take the goaio connection out of a plain goaio transport for an
    in-place start_tls: (conn, sock, server), the transport then closed
    without connection_lost; None when that cannot be done now (sends
    queued, or a receive completed whose bytes were not delivered: those
    belong to the TLS layer, which cannot be given them)."""
    if isinstance(transport, _CTransportBase):
        sock = transport._sock
        got = transport._c.detach()
        if got is None:
            return None
        return got[0], sock, got[1]
    if type(transport) is not _PyTransport:
        return None
    tr = transport
    conn = tr._conn
    if conn is None or tr._sock is None or tr._conn_lost or tr._closing:
        return None
    if tr._sending or tr._backlog or tr._held is not None or tr._empty_waiter is not None:
        return None
    if tr._reading and conn.cancel(tr._read_cb) != 1:
        return None         # completed: its result is on its way
    sock = tr._sock
    server = tr._server
    tr._closing = True
    tr._conn_lost += 1
    tr._sock = None
    tr._conn = None
    tr._protocol = None
    tr._reading_proto = None
    tr._server = None
    tr._read_cb = tr._write_cb = None
    loop = tr._loop
    if loop._transports.get(tr._sock_fd) is tr:
        del loop._transports[tr._sock_fd]
    return conn, sock, server


def _attach(server, tr):
    if _ATTACH_TAKES_TRANSPORT:
        server._attach(tr)
    else:
        server._attach()


def _detach(server, tr):
    if _ATTACH_TAKES_TRANSPORT:
        server._detach(tr)
    else:
        server._detach()


_NO_EXTRA = types.MappingProxyType({})
_HIGH_WATER = 64 * 1024         # asyncio's default write buffer limits
_LOW_WATER = _HIGH_WATER // 4
_MISSING = object()


class _CTransportBase(GoaioTransport):
    """The Python half of the compiled backends' transport: what runs once
    per connection (making it, get_extra_info, limits). Its subclass, made by
    the backend (``aio_transport_class``), has the compiled per-message
    methods and the ``_c`` slot, the ``AioCore`` that holds the state.

    No ``__dict__``: an idle transport is this object and its core."""

    __slots__ = ()

    def __init__(self, loop, sock, protocol, waiter=None, extra=None, server=None, conn=None):
        # (conn: an AIOConn goaio already bound, sock None: see _PyTransport)
        # What _FlowControlMixin.__init__ sets, without a dict or two new
        # ints per transport: extra is kept as given (sockname, peername and
        # socket are asked of the connection when wanted), the default limits
        # are shared objects.
        self._extra = extra if extra else _NO_EXTRA
        self._loop = loop
        self._protocol_paused = False
        self._high_water = _HIGH_WATER
        self._low_water = _LOW_WATER
        if conn is None:
            _set_nodelay(sock)
            conn = loop._svc.bind(sock, recvq_size=2, sendq_size=MAX_INFLIGHT_SENDS + 1,
                                  share_buff=loop._pool)
        self._c = loop._goaio_mod.AioCore(loop._goaio, self, conn, protocol, server,
                                          self.try_send_first, _HIGH_WATER, _LOW_WATER)
        if server is not None:
            _attach(server, self)
        loop._transports[conn.fd] = self
        loop.call_soon(protocol.connection_made, self)
        # reading starts once connection_made() has run
        loop.call_soon(self._c.start_reading)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    def __repr__(self):
        c = getattr(self, "_c", None)
        info = [self.__class__.__name__] + (c.repr_info() if c is not None else ["new"])
        return "<{}>".format(" ".join(info))

    def __del__(self, _warn=warnings.warn):
        c = getattr(self, "_c", None)
        if c is not None:
            c.finalize(_warn, self)

    def get_extra_info(self, name, default=None):
        v = self._extra.get(name, _MISSING)
        if v is not _MISSING:
            return v
        c = self._c
        if name == "socket":
            return c.transport_socket
        if name == "sockname":
            return c.sockname()
        if name == "peername":
            return c.peername
        return default

    def set_write_buffer_limits(self, high=None, low=None):
        self._set_write_buffer_limits(high=high, low=low)
        self._c.set_limits(self._high_water, self._low_water)
        self._c.maybe_pause()

    def _lost(self, server):
        # (connection_lost ran)
        self._loop._transports._goaio_forget(self._sock_fd, self)
        if server is not None:
            _detach(server, self)


class _TransportMap(weakref.WeakValueDictionary):
    """``loop._transports``, asyncio's fd -> transport map (weak values),
    with the compiled transports kept in a list indexed by fd instead: no
    weak reference and no int key per connection. They leave it at
    connection_lost (a live one is kept alive by its posted receive anyway)."""

    def __init__(self):
        super().__init__()
        self._by_fd = []

    def _goaio_get(self, fd):
        by = self._by_fd
        if type(fd) is int and 0 <= fd < len(by):
            return by[fd]
        return None

    def _goaio_forget(self, fd, tr):
        if self._goaio_get(fd) is tr:
            self._by_fd[fd] = None

    def __getitem__(self, key):
        t = self._goaio_get(key)
        return t if t is not None else super().__getitem__(key)

    def get(self, key, default=None):
        t = self._goaio_get(key)
        return t if t is not None else super().get(key, default)

    def __contains__(self, key):
        return self._goaio_get(key) is not None or super().__contains__(key)

    def __setitem__(self, key, value):
        if type(key) is int and key >= 0 and isinstance(value, _CTransportBase):
            super().pop(key, None)
            if value._sock is None:
                return              # (lost already: nothing to find)
            by = self._by_fd
            if key >= len(by):
                by.extend([None] * (key + 1 - len(by)))
            by[key] = value
        else:
            if self._goaio_get(key) is not None:
                self._by_fd[key] = None
            super().__setitem__(key, value)

    def __delitem__(self, key):
        if self._goaio_get(key) is not None:
            self._by_fd[key] = None
        else:
            super().__delitem__(key)

    def pop(self, key, *default):
        t = self._goaio_get(key)
        if t is not None:
            self._by_fd[key] = None
            return t
        return super().pop(key, *default)

    def _goaio_items(self):
        return [(fd, t) for fd, t in enumerate(self._by_fd) if t is not None]

    def __len__(self):
        return super().__len__() + len(self._goaio_items())

    def __iter__(self):
        yield from list(super().__iter__())
        for fd, _ in self._goaio_items():
            yield fd

    def keys(self):
        return list(self)

    def values(self):
        return list(super().values()) + [t for _, t in self._goaio_items()]

    def items(self):
        return list(super().items()) + self._goaio_items()


class _PyCollector:
    """The pure backend's collector: takes the loop's completions and hands
    them to their transports (the compiled backends' is ``AioCollector``,
    goaio/core/transport.pxi, with the same interface)."""

    def __init__(self, svc, loop, ready, orig_select):
        self.svc = svc
        self.loop = loop
        self.ready = ready
        self.orig_select = orig_select
        self.results_q = collections.deque()
        self.iter = 0               # select() calls (loop iterations)
        self.dirty = False          # something was posted: take before waiting
        self.dispatch_pending = False
        self.collects = 0
        self.results = 0
        self.handle = None

    def set_handle(self, handle):
        self.handle = handle

    def clear(self):
        self.results_q.clear()
        self.orig_select = self.ready = self.handle = None

    def select(self, timeout=None):
        # Results of operations that the last callbacks posted (a receive
        # whose data was there, say) are taken before the loop waits, and
        # dispatched by one handle queued behind the callbacks already ready:
        # the order asyncio gives its own IO callbacks.
        self.iter += 1
        if self.dispatch_pending:
            timeout = 0
        elif self.dirty:
            self.dirty = False
            if self.take():
                self.dispatch_pending = True
                self.ready.append(self.handle)
                timeout = 0
        return self.orig_select(timeout)

    def take(self):
        """Take what the service has (doing on this thread the IO that is
        ready); True if there is something to dispatch."""
        results = self.results_q
        try:
            got = self.svc.get_complete_statuses(BATCH, 0)
        except ServiceClosed:
            return bool(results)
        if not got:
            return bool(results)
        self.collects += 1
        self.results += len(got)
        results.extend(got)
        return True

    def dispatch_queued(self):
        self.dispatch_pending = False
        self.dispatch()

    def io_ready(self):
        if self.take():
            self.dispatch()

    def dispatch(self):
        """Hand each taken result to its transport (res.context is the
        transport's bound handler)."""
        results = self.results_q
        pop = results.popleft
        it = self.iter
        deferred = None
        while results:
            res = pop()
            ctx = res.context
            tr = ctx.__self__
            if tr._recv_iter == it and ctx is tr._read_cb:
                # posted in this very iteration (after a previous read's
                # data): its data waits for the next one, as a readiness
                # loop reads a socket once per iteration
                if deferred is None:
                    deferred = []
                deferred.append(res)
                continue
            ctx(res)
        if deferred is not None:
            results.extend(deferred)
            self.dirty = True


# -- the run loop (compiled: goaio/core/runloop.pxi, AioRunLoop) --

if sys.version_info >= (3, 13):
    def _callback_source(handle):
        return format_helpers._format_callback_source(handle._callback, handle._args,
                                                      debug=handle._loop.get_debug())
else:
    def _callback_source(handle):
        return format_helpers._format_callback_source(handle._callback, handle._args)


def _handle_error(handle, exc):
    """What Handle._run does with an exception of its callback (the compiled
    run loop runs asyncio's handles without Handle._run)."""
    context = {
        "message": f"Exception in callback {_callback_source(handle)}",
        "exception": exc,
        "handle": handle,
    }
    if handle._source_traceback:
        context["source_traceback"] = handle._source_traceback
    handle._loop.call_exception_handler(context)


def _run_debug(loop, handle):
    """BaseEventLoop._run_once's run of one handle in debug mode."""
    try:
        loop._current_handle = handle
        t0 = loop.time()
        handle._run()
        dt = loop.time() - t0
        if dt >= loop.slow_callback_duration:
            logger.warning("Executing %s took %.3f seconds", base_events._format_handle(handle), dt)
    finally:
        loop._current_handle = None


#: The BaseEventLoop methods the compiled run loop replaces on a Loop whose
#: class does not override them (docs/aio.md, "The run loop").
_RUNLOOP_METHODS = ("_run_once", "call_soon", "create_future", "create_task", "get_debug")
_runloop_ready = set()


def _install_runloop(loop, mod):
    if not hasattr(mod, "AioRunLoop"):
        return None
    if mod not in _runloop_ready:
        mod.aio_runloop_init(events.Handle, events.TimerHandle, futures.Future, tasks.Task,
                             contextvars.Context, heapq.heappop, heapq.heapify,
                             base_events.BaseEventLoop, _handle_error, _run_debug,
                             base_events.MAXIMUM_SELECT_TIMEOUT,
                             base_events._MIN_SCHEDULED_TIMER_HANDLES,
                             base_events._MIN_CANCELLED_TIMER_HANDLES_FRACTION)
        _runloop_ready.add(mod)
    rl = mod.AioRunLoop(loop, loop._ready)
    cls = type(loop)
    base = base_events.BaseEventLoop
    for name in _RUNLOOP_METHODS:
        if getattr(cls, name) is getattr(base, name):
            setattr(loop, name, getattr(rl, name))
    if cls.time is base.time:
        loop.time = time.monotonic
    return rl


_compiled_classes = {}


def _transport_class(mod):
    """The transport class for goaio backend module ``mod``."""
    cls = _compiled_classes.get(mod)
    if cls is None:
        if not hasattr(mod, "aio_transport_class"):
            cls = _PyTransport
        else:
            mod.aio_init(logger, trsock.TransportSocket, futures._set_result_unless_cancelled,
                         protocols.BufferedProtocol, constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES,
                         MAX_INFLIGHT_SENDS, BATCH)
            cls = mod.aio_transport_class(_CTransportBase)
            cls.__module__ = __name__
            cls.__qualname__ = cls.__name__ = f"GoaioTransport_{mod.BACKEND_NAME}"
        _compiled_classes[mod] = cls
    return cls


class Loop(_NetMixin, _SockMixin, _SockConnMixin, asyncio.SelectorEventLoop):
    """asyncio's selector event loop with its stream transports on goaio.

    ``service``: a ``goaio.AIOService`` to carry the connections (the loop
    then does not close it); ``backend``: the goaio backend module to make the
    loop's own service with (default: the one ``import goaio`` picked).
    """

    #: True (the default): every ``ssl=`` (create_connection, create_server,
    #: create_unix_*, connect_accepted_socket, the streams API) and
    #: ``start_tls`` run on goaio's own TLS (``_SSLTransport``), on every
    #: backend; False: asyncio's SSLProtocol over a goaio transport
    #: (docs/aio.md, "TLS"). Read per connection.
    goaio_tls = True

    def __init__(self, selector=None, *, service=None, backend=None, goaio_tls=None):
        super().__init__(selector)
        if goaio_tls is not None:
            self.goaio_tls = bool(goaio_tls)
        self._transports = _TransportMap()
        if service is not None:
            mod = sys.modules[type(service).__module__]
        else:
            mod = backend if backend is not None else _goaio
            if mod is _goaio:
                # the backend module itself (its compiled transport, if any)
                mod = sys.modules.get(_goaio.AIOService.__module__, _goaio)
        self._goaio_mod = mod
        self._owns_svc = service is None
        self._svc = mod.AIOService(1) if service is None else service
        self._pool = mod.BufferPool(RECV_BUFFER_SIZE)
        self._goaio_tcls = _transport_class(mod)
        self._goaio_ssl_cls = _ssl_transport_class(mod)
        sel = self._selector
        col_cls = mod.AioCollector if hasattr(mod, "AioCollector") else _PyCollector
        self._goaio = col = col_cls(self._svc, self, self._ready, sel.select)
        col.set_handle(asyncio.Handle(col.dispatch_queued, (), self))
        self._goaio_wakeups = 0
        # the service's poller: readable while goaio has IO to do, which the
        # loop thread then does itself (collect with timeout=0)
        self._goaio_poll_fd = self._svc._poll_fd()
        if self._goaio_poll_fd >= 0:
            self._add_reader(self._goaio_poll_fd, col.io_ready)
        # results a worker thread queued (it polls when the loop did not for
        # a while, or where the poller has no descriptor)
        if hasattr(os, "eventfd"):
            self._goaio_wake_r = self._goaio_wake_w = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:
            self._goaio_wake_r, self._goaio_wake_w = os.pipe()
            os.set_blocking(self._goaio_wake_r, False)
            os.set_blocking(self._goaio_wake_w, False)
        self._add_reader(self._goaio_wake_r, self._goaio_on_notify)
        self._svc._set_notify_fd(self._goaio_wake_w)
        if self._goaio_poll_fd >= 0:
            # the loop thread does the IO: workers stay out of the poll
            self._svc._set_external_collector(True)
        elif hasattr(self._svc, "_set_worker_grace"):
            # nothing to watch (the pure backend's poll/select): a worker
            # does the IO without waiting for the loop to stay away
            self._svc._set_worker_grace(0)
        sel.select = col.select
        # compiled call_soon / create_task / _run_once ... (compiled backends)
        self._goaio_rl = _install_runloop(self, mod)

    @property
    def service(self):
        """The ``goaio.AIOService`` that carries this loop's connections."""
        return self._svc

    @property
    def _goaio_stats(self):
        """How the results reached the loop (docs/aio.md, "Delivery")."""
        col = self._goaio
        return {"collects": col.collects, "results": col.results,
                "worker_wakeups": self._goaio_wakeups}

    def _goaio_on_notify(self):
        self._goaio_wakeups += 1
        try:
            os.read(self._goaio_wake_r, 4096)
        except OSError:
            pass
        col = self._goaio
        if col.take():
            col.dispatch()

    # -- accepting --

    def _accept_connection(self, protocol_factory, sock, sslcontext=None, server=None,
                           backlog=100, ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
                           ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT):
        # asyncio's readiness accept, but a plain connection's transport is
        # made here: no task, future and extra dict per connection (the
        # transport asks goaio for the peer's address). TLS: asyncio's.
        if sslcontext:
            return super()._accept_connection(protocol_factory, sock, sslcontext, server,
                                              backlog, ssl_handshake_timeout,
                                              ssl_shutdown_timeout)
        for _ in range(backlog):
            try:
                conn, addr = sock.accept()
                if self._debug:
                    logger.debug("%r got a new connection from %r: %r", server, addr, conn)
                conn.setblocking(False)
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return None
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # as asyncio: stop listening for a while
                    self.call_exception_handler({
                        "message": "socket.accept() out of system resource",
                        "exception": exc,
                        "socket": trsock.TransportSocket(sock),
                    })
                    self._remove_reader(sock.fileno())
                    self.call_later(constants.ACCEPT_RETRY_DELAY, self._start_serving,
                                    protocol_factory, sock, sslcontext, server, backlog,
                                    ssl_handshake_timeout, ssl_shutdown_timeout)
                    return None
                raise   # the loop logs and ignores it
            addr = None
            protocol = transport = None
            try:
                protocol = protocol_factory()
                transport = self._make_socket_transport(conn, protocol, server=server)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                if transport is None:
                    conn.close()
                if self._debug:
                    context = {"message": "Error on transport creation for incoming connection",
                               "exception": exc}
                    if protocol is not None:
                        context["protocol"] = protocol
                    self.call_exception_handler(context)

    # -- the transports --

    def _make_socket_transport(self, sock, protocol, waiter=None, *, extra=None, server=None):
        if hasattr(self, "_ensure_fd_no_transport"):
            self._ensure_fd_no_transport(sock)
        return self._goaio_tcls(self, sock, protocol, waiter, extra, server)

    def _make_ssl_transport(self, rawsock, protocol, sslcontext, waiter=None, *,
                            server_side=False, server_hostname=None, extra=None, server=None,
                            ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
                            ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT):
        if hasattr(self, "_ensure_fd_no_transport"):
            self._ensure_fd_no_transport(rawsock)
        if self.goaio_tls:
            # goaio's own TLS (docs/aio.md, "TLS")
            return self._goaio_ssl_cls(self, rawsock, protocol, sslcontext, waiter, server_side,
                                 server_hostname, extra, server, ssl_handshake_timeout,
                                 ssl_shutdown_timeout)
        # asyncio's own TLS protocol over a goaio transport
        ssl_protocol = sslproto.SSLProtocol(
            self, protocol, sslcontext, waiter, server_side, server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout)
        self._goaio_tcls(self, rawsock, ssl_protocol, extra=extra, server=server)
        return ssl_protocol._app_transport

    async def start_tls(self, transport, protocol, sslcontext, *, server_side=False,
                        server_hostname=None, ssl_handshake_timeout=None,
                        ssl_shutdown_timeout=None):
        """asyncio's start_tls; on a goaio transport, goaio's own TLS: the
        connection is upgraded in place (``conn.start_tls``) and the new
        transport returned once the handshake is done (docs/aio.md, "TLS")."""
        args = (transport, protocol, sslcontext)
        kw = dict(server_side=server_side, server_hostname=server_hostname,
                  ssl_handshake_timeout=ssl_handshake_timeout,
                  ssl_shutdown_timeout=ssl_shutdown_timeout)
        if not self.goaio_tls or not isinstance(sslcontext, ssl.SSLContext) \
                or not isinstance(transport, GoaioTransport) \
                or isinstance(transport, _TLS_CLASSES):
            return await super().start_tls(*args, **kw)
        ssl_handshake_timeout, ssl_shutdown_timeout = _tls_timeouts(ssl_handshake_timeout,
                                                                    ssl_shutdown_timeout)
        extra = dict(transport._extra)
        got = _detach_plain(transport)
        if got is None:
            # bytes already read, or writes queued: asyncio's SSLProtocol
            # over the plain transport takes them as they are
            return await super().start_tls(*args, **kw)
        conn, sock, server = got
        waiter = self.create_future()
        tr = self._goaio_ssl_cls(self, sock, protocol, sslcontext, waiter, server_side,
                           server_hostname, extra, server, ssl_handshake_timeout,
                           ssl_shutdown_timeout, conn=conn, call_connection_made=False)
        if server is not None:
            _detach(server, transport)      # (the new one is attached)
        try:
            await waiter
        except BaseException:
            tr.close()
            raise
        return tr

    # -- closing --

    def close(self):
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        sel = self._selector
        if sel is not None:
            for fd in (self._goaio_poll_fd, self._goaio_wake_r):
                if fd >= 0:
                    self._remove_reader(fd)
        super().close()
        self._goaio.clear()
        # the compiled transports the map kept (their connections are closed
        # with the service below; a transport nobody holds is collected)
        self._transports._by_fd.clear()
        svc = self._svc
        if svc is not None:
            svc._set_notify_fd(-1)
            if not svc.closed:
                svc._set_external_collector(False)
            if self._owns_svc:
                svc.close()
        for fd in {self._goaio_wake_r, self._goaio_wake_w}:
            try:
                os.close(fd)
            except OSError:
                pass


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """The default policy, making :class:`Loop` loops."""

    _loop_factory = Loop


def new_event_loop():
    """A new :class:`Loop`."""
    return Loop()


def run(main, *, debug=None):
    """Run the coroutine ``main`` on a new :class:`Loop` (as ``asyncio.run``)."""
    with asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
        return runner.run(main)
