"""Helpers and fixtures of the listen/connect/shutdown/cancel/stats tests (issue 10).

Imported by those test modules with ``from lifecycle_support import *``-style
explicit imports; pytest finds the fixtures through the import.

Every peer here is a plain ``socket`` socket over loopback (127.0.0.1, ::1)
or an AF_UNIX path in a short temporary directory. No name that could leave
the machine is ever resolved: ``localhost``, numeric hosts, or names the
tests' own fake resolver answers.
"""

import os
import select
import socket
import tempfile
import time

import pytest

from support import WAIT, collect_one, family_available

#: AF_* of each family name of support.FAMILIES
AF = {"tcp": socket.AF_INET, "tcp6": socket.AF_INET6, "unix": getattr(socket, "AF_UNIX", None)}
HOST = {"tcp": "127.0.0.1", "tcp6": "::1"}

#: A host name longer than 255 octets (labels of 60): the resolver refuses it
#: locally with socket.gaierror, without asking any name server.
LONG_NAME = ".".join(["a" * 60] * 5)


def require(family):
    if not family_available(family):
        pytest.skip(f"{family} is not available here")


class Peers:
    """Plain client sockets and temporary unix paths, closed/removed at teardown.

    What must outlive the service (connections and listeners it owns, the unix
    directory) is handed to conftest's ``pairs``, which is torn down after
    ``svc``; this fixture itself is torn down before ``svc``.
    """

    def __init__(self, pairs):
        self._pairs = pairs
        self.socks = []
        self._n = 0

    def path(self, name="s"):
        """A fresh AF_UNIX path in a short private directory (sun_path is ~104 bytes)."""
        pairs = self._pairs
        if pairs._tmpdir is None:  # shared with pairs, which removes it after the service closed
            pairs._tmpdir = tempfile.mkdtemp(prefix="goaio")
        self._n += 1
        return os.path.join(pairs._tmpdir, f"{name}{self._n}")

    def address(self, family):
        """An address to listen on: port 0 for TCP, a fresh path for unix."""
        require(family)
        if family == "unix":
            return self.path()
        return (HOST[family], 0)

    def client(self, family, address, blocking=True):
        """A plain client socket connected (blocking, with WAIT timeout) to ``address``."""
        c = socket.socket(AF[family], socket.SOCK_STREAM)
        self.socks.append(c)
        if blocking:
            c.settimeout(WAIT)
            c.connect(address)
        return c

    def listening(self, family, backlog=16):
        """A plain listening socket (for ``svc.listen(sock)`` and connect targets)."""
        require(family)
        s = socket.socket(AF[family], socket.SOCK_STREAM)
        self.socks.append(s)
        if family == "unix":
            s.bind(self.path())
        else:
            if family == "tcp":
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((HOST[family], 0))
        s.listen(backlog)
        s.settimeout(WAIT)
        return s

    def keep(self, obj):
        """Hold a connection or listener until the service is closed at teardown:
        an idle connection dropped unclosed warns ResourceWarning (an error here)."""
        if obj is not None:
            self._pairs.keep(obj)
        return obj

    def close(self):
        for s in self.socks:
            s.close()


@pytest.fixture
def peers(pairs):
    p = Peers(pairs)
    yield p
    p.close()


def closed_port(family):
    """A (host, port) where nothing listens: connecting is refused at once."""
    require(family)
    s = socket.socket(AF[family], socket.SOCK_STREAM)
    s.bind((HOST[family], 0))
    addr = s.getsockname()
    s.close()
    return addr[:2]


class Blackhole:
    """A loopback TCP address that never answers a SYN: a listener with
    ``listen(0)`` whose accept queue is filled with connections nobody accepts.
    Linux then drops every new SYN, so a connect to it hangs until its timeout.
    """

    def __init__(self, family="tcp"):
        require(family)
        self.family = family
        self.lst = socket.socket(AF[family], socket.SOCK_STREAM)
        self.lst.bind((HOST[family], 0))
        self.lst.listen(0)
        self.address = self.lst.getsockname()[:2]
        self.fillers = []
        for _ in range(64):
            c = socket.socket(AF[family], socket.SOCK_STREAM)
            c.setblocking(False)
            c.connect_ex(self.address)
            _, w, _ = select.select([], [c], [], 0.3)
            if not w:
                c.close()   # the probe got no SYN-ACK: the queue is full
                return
            self.fillers.append(c)
        self.close()
        pytest.skip("could not make a loopback target that never answers")

    def probe_hangs(self, wait=0.3):
        """True if a fresh connect still gets no answer within ``wait``."""
        c = socket.socket(AF[self.family], socket.SOCK_STREAM)
        try:
            c.setblocking(False)
            c.connect_ex(self.address)
            _, w, _ = select.select([], [c], [], wait)
            return not w
        finally:
            c.close()

    def close(self):
        for c in self.fillers:
            c.close()
        self.fillers = []
        self.lst.close()


@pytest.fixture
def blackhole():
    made = []

    def make(family="tcp"):
        b = Blackhole(family)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


def accept_pair(svc, peers, family="tcp", **options):
    """A connection accepted by ``svc.listen`` and its plain client:
    ``(ln, conn, client)``. The listener and the conn are kept to teardown."""
    ln = peers.keep(svc.listen(peers.address(family), **options))
    ln.accept("acc")
    client = peers.client(family, ln.address)
    res = collect_one(svc)
    assert res.err is None, res.err
    assert res.context == "acc"
    return ln, peers.keep(res.conn), client


def connect_pair(svc, peers, family="tcp", **options):
    """A connection made by ``svc.connect`` to a plain listener, and the accepted
    plain socket: ``(conn, server_side)``."""
    lst = peers.listening(family)
    svc.connect("con", lst.getsockname() if family == "unix" else lst.getsockname()[:2], **options)
    res = collect_one(svc)
    assert res.err is None, res.err
    assert res.context == "con"
    s, _ = lst.accept()
    peers.socks.append(s)
    s.settimeout(WAIT)
    return peers.keep(res.conn), s


def timed(fn, *args, **kwargs):
    """``(seconds, return value)`` of one call."""
    t = time.monotonic()
    r = fn(*args, **kwargs)
    return time.monotonic() - t, r


class CountingShare:
    """A share_buff that counts what it hands out and gets back."""

    def __init__(self, size=4096):
        self.size = size
        self.acquired = 0
        self.released = 0

    def acquire(self):
        self.acquired += 1
        return bytearray(self.size)

    def release(self, buff):
        self.released += 1

    @property
    def out(self):
        return self.acquired - self.released
