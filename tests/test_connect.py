"""svc.connect: connecting as a posted operation, and conn.peername/sockname
(SPEC "Listening and connecting", "Half-close, cancellation, addresses")."""

import errno
import os
import socket
import threading
import time

import pytest

import goaio
from goaio import _messages as M
from lifecycle_support import (  # noqa: F401 - fixtures
    LONG_NAME,
    blackhole,
    closed_port,
    connect_pair,
    peers,
    require,
    timed,
)
from support import LINUX, WAIT, assert_no_result, collect, collect_one, family_available, recv_exactly

#: a call that must not block returns within this (generous for a loaded machine)
QUICK = 0.25


def _target(family, lst):
    a = lst.getsockname()
    return a if family == "unix" else a[:2]


def _accept(peers, lst):
    s, _ = lst.accept()
    peers.socks.append(s)
    s.settimeout(WAIT)
    return s


def _roundtrip(svc, conn, server):
    conn.send("s", b"ping")
    assert recv_exactly(server, 4) == b"ping"
    buf = bytearray(4)
    conn.recv_full("r", buf)
    server.sendall(b"pong")
    got = {r.context: r for r in collect(svc, 2)}
    assert got["s"].err is None
    assert got["r"].err is None and bytes(buf) == b"pong"


def test_new_error_classes():
    assert issubclass(goaio.ConnectTimeout, goaio.Error)
    assert issubclass(goaio.ConnectTimeout, TimeoutError)
    assert issubclass(goaio.Cancelled, goaio.Error)
    assert not issubclass(goaio.Cancelled, TimeoutError)


# ---------------------------------------------------------------- success

def test_connect_to_a_listener(backend, svc, peers, family):
    lst = peers.listening(family)
    target = _target(family, lst)
    elapsed, ret = timed(svc.connect, "ctx", target)
    assert ret is None
    assert elapsed < QUICK
    res = collect_one(svc)
    assert res.err is None, res.err
    assert res.context == "ctx"
    assert res.buff is None
    assert res.bytes_transferred == 0
    conn = peers.keep(res.conn)
    assert isinstance(conn, backend.AIOConn)
    assert not conn.closed and conn.fd >= 0
    server = _accept(peers, lst)
    assert conn.peername == server.getsockname()
    assert conn.sockname == server.getpeername()
    _roundtrip(svc, conn, server)
    assert_no_result(svc)


def test_connected_tcp_connection_has_nodelay(backend, svc, peers):
    conn, _server = connect_pair(svc, peers, "tcp")
    s = socket.socket(fileno=os.dup(conn.fd))
    try:
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        s.close()


def test_connect_unix_bytes_path(backend, svc, peers):
    lst = peers.listening("unix")
    svc.connect("b", lst.getsockname().encode())
    res = collect_one(svc)
    assert res.err is None, res.err
    _roundtrip(svc, peers.keep(res.conn), _accept(peers, lst))


def test_connect_to_a_goaio_listener(backend, svc, peers, family):
    ln = peers.keep(svc.listen(peers.address(family)))
    ln.accept("acc")
    svc.connect("con", ln.address)
    got = {r.context: r for r in collect(svc, 2)}
    assert got["acc"].err is None and got["con"].err is None
    a = peers.keep(got["acc"].conn)
    c = peers.keep(got["con"].conn)
    if family != "unix":
        assert a.peername == c.sockname and c.peername == a.sockname
    c.send("s", b"x" * 100_000)
    buf = bytearray(100_000)
    a.recv_full("r", buf)
    got = {r.context: r for r in collect(svc, 2)}
    assert got["s"].err is None and got["r"].err is None
    assert bytes(buf) == b"x" * 100_000


def test_connect_localhost_by_name(backend, svc, peers):
    lst = peers.listening("tcp")
    port = lst.getsockname()[1]
    svc.connect("lh", ("localhost", port))
    res = collect_one(svc)
    assert res.err is None, res.err
    conn = peers.keep(res.conn)
    assert conn.peername == ("127.0.0.1", port)
    _roundtrip(svc, conn, _accept(peers, lst))


def test_connect_with_a_timeout_that_is_not_reached(backend, svc, peers):
    lst = peers.listening("tcp")
    svc.connect("t", _target("tcp", lst), timeout=0.3)
    res = collect_one(svc)
    assert res.err is None, res.err
    conn = peers.keep(res.conn)
    # the connect's timer is gone with it: nothing fires later, the conn is fine
    assert_no_result(svc, 0.6)
    _roundtrip(svc, conn, _accept(peers, lst))


# ---------------------------------------------------------------- failures

def test_connect_name_that_does_not_resolve(backend, svc):
    assert len(LONG_NAME) > 255
    elapsed, _ = timed(svc.connect, "bad", (LONG_NAME, 80))
    assert elapsed < QUICK
    res = collect_one(svc)
    assert res.context == "bad"
    assert res.conn is None
    assert isinstance(res.err, socket.gaierror), res.err
    assert res.buff is None and res.bytes_transferred == 0
    assert_no_result(svc)


@pytest.mark.parametrize("family", ["tcp", "tcp6"])
def test_connect_refused(backend, svc, family):
    svc.connect("r", closed_port(family))
    res = collect_one(svc)
    assert res.conn is None
    assert type(res.err) is ConnectionRefusedError, res.err
    assert res.err.errno == errno.ECONNREFUSED
    assert_no_result(svc)


def test_connect_unix_missing_path(backend, svc, peers):
    require("unix")
    svc.connect("m", peers.path("missing"))
    res = collect_one(svc)
    assert res.conn is None
    assert type(res.err) is FileNotFoundError, res.err


def test_connect_unix_path_nobody_listens_on(backend, svc, peers):
    require("unix")
    path = peers.path("stale")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()  # leaves the socket file behind
    svc.connect("m", path)
    res = collect_one(svc)
    assert res.conn is None
    assert type(res.err) is ConnectionRefusedError, res.err


@pytest.mark.skipif(not LINUX, reason="the full-backlog target drops SYNs on Linux")
@pytest.mark.parametrize("family", ["tcp", "tcp6"])
def test_connect_timeout(backend, svc, blackhole, family):
    target = blackhole(family)
    assert target.probe_hangs(), "the target answers: the test would prove nothing"
    t0 = time.monotonic()
    svc.connect("t", target.address, timeout=0.3)
    assert time.monotonic() - t0 < QUICK
    res = collect_one(svc)
    elapsed = time.monotonic() - t0
    assert res.context == "t"
    assert res.conn is None
    assert type(res.err) is goaio.ConnectTimeout, res.err
    assert isinstance(res.err, TimeoutError)
    assert str(res.err) == M.CONNECT_TIMEOUT
    assert 0.3 - 0.02 <= elapsed <= 0.3 + 0.5, elapsed
    assert_no_result(svc)


@pytest.mark.skipif(not LINUX, reason="the full-backlog target drops SYNs on Linux")
def test_connect_without_timeout_stays_pending_and_service_close_ends_it(backend, peers, blackhole):
    target = blackhole("tcp")
    svc = backend.AIOService()
    try:
        svc.connect("forever", target.address)
        assert svc.get_complete_status(timeout=0.5) is None
        assert svc.stats()["pending_connect"] == 1
    finally:
        t = time.monotonic()
        svc.close()
        assert time.monotonic() - t < 2.0
    assert svc.stats()["pending_connect"] == 0


def test_connect_local_address_in_use(backend, svc, peers):
    lst = peers.listening("tcp")
    busy = peers.listening("tcp")
    svc.connect("l", _target("tcp", lst), local_address=busy.getsockname())
    res = collect_one(svc)
    assert res.conn is None
    assert isinstance(res.err, OSError) and res.err.errno == errno.EADDRINUSE, res.err


def test_connect_on_a_closed_service_raises(backend):
    svc = backend.AIOService()
    svc.close()
    with pytest.raises(goaio.ServiceClosed):
        svc.connect("x", ("127.0.0.1", 1))


@pytest.mark.parametrize("bad", [12, None, ("127.0.0.1",), ["127.0.0.1", 80]])
def test_connect_bad_address_type_is_type_error(backend, svc, bad):
    with pytest.raises(TypeError):
        svc.connect("x", bad)
    assert_no_result(svc, 0.05)


@pytest.mark.parametrize("port", [-1, 65536, 70000, 2**63])
def test_connect_port_out_of_range_is_overflow_error(backend, svc, port):
    # socket's class; the C connect would otherwise take the port modulo
    # 65536 and connect somewhere else (70000 -> 4464)
    with pytest.raises(OverflowError, match="^port must be 0-65535$"):
        svc.connect("x", ("127.0.0.1", port))
    with pytest.raises(OverflowError, match="^port must be 0-65535$"):
        svc.connect("x", ("127.0.0.1", 1), local_address=("127.0.0.1", port))
    assert_no_result(svc, 0.05)
    assert svc.stats()["pending_connect"] == 0


def test_connect_negative_timeout_is_value_error(backend, svc):
    with pytest.raises(ValueError):
        svc.connect("x", ("127.0.0.1", 1), timeout=-1)


# ---------------------------------------------------------------- options

def test_connect_local_address(backend, svc, peers):
    lst = peers.listening("tcp")
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    local = probe.getsockname()
    probe.close()
    svc.connect("l", _target("tcp", lst), local_address=local)
    res = collect_one(svc)
    assert res.err is None, res.err
    conn = peers.keep(res.conn)
    assert conn.sockname == local
    server = _accept(peers, lst)
    assert server.getpeername() == local


@pytest.mark.skipif(not LINUX, reason="127.0.0.2 is loopback on Linux only")
def test_connect_local_address_port_zero(backend, svc, peers):
    lst = peers.listening("tcp")
    svc.connect("l", _target("tcp", lst), local_address=("127.0.0.2", 0))
    res = collect_one(svc)
    assert res.err is None, res.err
    assert peers.keep(res.conn).sockname[0] == "127.0.0.2"
    assert _accept(peers, lst).getpeername()[0] == "127.0.0.2"


@pytest.mark.skipif(not family_available("tcp6"), reason="no IPv6 loopback")
def test_connect_with_local_address_goes_past_addresses_of_another_family(backend, svc, peers, monkeypatch):
    lst4 = peers.listening("tcp")
    port6 = closed_port("tcp6")
    FakeResolver(monkeypatch, {"both.goaio.test": [(socket.AF_INET6, port6 + (0, 0)),
                                                   (socket.AF_INET, _target("tcp", lst4))]})
    svc.connect("l", ("both.goaio.test", 1), local_address=("127.0.0.1", 0))
    res = collect_one(svc)
    assert res.err is None, res.err
    assert peers.keep(res.conn).sockname[0] == "127.0.0.1"


def test_connect_local_address_by_name(backend, svc, peers):
    lst = peers.listening("tcp")
    svc.connect("l", _target("tcp", lst), local_address=("localhost", 0))
    res = collect_one(svc)
    assert res.err is None, res.err
    assert peers.keep(res.conn).sockname[0] == "127.0.0.1"


def test_connect_keywords_are_the_connection_options(backend, svc, peers):
    pool = backend.BufferPool(256)
    marker = object()
    conn, server = connect_pair(svc, peers, "tcp", recvq_size=1, share_buff=pool, user_data=marker)
    assert conn.user_data is marker
    conn.recv("r", None)
    with pytest.raises(goaio.Busy):
        conn.recv("r2", bytearray(1))
    server.sendall(b"data")
    res = collect_one(svc)
    assert res.err is None and len(res.buff) == 256 and bytes(res.buff[:4]) == b"data"
    pool.release(res.buff)


def test_connect_option_object(backend, svc, peers):
    marker = object()
    conn, _server = connect_pair(svc, peers, "tcp",
                                 option=goaio.AIOConnOption(sendq_size=1, user_data=marker))
    assert conn.user_data is marker


def test_connect_option_and_keywords_is_type_error(backend, svc):
    with pytest.raises(TypeError):
        svc.connect("x", ("127.0.0.1", 1), option=goaio.AIOConnOption(), user_data=1)


# ---------------------------------------------------------------- never blocking

@pytest.mark.skipif(not LINUX, reason="the full-backlog target drops SYNs on Linux")
def test_connect_never_blocks_the_caller(backend, svc, blackhole):
    target = blackhole("tcp")
    t0 = time.monotonic()
    for i in range(20):
        svc.connect(i, target.address, timeout=0.5)
    assert time.monotonic() - t0 < QUICK * 5
    results = collect(svc, 20)
    assert all(type(r.err) is goaio.ConnectTimeout for r in results)
    assert sorted(r.context for r in results) == list(range(20))


class FakeResolver:
    """Answers for names of the tests' own (``*.goaio.test``); everything else
    goes to the real resolver. Implementations call ``socket.getaddrinfo``
    (looked up at call time), so this is the resolver they see."""

    def __init__(self, monkeypatch, answers, delay=0.0):
        self.real = socket.getaddrinfo
        self.answers = answers
        self.delay = delay
        self.calls = []
        self.threads = set()
        monkeypatch.setattr(socket, "getaddrinfo", self)

    def __call__(self, host, port, *args, **kwargs):
        h = host.decode() if isinstance(host, bytes) else host
        if isinstance(h, str) and h.endswith(".goaio.test"):
            self.calls.append(h)
            self.threads.add(threading.get_ident())
            if self.delay:
                time.sleep(self.delay)
            addrs = self.answers[h]
            if isinstance(addrs, BaseException):
                raise addrs
            return [(fam, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", a) for fam, a in addrs]
        return self.real(host, port, *args, **kwargs)


def test_name_resolution_does_not_block_the_caller(backend, svc, peers, monkeypatch):
    lst = peers.listening("tcp")
    fake = FakeResolver(monkeypatch, {"slow.goaio.test": [(socket.AF_INET, _target("tcp", lst))]},
                        delay=0.5)
    elapsed, _ = timed(svc.connect, "slow", ("slow.goaio.test", 1))
    assert elapsed < QUICK
    res = collect_one(svc)
    assert res.err is None, res.err
    conn = peers.keep(res.conn)
    assert fake.calls == ["slow.goaio.test"]
    assert threading.get_ident() not in fake.threads
    _roundtrip(svc, conn, _accept(peers, lst))


def test_every_address_of_a_name_is_tried_in_turn(backend, svc, peers, monkeypatch):
    lst = peers.listening("tcp")
    refused = [(socket.AF_INET, closed_port("tcp")), (socket.AF_INET, closed_port("tcp"))]
    FakeResolver(monkeypatch, {"multi.goaio.test": refused + [(socket.AF_INET, _target("tcp", lst))]})
    svc.connect("m", ("multi.goaio.test", 1))
    res = collect_one(svc)
    assert res.err is None, res.err
    conn = peers.keep(res.conn)
    assert conn.peername == _target("tcp", lst)
    _roundtrip(svc, conn, _accept(peers, lst))


def test_all_addresses_refused_reports_the_kernel_error(backend, svc, monkeypatch):
    refused = [(socket.AF_INET, closed_port("tcp")), (socket.AF_INET, closed_port("tcp"))]
    FakeResolver(monkeypatch, {"none.goaio.test": refused})
    svc.connect("m", ("none.goaio.test", 1))
    res = collect_one(svc)
    assert res.conn is None
    assert type(res.err) is ConnectionRefusedError, res.err


def test_resolver_error_is_delivered(backend, svc, monkeypatch):
    err = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    FakeResolver(monkeypatch, {"gone.goaio.test": err})
    svc.connect("g", ("gone.goaio.test", 1))
    res = collect_one(svc)
    assert res.conn is None
    assert isinstance(res.err, socket.gaierror) and res.err.errno == socket.EAI_NONAME


@pytest.mark.skipif(not LINUX, reason="the full-backlog target drops SYNs on Linux")
def test_one_timeout_covers_every_address(backend, svc, monkeypatch, blackhole):
    a, b = blackhole("tcp"), blackhole("tcp")
    FakeResolver(monkeypatch, {"holes.goaio.test": [(socket.AF_INET, a.address),
                                                    (socket.AF_INET, b.address)]})
    t0 = time.monotonic()
    svc.connect("h", ("holes.goaio.test", 1), timeout=0.3)
    res = collect_one(svc)
    elapsed = time.monotonic() - t0
    assert type(res.err) is goaio.ConnectTimeout, res.err
    assert elapsed <= 0.3 + 0.5, elapsed   # one timeout, not one per address


# ---------------------------------------------------------------- addresses

def test_peername_and_sockname_of_a_bound_connection(backend, svc, bind, pairs, family):
    sock, peer = pairs(family)
    want_peer, want_sock = sock.getpeername(), sock.getsockname()
    conn = bind(sock)
    assert conn.peername == want_peer
    assert conn.sockname == want_sock
    if family != "unix":
        assert conn.peername == peer.getsockname()
    conn.close()
    assert conn.peername is None
    assert conn.sockname is None


@pytest.mark.parametrize("family", ["tcp", "tcp6"])
def test_peername_stays_known_after_both_sides_closed_their_stream(backend, svc, bind, pairs, family):
    """After FIN both ways the socket is CLOSED and getpeername() fails; the
    connection is still open in goaio and still knows its peer."""
    sock, peer = pairs(family)
    want, local = sock.getpeername(), sock.getsockname()
    conn = bind(sock)
    peer.close()
    conn.recv("eof", bytearray(4))
    assert isinstance(collect_one(svc).err, EOFError)
    conn.shutdown("sd")
    assert collect_one(svc).err is None
    time.sleep(0.05)
    assert conn.peername == want
    assert conn.sockname == local


def test_peername_and_sockname_none_after_service_close(backend, peers):
    svc = backend.AIOService()
    try:
        lst = peers.listening("tcp")
        svc.connect("c", _target("tcp", lst))
        res = svc.get_complete_status(timeout=WAIT)
        assert res is not None and res.err is None, res
        conn = res.conn
        assert conn.peername == _target("tcp", lst)
    finally:
        svc.close()
    assert conn.peername is None and conn.sockname is None
