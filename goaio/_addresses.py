"""Addresses and listening sockets: the socket-level steps every backend shares.

`svc.listen()` and `svc.connect()` check and parse their address arguments
here, and `svc.listen(address)` makes its listening socket here, on the pure
and the compiled backends alike, so the errors (class and message) are the
same on each.
"""

import errno
import os
import socket
import stat

from ._errors import UnsupportedConn

__all__ = ["check_listening", "listening_socket", "numeric", "parse", "same_family",
           "unlink_if_same"]

_AF_UNIX = getattr(socket, "AF_UNIX", None)
_INET = (socket.AF_INET, socket.AF_INET6)


def parse(address, what="address"):
    """``("unix", path)`` or ``("inet", host, port, rest)``; TypeError otherwise."""
    if isinstance(address, (str, bytes)):
        if _AF_UNIX is None:
            raise TypeError("Unix socket paths are not available here")
        return ("unix", address)
    if not isinstance(address, tuple) or len(address) not in (2, 4):
        raise TypeError(f"{what} must be a (host, port) tuple or a str/bytes path, "
                        f"not {type(address).__name__}")
    host, port = address[0], address[1]
    if isinstance(host, bytes):
        host = host.decode("ascii")
    if not isinstance(host, str):
        raise TypeError(f"host must be a str, not {type(host).__name__}")
    _check_port(port)
    return ("inet", host, port, tuple(address[2:]))


def _check_port(port):
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"port must be an int, not {type(port).__name__}")
    if not 0 <= port <= 65535:
        # socket's class for it (a C connect, getaddrinfo too, would take
        # it modulo 65536: another port)
        raise OverflowError("port must be 0-65535")


def numeric(host, port, rest):
    """The socket address of a numeric host, or None for a name (no resolver call)."""
    bare = host.partition("%")[0]
    try:
        socket.inet_pton(socket.AF_INET, host)
    except (OSError, ValueError):
        pass
    else:
        return [(socket.AF_INET, (host, port))]
    try:
        socket.inet_pton(socket.AF_INET6, bare)
    except (OSError, ValueError):
        return None
    if bare != host:  # a scope name ("fe80::1%eth0"): the numeric resolver maps it
        info = socket.getaddrinfo(host, port, socket.AF_INET6, socket.SOCK_STREAM, 0,
                                  socket.AI_NUMERICHOST)
        return [(socket.AF_INET6, info[0][4])]
    flow, scope = rest if rest else (0, 0)
    return [(socket.AF_INET6, (host, port, flow, scope))]


def same_family(local, fam):
    """Can a socket of family ``fam`` bind ``local``? (A local name: assume so.)"""
    if local[0] == "unix":
        return fam == _AF_UNIX
    if fam == _AF_UNIX:
        return False
    num = numeric(*local[1:])
    return num is None or num[0][0] == fam


def _unix_path_id(path):
    st = os.stat(path)
    return (st.st_dev, st.st_ino) if stat.S_ISSOCK(st.st_mode) else None


def listening_socket(address, backlog, reuse_port):
    """A new listening socket for ``address``; returns ``(sock, created_path)``.

    ``created_path`` is ``(path, (dev, ino))`` for a Unix path bound here (to
    be unlinked at close if still the same file), else None.
    """
    if isinstance(address, (str, bytes)):
        if _AF_UNIX is None:
            raise OSError(errno.EAFNOSUPPORT, "AF_UNIX is not available here")
        sock = socket.socket(_AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(address)
            try:
                created = (address, _unix_path_id(address))
            except OSError:  # an abstract name (Linux "\0..."): no file
                created = None
            try:
                sock.listen(backlog)
            except BaseException:
                unlink_if_same(created)
                raise
        except BaseException:
            sock.close()
            raise
        return sock, created
    if not isinstance(address, tuple) or len(address) not in (2, 4):
        raise TypeError("address must be a (host, port) tuple or a str/bytes path, "
                        f"not {type(address).__name__}")
    host, port = address[0], address[1]
    if isinstance(host, bytes):
        host = host.decode("ascii")
    if host is not None and not isinstance(host, str):
        raise TypeError(f"host must be a str, not {type(host).__name__}")
    _check_port(port)
    infos = socket.getaddrinfo(host or None, port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    fam, _, proto, _, sa = infos[0]
    if len(address) == 4 and fam == socket.AF_INET6:
        sa = (sa[0], sa[1], address[2], address[3])
    sock = socket.socket(fam, socket.SOCK_STREAM, proto)
    try:
        if os.name == "posix":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(sa)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock, None


def unlink_if_same(created):
    if created is None:
        return
    path, ident = created
    try:
        if ident is not None and _unix_path_id(path) == ident:
            os.unlink(path)
    except OSError:
        pass


def check_listening(sock):
    """What ``svc.listen(sock)`` accepts: a listening SOCK_STREAM socket."""
    if sock.fileno() < 0:
        raise ValueError("the socket is closed")
    if sock.type != socket.SOCK_STREAM or sock.family not in _INET + ((_AF_UNIX,) if _AF_UNIX else ()):
        raise UnsupportedConn("listen needs a SOCK_STREAM socket (TCP or Unix stream)")
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        listening = 0
    if not listening:
        raise UnsupportedConn("listen needs a listening socket (call sock.listen() first)")
