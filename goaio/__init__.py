"""goaio: a proactor (completion-based) TCP networking library.

Post ``recv``/``send`` operations on bound sockets with a context, collect
their completions from a queue, from any thread. See README.md.

The backend is picked once, at import, from the ``GOAIO_BACKEND`` environment
variable: ``auto`` (default), ``compiled``, ``epoll``, ``kqueue`` or ``pure``.
``goaio.BACKEND`` names the one loaded; ``goaio.BACKEND_FALLBACK_REASON`` says
why ``auto`` fell back to ``pure`` (None otherwise).
"""

import os as _os
import threading as _threading

from ._errors import (
    Busy,
    Cancelled,
    ConnClosed,
    ConnectTimeout,
    EmptyBuffer,
    Error,
    HandshakeTimeout,
    RecvTimeout,
    SendTimeout,
    ServiceClosed,
    UnsupportedConn,
)
from ._common import DEFAULT_RECV_BUFF_SIZE, AIOConnOption
from . import _select
from ._tls import TLSInfo

__version__ = "0.1.0"

_backend, BACKEND, BACKEND_FALLBACK_REASON = _select.select(_os.environ.get("GOAIO_BACKEND"))

AIOService = _backend.AIOService
AIOConn = _backend.AIOConn
AIOResult = _backend.AIOResult
BufferPool = _backend.BufferPool
Listener = _backend.Listener

_default_lock = _threading.Lock()
_default = None


def default_service():
    """The default service (one worker), made on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = AIOService(1)
        return _default


def bind(sock, option=None, **kwargs):
    """``default_service().bind(...)``."""
    return default_service().bind(sock, option, **kwargs)


def get_complete_status(timeout=None):
    """``default_service().get_complete_status(timeout)``."""
    return default_service().get_complete_status(timeout)


def get_complete_statuses(max_results=64, timeout=None):
    """``default_service().get_complete_statuses(max_results, timeout)``."""
    return default_service().get_complete_statuses(max_results, timeout)


__all__ = [
    "AIOService",
    "AIOConn",
    "AIOResult",
    "AIOConnOption",
    "BufferPool",
    "Listener",
    "TLSInfo",
    "DEFAULT_RECV_BUFF_SIZE",
    "BACKEND",
    "BACKEND_FALLBACK_REASON",
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
    "bind",
    "default_service",
    "get_complete_status",
    "get_complete_statuses",
]
