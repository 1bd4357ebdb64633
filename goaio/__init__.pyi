# Type stubs of goaio's public API (PEP 561; goaio/py.typed marks the package
# typed). Every backend (epoll, kqueue, pure) has this same interface: the
# classes below are what `goaio.AIOService` and the others are at run time,
# whichever backend was loaded.
#
# Contexts and user_data are the user's own objects, handed back untouched:
# they are typed Any so a handler can use them as what it put in. A result's
# `buff` is the buffer (or list of buffers) given when posting, or the one
# the library took for `recv(ctx, None)`: also Any, for the same reason.
# Buffers given to the library are checked: any object with the buffer
# protocol, or a list of them (a list whose element type mypy infers as
# something else than bytearray/memoryview/bytes can be annotated
# `list[collections.abc.Buffer]`).

import socket
import ssl as _ssl
from _typeshed import ReadableBuffer, WriteableBuffer
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, Final, Literal, Protocol, Self, TypeAlias, final, overload, type_check_only

__version__: str

BACKEND: Literal["epoll", "kqueue", "pure"]
BACKEND_FALLBACK_REASON: str | None
DEFAULT_RECV_BUFF_SIZE: Final[int]

_RecvBuffer: TypeAlias = WriteableBuffer | list[WriteableBuffer] | list[bytearray] | list[memoryview]
_SendBuffer: TypeAlias = (
    ReadableBuffer | list[ReadableBuffer] | list[bytes] | list[bytearray] | list[memoryview]
)
_Timeout: TypeAlias = float | None

@type_check_only
class _ShareBuffer(Protocol):
    """What `share_buff` must be: goaio.BufferPool, or any object with these."""

    def acquire(self) -> WriteableBuffer | None: ...
    def release(self, buff: Any, /) -> None: ...

# ---------------------------------------------------------------- errors

class Error(Exception): ...
class ConnClosed(Error): ...
class ServiceClosed(Error): ...
class Busy(Error): ...
class UnsupportedConn(Error, TypeError): ...
class RecvTimeout(Error, TimeoutError): ...
class SendTimeout(Error, TimeoutError): ...
class ConnectTimeout(Error, TimeoutError): ...
class HandshakeTimeout(Error, TimeoutError): ...
class Cancelled(Error): ...
class EmptyBuffer(Error, ValueError): ...

# ---------------------------------------------------------------- options, pool

class AIOConnOption:
    recvq_size: int
    sendq_size: int
    share_buff: _ShareBuffer | None
    user_data: Any
    def __init__(
        self,
        recvq_size: int = 32,
        sendq_size: int = 32,
        share_buff: _ShareBuffer | None = None,
        user_data: Any = None,
    ) -> None: ...

class BufferPool:
    def __init__(self, buffer_size: int = 65536) -> None: ...
    @property
    def buffer_size(self) -> int: ...
    @property
    def outstanding(self) -> int: ...
    @property
    def free(self) -> int: ...
    def acquire(self) -> bytearray: ...
    def release(self, buff: bytearray) -> None: ...
    # issue 10 (introspection): see the block at the end
    def stats(self) -> dict[str, int]: ...

# ---------------------------------------------------------------- results

@final
class AIOResult:
    # made by the library only (no public constructor)
    # None only in the result of a failed accept or connect (issue 10)
    @property
    def conn(self) -> AIOConn | None: ...
    @property
    def context(self) -> Any: ...
    @property
    def buff(self) -> Any: ...
    @property
    def bytes_transferred(self) -> int: ...
    @property
    def err(self) -> BaseException | None: ...

# ---------------------------------------------------------------- connections

@final
class AIOConn:
    # made by svc.bind() (and, issue 10, by accept and connect) only
    user_data: Any
    @property
    def fd(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    def recv(self, context: Any, buff: _RecvBuffer | None = None) -> None: ...
    def recv_full(self, context: Any, buff: _RecvBuffer) -> None: ...
    def send(self, context: Any, buff: _SendBuffer) -> None: ...
    def set_recv_timeout(self, seconds: _Timeout) -> None: ...
    def set_send_timeout(self, seconds: _Timeout) -> None: ...
    def close(self, reason: BaseException | None = None) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...
    # ---- issue 10: half-close, cancellation, addresses ----
    def shutdown(self, context: Any) -> None: ...
    def cancel(self, context: Any, reason: BaseException | None = None) -> int: ...
    @property
    def peername(self) -> _RetAddress | None: ...
    @property
    def sockname(self) -> _RetAddress | None: ...
    # ---- issue 11: TLS ----
    def start_tls(
        self,
        context: Any,
        ssl: _ssl.SSLContext,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        ssl_handshake_timeout: float | None = None,
    ) -> None: ...
    @property
    def tls(self) -> TLSInfo | None: ...

# ---------------------------------------------------------------- the service

@final
class AIOService:
    def __init__(self, workers: int = 1) -> None: ...
    @property
    def closed(self) -> bool: ...
    @overload
    def bind(
        self,
        sock: socket.socket,
        option: AIOConnOption,
        *,
        ssl: _ssl.SSLContext | None = None,
        server_side: bool = False,
        server_hostname: str | None = None,
        ssl_handshake_timeout: float | None = None,
    ) -> AIOConn: ...
    @overload
    def bind(
        self,
        sock: socket.socket,
        option: None = None,
        *,
        ssl: _ssl.SSLContext | None = None,
        server_side: bool = False,
        server_hostname: str | None = None,
        ssl_handshake_timeout: float | None = None,
        recvq_size: int = 32,
        sendq_size: int = 32,
        share_buff: _ShareBuffer | None = None,
        user_data: Any = None,
    ) -> AIOConn: ...
    def get_complete_status(self, timeout: _Timeout = None) -> AIOResult | None: ...
    def get_complete_statuses(self, max_results: int = 64, timeout: _Timeout = None) -> list[AIOResult]: ...
    def __iter__(self) -> Iterator[AIOResult]: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...
    # ---- issue 10: listening, connecting, introspection ----
    @overload
    def listen(
        self,
        address: _Address | socket.socket,
        backlog: int = 1024,
        *,
        reuse_port: bool = False,
        option: AIOConnOption,
        ssl: _ssl.SSLContext | None = None,
        ssl_handshake_timeout: float | None = None,
    ) -> Listener: ...
    @overload
    def listen(
        self,
        address: _Address | socket.socket,
        backlog: int = 1024,
        *,
        reuse_port: bool = False,
        option: None = None,
        ssl: _ssl.SSLContext | None = None,
        ssl_handshake_timeout: float | None = None,
        recvq_size: int = 32,
        sendq_size: int = 32,
        share_buff: _ShareBuffer | None = None,
        user_data: Any = None,
    ) -> Listener: ...
    @overload
    def connect(
        self,
        context: Any,
        address: _Address,
        *,
        timeout: _Timeout = None,
        local_address: _Address | None = None,
        option: AIOConnOption,
        ssl: _ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        ssl_handshake_timeout: float | None = None,
    ) -> None: ...
    @overload
    def connect(
        self,
        context: Any,
        address: _Address,
        *,
        timeout: _Timeout = None,
        local_address: _Address | None = None,
        option: None = None,
        ssl: _ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        ssl_handshake_timeout: float | None = None,
        recvq_size: int = 32,
        sendq_size: int = 32,
        share_buff: _ShareBuffer | None = None,
        user_data: Any = None,
    ) -> None: ...
    def stats(self) -> dict[str, int]: ...

# ---------------------------------------------------------------- the default service

def default_service() -> AIOService: ...
@overload
def bind(
    sock: socket.socket,
    option: AIOConnOption,
    *,
    ssl: _ssl.SSLContext | None = None,
    server_side: bool = False,
    server_hostname: str | None = None,
    ssl_handshake_timeout: float | None = None,
) -> AIOConn: ...
@overload
def bind(
    sock: socket.socket,
    option: None = None,
    *,
    ssl: _ssl.SSLContext | None = None,
    server_side: bool = False,
    server_hostname: str | None = None,
    ssl_handshake_timeout: float | None = None,
    recvq_size: int = 32,
    sendq_size: int = 32,
    share_buff: _ShareBuffer | None = None,
    user_data: Any = None,
) -> AIOConn: ...
def get_complete_status(timeout: _Timeout = None) -> AIOResult | None: ...
def get_complete_statuses(max_results: int = 64, timeout: _Timeout = None) -> list[AIOResult]: ...

# ======================================================================
# ---- issue 10: listening and connecting (posted accept and connect),
# half-close, cancellation, addresses, introspection.
# The methods this adds to AIOService, AIOConn and BufferPool are marked
# "issue 10" in their classes above; these are the types they use.

# (host, port), (host, port, flowinfo, scope_id), or a Unix socket path
_Address: TypeAlias = tuple[str, int] | tuple[str, int, int, int] | str | bytes
# what getsockname()/getpeername() return (typeshed types it Any too)
_RetAddress: TypeAlias = Any

@final
class Listener:
    """What svc.listen() returns: post accept(context) on it."""

    def accept(self, context: Any) -> None: ...
    @property
    def address(self) -> _RetAddress: ...
    @property
    def fd(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    def close(self, reason: BaseException | None = None) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

# ======================================================================
# ---- issue 11: TLS. conn.tls on a TLS connection: a read-only view of the
# _ssl.SSLObject the backend drives (made with the user's context).

@final
class TLSInfo:
    # made by the backends (conn.tls); wraps the connection's SSLObject
    def __init__(
        self, sslobj: _ssl.SSLObject, guard: Callable[[], AbstractContextManager[Any]] | None = None
    ) -> None: ...
    @property
    def ssl_object(self) -> _ssl.SSLObject: ...
    @property
    def context(self) -> _ssl.SSLContext: ...
    @property
    def server_side(self) -> bool: ...
    @property
    def server_hostname(self) -> str | None: ...
    @property
    def session_reused(self) -> bool: ...
    @property
    def session(self) -> _ssl.SSLSession | None: ...
    def version(self) -> str | None: ...
    def cipher(self) -> tuple[str, str, int] | None: ...
    def shared_ciphers(self) -> list[tuple[str, str, int]] | None: ...
    def compression(self) -> str | None: ...
    def selected_alpn_protocol(self) -> str | None: ...
    @overload
    def getpeercert(self, binary_form: Literal[False] = False) -> Any: ...
    @overload
    def getpeercert(self, binary_form: Literal[True]) -> bytes | None: ...
    def get_channel_binding(self, cb_type: str = "tls-unique") -> bytes | None: ...
