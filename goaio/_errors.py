"""The exceptions of goaio, shared by every backend.

Every backend raises (or delivers in ``AIOResult.err``) exactly these classes;
OS errors are delivered as the ``OSError`` subclass that Python itself picks
for the errno (``ConnectionResetError``, ``BrokenPipeError``, ...), built by
:func:`oserror` so that all backends agree.
"""

import os

__all__ = [
    "Error",
    "ConnClosed",
    "ServiceClosed",
    "Busy",
    "UnsupportedConn",
    "RecvTimeout",
    "SendTimeout",
    "ConnectTimeout",
    "HandshakeTimeout",
    "Cancelled",
    "EmptyBuffer",
    "oserror",
]


class Error(Exception):
    """Base class of every goaio error."""


class ConnClosed(Error):
    """The connection is closed (raised on posting; the default close reason)."""


class ServiceClosed(Error):
    """The service is closed (raised by bind, posting and collecting)."""


class Busy(Error):
    """The connection's receive or send queue is full."""


class UnsupportedConn(Error, TypeError):
    """The object given to ``bind`` is not a connected stream socket."""


class RecvTimeout(Error, TimeoutError):
    """A receive did not complete within the connection's receive timeout."""


class SendTimeout(Error, TimeoutError):
    """A send did not complete within the connection's send timeout."""


class ConnectTimeout(Error, TimeoutError):
    """A posted connect did not complete within its timeout."""


class HandshakeTimeout(Error, TimeoutError):
    """A TLS handshake did not complete within its ``ssl_handshake_timeout``."""


class Cancelled(Error):
    """The operation was cancelled by ``conn.cancel(context)`` (the default reason)."""


class EmptyBuffer(Error, ValueError):
    """A zero-length buffer (or empty list) was given."""


def oserror(errnum):
    """The one errno -> exception mapping of goaio.

    ``OSError(errno, strerror)`` returns the subclass Python maps that errno
    to, exactly as the socket module raises it.
    """
    return OSError(errnum, os.strerror(errnum))
