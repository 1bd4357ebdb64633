"""Pieces shared by every backend: options, the pure-Python result type and
buffer pool, argument checks and the registry of bound sockets.

The compiled backends provide their own ``AIOResult`` and ``BufferPool``
(C types with the same attributes and behaviour, so that a worker can take a
pool buffer without the GIL); everything else here is used as is.
"""

import _socket
import math
import socket
import sys
import threading

from . import _messages
from ._errors import UnsupportedConn

__all__ = ["AIOConnOption", "AIOResult", "BufferPool", "DEFAULT_RECV_BUFF_SIZE"]

#: Size of the ``bytearray`` made for ``recv(ctx, None)`` when the connection
#: has no ``share_buff`` (or its ``acquire()`` returned ``None``).
DEFAULT_RECV_BUFF_SIZE = 4096

DEFAULT_QUEUE_SIZE = 32


def _check_int(name, value, minimum, maximum=None):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise OverflowError(_messages.TOO_LARGE.format(name, maximum, value))
    return value


class AIOConnOption:
    """Options of a bound connection (``AIOService.bind``).

    ``recvq_size`` / ``sendq_size``: how many receives / sends may be pending
    at once (>= 1); ``share_buff``: an object with ``acquire()`` and
    ``release(buff)`` (usually a :class:`BufferPool`) used by
    ``recv(ctx, None)``; ``user_data``: anything, kept as ``conn.user_data``.
    """

    __slots__ = ("recvq_size", "sendq_size", "share_buff", "user_data")

    def __init__(self, recvq_size=DEFAULT_QUEUE_SIZE, sendq_size=DEFAULT_QUEUE_SIZE,
                 share_buff=None, user_data=None):
        self.recvq_size = _check_int("recvq_size", recvq_size, 1)
        self.sendq_size = _check_int("sendq_size", sendq_size, 1)
        if share_buff is not None and not (
            callable(getattr(share_buff, "acquire", None))
            and callable(getattr(share_buff, "release", None))
        ):
            raise TypeError("share_buff must have acquire() and release(buff) methods")
        self.share_buff = share_buff
        self.user_data = user_data

    def __repr__(self):
        return (f"AIOConnOption(recvq_size={self.recvq_size}, sendq_size={self.sendq_size}, "
                f"share_buff={self.share_buff!r}, user_data={self.user_data!r})")

    def __eq__(self, other):
        if not isinstance(other, AIOConnOption):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    __hash__ = None


def make_option(option, kwargs):
    """``bind(sock, option)`` or ``bind(sock, **kwargs)``, never both."""
    if option is None:
        return AIOConnOption(**kwargs)
    if kwargs:
        raise TypeError("give either an AIOConnOption or keyword options, not both")
    if not isinstance(option, AIOConnOption):
        raise TypeError(f"option must be an AIOConnOption, not {type(option).__name__}")
    return option


class AIOResult:
    """The completion of one posted operation."""

    __slots__ = ("conn", "context", "buff", "bytes_transferred", "err")

    def __init__(self, conn, context, buff, bytes_transferred, err):
        self.conn = conn
        self.context = context
        self.buff = buff
        self.bytes_transferred = bytes_transferred
        self.err = err

    def __repr__(self):
        return (f"<AIOResult context={self.context!r} bytes_transferred={self.bytes_transferred}"
                f" err={self.err!r}>")


class BufferPool:
    """A thread-safe pool of ``bytearray(buffer_size)`` that grows on demand.

    ``acquire()`` hands out a free buffer (making a new one when none is free);
    ``release(buff)`` takes it back. Releasing a buffer the pool did not hand
    out, or one already released, is ``ValueError``.
    """

    def __init__(self, buffer_size=65536):
        self.buffer_size = _check_int("buffer_size", buffer_size, 1, sys.maxsize)
        self._lock = threading.Lock()
        self._free = []    # (buffer, the memoryview that pins it)
        self._out = set()  # ids of the buffers handed out and not yet released

    def acquire(self):
        """Take a buffer from the pool."""
        with self._lock:
            if self._free:
                buff, pin = self._free.pop()
                pin.release()   # the user may resize it again
            else:
                buff = bytearray(self.buffer_size)
            self._out.add(id(buff))
        return buff

    def release(self, buff):
        """Give back a buffer that ``acquire()`` handed out."""
        with self._lock:
            if id(buff) not in self._out or type(buff) is not bytearray:
                raise ValueError(_messages.POOL_FOREIGN)
            if len(buff) != self.buffer_size:
                raise ValueError(_messages.POOL_RESIZED)
            self._out.discard(id(buff))
            # a free buffer is pinned by an export (as compiled does): resizing
            # it after release raises BufferError, so the pool never hands out
            # a buffer shorter or longer than buffer_size
            self._free.append((buff, memoryview(buff)))

    def stats(self):
        """``{"buffers", "free", "out", "buffer_size"}``: the pool's buffers
        (free + out), those waiting in it, those handed out, their size."""
        with self._lock:
            free = len(self._free)
            out = len(self._out)
        return {"buffers": free + out, "free": free, "out": out, "buffer_size": self.buffer_size}

    @property
    def outstanding(self):
        """How many buffers are handed out and not yet released."""
        return len(self._out)

    @property
    def free(self):
        """How many buffers wait in the pool."""
        return len(self._free)

    def __repr__(self):
        return f"<BufferPool buffer_size={self.buffer_size} out={self.outstanding} free={self.free}>"


# --- argument checks shared by the backends ---------------------------------

def check_timeout(value, name="timeout"):
    """``None`` (wait forever) or a number >= 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number or None, not {type(value).__name__}")
    if value != value or value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    try:
        return float(value)
    except OverflowError:  # an int beyond any float: beyond any deadline too
        return math.inf


def check_conn_timeout(value):
    """``set_recv_timeout``/``set_send_timeout``: returns 0.0 for 'disabled'."""
    v = check_timeout(value, "timeout")
    return 0.0 if v is None else v


def check_workers(workers):
    _check_int("workers", workers, 0)
    return max(workers, 1)


def check_max_results(max_results):
    return _check_int("max_results", max_results, 1, sys.maxsize)


def check_send_nbytes(nbytes, buff):
    """send(context, buff, nbytes=...): -1 for None (the whole buffer), else
    nbytes (an int >= 0; the upper bound, the buffer's length in bytes, is
    checked by the backend once the buffer is pinned)."""
    if nbytes is None:
        return -1
    if type(buff) is list:
        raise TypeError(_messages.SEND_NBYTES_LIST)
    return _check_int("nbytes", nbytes, 0, sys.maxsize)


_sock_type = _socket.socket.type.__get__
_sock_family = _socket.socket.family.__get__
_BIND_FAMILIES = frozenset((socket.AF_INET, socket.AF_INET6, getattr(socket, "AF_UNIX", -1)))


def check_socket(sock):
    """What ``bind`` accepts: a connected, non-listening SOCK_STREAM socket.

    Raises UnsupportedConn (a TypeError) for anything else, ValueError for a
    closed socket. Returns the fd.
    """
    if not isinstance(sock, socket.socket):
        raise UnsupportedConn(f"bind needs a socket.socket, not {type(sock).__name__}")
    fd = sock.fileno()
    if fd < 0:
        raise ValueError("the socket is closed")
    # the C getters: ints, without the enum conversion of socket.socket's properties
    if _sock_type(sock) != socket.SOCK_STREAM:
        raise UnsupportedConn("bind needs a SOCK_STREAM socket (TCP or Unix stream)")
    if _sock_family(sock) not in _BIND_FAMILIES:
        raise UnsupportedConn(f"unsupported address family {sock.family!r}")
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        listening = 0
    if listening:
        raise UnsupportedConn("bind needs a connected socket, not a listening one")
    return fd


class _BoundRegistry:
    """The fds of sockets bound to any service of any backend in this process.

    A bound socket's fd stays open until its connection is closed, so the fd
    number identifies it for as long as it is registered here. One byte per fd
    number (not a set of ints): ten thousand connections cost 10 KB.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._map = bytearray()
        self._stale_hooks = []

    def add_stale_hook(self, hook):
        """A backend's ``hook(fd) -> bool``: close its connection registered
        under fd if that connection's socket no longer owns the number (the
        user closed the socket behind goaio's back and a new socket got it);
        True when it did (fd is then free here)."""
        self._stale_hooks.append(hook)

    def add(self, fd):
        with self._lock:
            m = self._map
            if fd >= len(m):
                m.extend(bytes(max(fd + 1 - len(m), len(m))))
            if not m[fd]:
                m[fd] = 1
                return
        # Taken: by a live connection, or by one whose socket was closed behind
        # its back (then this socket got the number). The hooks close such a
        # stale connection (outside the lock: closing discards its fd).
        for hook in list(self._stale_hooks):
            if hook(fd):
                break
        with self._lock:
            if m[fd]:
                raise ValueError("the socket is already bound to a service")
            m[fd] = 1

    def discard(self, fd):
        # No lock: one item store is atomic under the GIL, so this is safe from
        # any thread and from __del__ (even while this thread is inside add()).
        m = self._map
        if 0 <= fd < len(m):
            m[fd] = 0


bound_fds = _BoundRegistry()
