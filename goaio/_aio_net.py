"""goaio.aio's servers and client connects on goaio's posted accept and connect.

:class:`NetMixin` is a base of ``goaio.aio.Loop``. It hooks the two methods
asyncio's ``Server`` calls for each of its listening sockets
(``_start_serving`` / ``_stop_serving``) and the connect of
``create_connection`` / ``create_unix_connection``:

- serving: a goaio ``Listener`` over a ``dup()`` of the listening socket
  (``loop.service.listen(sock)``), with accepts kept posted on it; each
  accepted ``AIOConn`` becomes a transport directly (no ``svc.bind`` of a
  socket, no task per connection). asyncio's ``Server`` keeps owning the
  original socket (``sockets``, ``close``, ``wait_closed``...);
  ``_stop_serving`` closes the Listener (its pending accepts complete with
  ``ConnClosed``; a connection accepted but not yet handed over is closed),
  then asyncio closes the original socket.
- connecting: asyncio's resolution (``_ensure_resolved``, ``interleave``)
  and its order, errors and messages (``_connect_sock``), but each attempt
  is ``loop.service.connect`` (posted; its completion carries the bound
  ``AIOConn``, which becomes the transport).

TLS (``ssl=``), ``sock=``, and happy eyeballs (``happy_eyeballs_delay``) keep
asyncio's paths. See docs/aio.md ("Servers and connects").
"""

import errno
import functools
import os
import socket
import ssl as _ssl
import sys

from asyncio import base_events, constants, selector_events, trsock
from asyncio.log import logger

from ._common import AIOConnOption
from ._errors import ConnClosed, Error as _GoaioError, ServiceClosed

__all__ = ["NetMixin", "ACCEPTS_AHEAD"]

#: Accepts kept posted on a served listening socket (at most the server's
#: ``backlog``): how many connections one poll round may accept.
ACCEPTS_AHEAD = 32

_EXHAUSTED = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
_STRERROR_LOWER = sys.version_info < (3, 13)    # the bind error's text, as asyncio words it
#: create_connection's keywords beyond 3.11's (all_errors: 3.12)
_EXTRA_KW = frozenset(("all_errors",)) if sys.version_info >= (3, 12) else frozenset()


def _conn_option(loop):
    # the options a transport's connection is bound with (as goaio/aio.py
    # binds a socket), made once per loop
    opt = loop.__dict__.get("_goaio_conn_opt")
    if opt is None:
        aio = sys.modules["goaio.aio"]
        opt = loop._goaio_conn_opt = AIOConnOption(
            recvq_size=2, sendq_size=aio.MAX_INFLIGHT_SENDS + 1, share_buff=loop._pool)
    return opt


def _check_fd(loop, fd):
    # asyncio's _ensure_fd_no_transport, without a KeyError per connection
    tr = loop._transports.get(fd)
    if tr is not None and not tr.is_closing():
        raise RuntimeError(f"File descriptor {fd!r} is used by transport {tr!r}")


def _transport(loop, conn, protocol, waiter=None, server=None):
    """The loop's transport over ``conn`` (an AIOConn goaio bound)."""
    _check_fd(loop, conn.fd)
    return loop._goaio_tcls(loop, None, protocol, waiter, None, server, conn)


def _conn_sock(loop, conn):
    # the socket.socket of a bound connection (compiled: a backend hook)
    get = getattr(loop._goaio_mod, "aio_conn_socket", None)
    return get(conn) if get is not None else getattr(conn, "_sock", None)


def _tls_maker(loop, sslcontext):
    """goaio.aio's maker of a TLS transport over an accepted AIOConn, when
    the loop's ssl= is goaio's own TLS; else None (asyncio's accept)."""
    if not getattr(loop, "goaio_tls", False) or not isinstance(sslcontext, _ssl.SSLContext):
        return None
    return getattr(sys.modules["goaio.aio"], "_tls_transport_from_conn", None)


def _tls_handshaken(loop, transport, protocol, fut):
    # asyncio's _accept_connection2 after its "await waiter": a failed
    # handshake closes the transport, the error reported in debug mode
    if fut.cancelled():
        transport.close()
        return
    exc = fut.exception()
    if exc is None:
        return
    transport.close()
    if loop._debug:
        loop.call_exception_handler({
            "message": "Error on transport creation for incoming connection",
            "exception": exc, "protocol": protocol, "transport": transport})


def _sock_connect_replaced(loop):
    """True when ``loop.sock_connect`` is not asyncio's (set on the loop, or
    a subclass's): asyncio's create_connection connects through it, and a
    loop whose application replaced it keeps that path."""
    return "sock_connect" in loop.__dict__ or \
        type(loop).sock_connect is not selector_events.BaseSelectorEventLoop.sock_connect


class _Serving:
    """One listening socket of an asyncio Server, served by a goaio Listener."""

    __slots__ = ("loop", "sock", "ln", "factory", "server", "on_accept", "closed",
                 "tls", "sslcontext", "hs_timeout", "sd_timeout")
    # (the pure backend's collector reads these two of a context's __self__)
    _recv_iter = None
    _read_cb = None

    def __init__(self, loop, sock, ln, factory, server, ahead, tls=None, sslcontext=None,
                 hs_timeout=None, sd_timeout=None):
        self.tls = tls                  # None, or goaio.aio's TLS transport maker
        self.sslcontext = sslcontext
        self.hs_timeout = hs_timeout
        self.sd_timeout = sd_timeout
        self.loop = loop
        self.sock = sock
        self.ln = ln
        self.factory = factory
        self.server = server
        self.closed = False
        self.on_accept = on_accept = self._on_accept
        for _ in range(ahead):
            ln.accept(on_accept)
        loop._goaio.dirty = True

    def close(self):
        if self.closed:
            return
        self.closed = True
        try:
            self.ln.close()     # pending accepts complete with ConnClosed
        except (OSError, _GoaioError):
            pass
        loop = self.loop
        if not loop.is_closed():
            loop._goaio.dirty = True
        self.factory = self.server = None

    def _repost(self):
        try:
            self.ln.accept(self.on_accept)
        except (ConnClosed, ServiceClosed):
            return
        self.loop._goaio.dirty = True

    def _on_accept(self, res):
        conn = res.conn
        if self.closed:
            # accepted before the server closed, handed over after: not served
            if conn is not None:
                conn.close()
            return
        loop = self.loop
        err = res.err
        if err is not None:
            if isinstance(err, (ConnClosed, ServiceClosed)):
                return
            if isinstance(err, OSError) and err.errno in _EXHAUSTED:
                # as asyncio; goaio's listener backs off by itself (0.1 s
                # doubling to 1 s), so the accept posted again waits
                loop.call_exception_handler({
                    "message": "socket.accept() out of system resource",
                    "exception": err,
                    "socket": trsock.TransportSocket(self.sock),
                })
            else:
                loop.call_exception_handler({
                    "message": "Error on accept of a served socket",
                    "exception": err,
                    "socket": trsock.TransportSocket(self.sock),
                })
            self._repost()
            return
        self._repost()
        if loop._debug:
            logger.debug("%r got a new connection from %r: %r", self.server,
                         conn.peername, conn)
        protocol = transport = None
        try:
            protocol = self.factory()
            if self.tls is None:
                transport = _transport(loop, conn, protocol, None, self.server)
            else:
                # connection_made once the handshake is done (as asyncio)
                _check_fd(loop, conn.fd)
                waiter = loop.create_future()
                transport = self.tls(loop, conn, protocol, self.sslcontext, True, None,
                                     self.hs_timeout, waiter, self.server,
                                     sock=_conn_sock(loop, conn), shutdown_timeout=self.sd_timeout)
                waiter.add_done_callback(
                    functools.partial(_tls_handshaken, loop, transport, protocol))
        except (SystemExit, KeyboardInterrupt):
            if transport is None:
                conn.close()
            raise
        except BaseException as exc:
            if transport is None:
                conn.close()
            if loop._debug:
                context = {"message": "Error on transport creation for incoming connection",
                           "exception": exc}
                if protocol is not None:
                    context["protocol"] = protocol
                loop.call_exception_handler(context)


class _Connecting:
    """The context of one posted connect: hands its result to a future."""

    __slots__ = ("fut",)
    _recv_iter = None
    _read_cb = None

    def __init__(self, fut):
        self.fut = fut

    def on_result(self, res):
        fut = self.fut
        if fut.done():
            # the connecting task was cancelled: the connection is not wanted
            if res.conn is not None:
                res.conn.close()
        else:
            fut.set_result(res)

    def abandon(self):
        fut = self.fut
        if fut.done() and not fut.cancelled():
            conn = fut.result().conn
            if conn is not None:
                conn.close()


class NetMixin:
    """The accept and connect paths of ``goaio.aio.Loop`` (a base of it)."""

    #: False: servers use asyncio's readiness accept (the loop's own accept
    #: callback, goaio/aio.py) and connects asyncio's sock_connect. Read when
    #: a server starts serving / a connect starts.
    goaio_accept = True
    goaio_connect = True

    _goaio_serving = None

    # -- serving --

    def _start_serving(self, protocol_factory, sock, sslcontext=None, server=None, backlog=100,
                       ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
                       ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT):
        ln = tls = None
        if self.goaio_accept:
            if sslcontext:
                tls = _tls_maker(self, sslcontext)
            if tls is not None or not sslcontext:
                ln = self._goaio_listen(sock)
        if ln is None:
            return super()._start_serving(protocol_factory, sock, sslcontext, server, backlog,
                                          ssl_handshake_timeout, ssl_shutdown_timeout)
        serving = self._goaio_serving
        if serving is None:
            serving = self._goaio_serving = {}
        old = serving.pop(sock, None)
        if old is not None:
            old.close()
        ahead = min(max(int(backlog), 1), ACCEPTS_AHEAD)
        serving[sock] = _Serving(self, sock, ln, protocol_factory, server, ahead, tls,
                                 sslcontext if tls is not None else None,
                                 ssl_handshake_timeout, ssl_shutdown_timeout)

    def _goaio_listen(self, sock):
        """A goaio Listener over a dup() of ``sock``, or None (then asyncio's
        accept serves it)."""
        try:
            lsock = sock.dup()
        except OSError:
            return None
        try:
            return self._svc.listen(lsock, option=_conn_option(self))
        except (OSError, ValueError, TypeError, _GoaioError):
            lsock.close()
            return None

    def _stop_serving(self, sock):
        serving = self._goaio_serving
        if serving:
            s = serving.pop(sock, None)
            if s is not None:
                s.close()
        super()._stop_serving(sock)

    # -- connecting --

    async def create_connection(self, protocol_factory, host=None, port=None, *, ssl=None,
                                family=0, proto=0, flags=0, sock=None, local_addr=None,
                                server_hostname=None, ssl_handshake_timeout=None,
                                ssl_shutdown_timeout=None, happy_eyeballs_delay=None,
                                interleave=None, **kwargs):
        if (ssl or sock is not None or (host is None and port is None)
                or happy_eyeballs_delay is not None or server_hostname is not None
                or ssl_handshake_timeout is not None or ssl_shutdown_timeout is not None
                or not self.goaio_connect or (kwargs and not _EXTRA_KW.issuperset(kwargs))
                or _sock_connect_replaced(self)):
            # asyncio's (its checks, TLS, a given socket, happy eyeballs, a
            # sock_connect of the application's, which it then goes through)
            return await super().create_connection(
                protocol_factory, host, port, ssl=ssl, family=family, proto=proto,
                flags=flags, sock=sock, local_addr=local_addr, server_hostname=server_hostname,
                ssl_handshake_timeout=ssl_handshake_timeout,
                ssl_shutdown_timeout=ssl_shutdown_timeout,
                happy_eyeballs_delay=happy_eyeballs_delay, interleave=interleave, **kwargs)
        all_errors = kwargs.get("all_errors", False)
        infos = await self._ensure_resolved((host, port), family=family, type=socket.SOCK_STREAM,
                                            proto=proto, flags=flags, loop=self)
        if not infos:
            raise OSError("getaddrinfo() returned empty list")
        if local_addr is not None:
            laddr_infos = await self._ensure_resolved(local_addr, family=family,
                                                      type=socket.SOCK_STREAM, proto=proto,
                                                      flags=flags, loop=self)
            if not laddr_infos:
                raise OSError("getaddrinfo() returned empty list")
        else:
            laddr_infos = None
        if interleave:
            infos = base_events._interleave_addrinfos(infos, interleave)
        exceptions = []
        conn = None
        for addrinfo in infos:
            try:
                conn = await self._goaio_connect_one(exceptions, addrinfo, laddr_infos)
                break
            except OSError:
                continue
        if conn is None:
            exceptions = [exc for sub in exceptions for exc in sub]
            try:
                if all_errors:
                    raise ExceptionGroup("create_connection failed", exceptions)  # noqa: F821
                if len(exceptions) == 1:
                    raise exceptions[0]
                model = str(exceptions[0])
                if all(str(exc) == model for exc in exceptions):
                    raise exceptions[0]
                raise OSError("Multiple exceptions: {}".format(
                    ", ".join(str(exc) for exc in exceptions)))
            finally:
                exceptions = None
        transport, protocol = await self._goaio_conn_transport(conn, protocol_factory)
        if self._debug:
            logger.debug("%r connected to %s:%r: (%r, %r)", transport.get_extra_info("socket"),
                         host, port, transport, protocol)
        return transport, protocol

    async def create_unix_connection(self, protocol_factory, path=None, *, ssl=None, sock=None,
                                     server_hostname=None, ssl_handshake_timeout=None,
                                     ssl_shutdown_timeout=None):
        if (ssl or sock is not None or path is None or server_hostname is not None
                or ssl_handshake_timeout is not None or ssl_shutdown_timeout is not None
                or not self.goaio_connect or _sock_connect_replaced(self)):
            return await super().create_unix_connection(
                protocol_factory, path, ssl=ssl, sock=sock, server_hostname=server_hostname,
                ssl_handshake_timeout=ssl_handshake_timeout,
                ssl_shutdown_timeout=ssl_shutdown_timeout)
        path = os.fspath(path)
        conn = await self._goaio_connect(path, None)
        return await self._goaio_conn_transport(conn, protocol_factory)

    async def _goaio_connect_one(self, exceptions, addr_info, laddr_infos):
        # asyncio's _connect_sock (the errors it records, their words), with
        # the attempt posted to goaio
        my_exceptions = []
        exceptions.append(my_exceptions)
        fam, type_, proto, _, address = addr_info
        laddr = None
        try:
            if laddr_infos is not None:
                for lfamily, _, _, _, la in laddr_infos:
                    if lfamily != fam:
                        continue        # a local address of another family
                    try:
                        # goaio binds the connecting socket itself: try the
                        # address here first, for asyncio's error
                        with socket.socket(fam, type_, proto) as probe:
                            probe.bind(la)
                        laddr = la
                        break
                    except OSError as exc:
                        text = exc.strerror.lower() if _STRERROR_LOWER else str(exc).lower()
                        my_exceptions.append(OSError(
                            exc.errno, f"error while attempting to bind on address {la!r}: {text}"))
                else:
                    if my_exceptions:
                        raise my_exceptions.pop()
                    raise OSError(f"no matching local address with family={fam!r} found")
            return await self._goaio_connect(address, laddr)
        except OSError as exc:
            my_exceptions.append(exc)
            raise
        finally:
            exceptions = my_exceptions = None

    async def _goaio_connect(self, address, laddr):
        """Post a goaio connect to ``address``; the bound AIOConn, or raise as
        asyncio's sock_connect does."""
        if not isinstance(address, (str, bytes)) and not 0 <= address[1] <= 65535:
            raise OverflowError("connect(): port must be 0-65535.")    # (sock.connect's words)
        fut = self.create_future()
        waiter = _Connecting(fut)
        self._svc.connect(waiter.on_result, address, local_address=laddr,
                          option=_conn_option(self))
        self._goaio.dirty = True
        try:
            res = await fut
        except BaseException:
            waiter.abandon()
            raise
        err = res.err
        if err is None:
            return res.conn
        if isinstance(err, OSError) and err.errno and not isinstance(address, (str, bytes)):
            raise OSError(err.errno, f"Connect call failed {address}")
        raise err

    async def _goaio_conn_transport(self, conn, protocol_factory):
        # asyncio's _create_connection_transport over a connected AIOConn
        try:
            protocol = protocol_factory()
            waiter = self.create_future()
            transport = _transport(self, conn, protocol, waiter)
        except BaseException:
            conn.close()
            raise
        try:
            await waiter
        except BaseException:
            transport.close()
            raise
        return transport, protocol
