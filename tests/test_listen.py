"""svc.listen / ln.accept: accepting as a posted operation (SPEC "Listening and connecting")."""

import errno
import json
import os
import select
import socket
import sys
import time

import pytest

import goaio
from goaio import _messages as M
from lifecycle_support import HOST, peers, require  # noqa: F401 - fixture
from support import (
    LINUX,
    WAIT,
    assert_no_result,
    collect,
    collect_one,
    recv_exactly,
    reset,
    run_python,
)


def _sockopt(fd, level, opt):
    """getsockopt on a descriptor goaio owns (through a dup, left open for goaio)."""
    s = socket.socket(fileno=os.dup(fd))
    try:
        return s.getsockopt(level, opt)
    finally:
        s.close()


def _roundtrip(svc, conn, client):
    """The connection is bound and usable both ways."""
    conn.send("s", b"ping")
    assert recv_exactly(client, 4) == b"ping"
    buf = bytearray(4)
    conn.recv_full("r", buf)
    client.sendall(b"pong")
    got = {r.context: r for r in collect(svc, 2)}
    assert got["s"].err is None and got["s"].bytes_transferred == 4
    assert got["r"].err is None and bytes(buf) == b"pong"


# ---------------------------------------------------------------- addresses

@pytest.mark.parametrize("port", [-1, 65536, 70000, 2**63])
def test_listen_port_out_of_range_is_overflow_error(backend, svc, port):
    # (getaddrinfo takes 70000 modulo 65536: a listener on port 4464)
    with pytest.raises(OverflowError, match="^port must be 0-65535$"):
        svc.listen(("127.0.0.1", port))
    assert svc.stats()["listeners"] == 0


@pytest.mark.parametrize("family", ["tcp", "tcp6"])
def test_listen_port_zero_then_address(backend, svc, peers, family):
    require(family)
    ln = peers.keep(svc.listen((HOST[family], 0)))
    addr = ln.address
    assert addr[0] == HOST[family]
    assert addr[1] != 0
    fam = socket.AF_INET if family == "tcp" else socket.AF_INET6
    assert _sockopt(ln.fd, socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    s = socket.socket(fileno=os.dup(ln.fd))
    try:
        assert s.family == fam
        assert addr == s.getsockname()
    finally:
        s.close()


def test_listen_on_localhost_by_name(backend, svc, peers):
    ln = peers.keep(svc.listen(("localhost", 0)))
    assert ln.address[0] in ("127.0.0.1", "::1")
    ln.accept("a")
    client = peers.client("tcp" if ln.address[0] == "127.0.0.1" else "tcp6", ln.address)
    res = collect_one(svc)
    assert res.err is None
    _roundtrip(svc, peers.keep(res.conn), client)


def test_a_listener_with_accepts_pending_stays_alive_unreferenced(backend, svc, peers):
    import gc

    ln = svc.listen(("127.0.0.1", 0))
    addr = ln.address
    ln.accept("a")
    del ln
    gc.collect()
    client = peers.client("tcp", addr)
    res = collect_one(svc)
    assert res.err is None and res.context == "a"
    _roundtrip(svc, peers.keep(res.conn), client)


def test_accept_completes_with_a_bound_connection(backend, svc, peers, family):
    ln = peers.keep(svc.listen(peers.address(family)))
    ln.accept("ctx")
    client = peers.client(family, ln.address)
    res = collect_one(svc)
    conn = peers.keep(res.conn)
    assert res.err is None
    assert res.context == "ctx"
    assert res.buff is None
    assert res.bytes_transferred == 0
    assert isinstance(conn, backend.AIOConn)
    assert not conn.closed and conn.fd >= 0 and conn.fd != ln.fd
    assert conn.peername == client.getsockname()
    assert conn.sockname == client.getpeername()
    _roundtrip(svc, conn, client)
    assert_no_result(svc)


def test_accept_of_a_client_that_connected_before_the_accept(backend, svc, peers, family):
    ln = peers.keep(svc.listen(peers.address(family)))
    client = peers.client(family, ln.address)  # waits in the kernel's queue
    time.sleep(0.05)
    ln.accept("late")
    res = collect_one(svc)
    conn = peers.keep(res.conn)
    assert res.err is None and res.context == "late"
    _roundtrip(svc, conn, client)


@pytest.mark.parametrize("kind", [str, bytes])
def test_listen_unix_path_created_and_unlinked_on_close(backend, svc, peers, kind):
    require("unix")
    path = peers.path()
    ln = peers.keep(svc.listen(kind(path) if kind is str else os.fsencode(path)))
    assert os.path.exists(path)
    assert os.fsencode(ln.address) == os.fsencode(path)
    ln.accept("a")
    client = peers.client("unix", path)
    res = collect_one(svc)
    assert res.err is None
    _roundtrip(svc, peers.keep(res.conn), client)
    ln.close()
    assert ln.closed
    assert not os.path.exists(path)


def test_listen_unix_path_unlinked_by_service_close(backend, peers):
    require("unix")
    svc = backend.AIOService()
    try:
        path = peers.path()
        ln = svc.listen(path)
        assert os.path.exists(path)
    finally:
        svc.close()
    assert ln.closed
    assert not os.path.exists(path)


@pytest.mark.parametrize("family", ["tcp", "tcp6", "unix"])
def test_listen_on_an_already_listening_socket(backend, svc, peers, family):
    lst = peers.listening(family)
    addr = lst.getsockname()
    fd = lst.fileno()
    ln = peers.keep(svc.listen(lst))
    assert ln.fd == fd
    assert ln.address == addr
    ln.accept("a")
    client = peers.client(family, addr)
    res = collect_one(svc)
    assert res.err is None
    _roundtrip(svc, peers.keep(res.conn), client)
    ln.close()
    assert ln.closed and ln.fd == -1
    # goaio closed the socket object it was given (as conn.close() does) ...
    assert lst.fileno() == -1
    if family == "unix":
        # ... but leaves alone a path it did not create
        assert os.path.exists(addr)


def test_listen_refuses_a_socket_that_is_not_listening(backend, svc, peers):
    s = socket.socket()
    peers.socks.append(s)
    s.bind(("127.0.0.1", 0))
    with pytest.raises(goaio.UnsupportedConn):
        svc.listen(s)
    assert s.fileno() != -1  # left to the user


def test_listen_twice_on_one_socket_is_value_error(backend, svc, peers):
    lst = peers.listening("tcp")
    ln = peers.keep(svc.listen(lst))
    with pytest.raises(ValueError):
        svc.listen(lst)
    assert not ln.closed and lst.fileno() == ln.fd
    ln.close()


def test_listen_address_in_use_raises_at_the_call(backend, svc, peers):
    ln = peers.keep(svc.listen(("127.0.0.1", 0)))
    with pytest.raises(OSError) as ei:
        peers.keep(svc.listen(ln.address))
    assert ei.value.errno == errno.EADDRINUSE


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="no SO_REUSEPORT")
def test_listen_reuse_port(backend, svc, peers):
    a = peers.keep(svc.listen(("127.0.0.1", 0), reuse_port=True))
    assert _sockopt(a.fd, socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
    b = peers.keep(svc.listen(a.address, reuse_port=True))
    assert b.address == a.address
    assert _sockopt(b.fd, socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
    # the kernel spreads new connections over both: each one's accept completes
    a.accept("a")
    b.accept("b")
    for _ in range(24):
        peers.client("tcp", a.address)
    res = collect(svc, 2)
    assert sorted(r.context for r in res) == ["a", "b"]
    for r in res:
        assert r.err is None
        peers.keep(r.conn)
    default = peers.keep(svc.listen(("127.0.0.1", 0)))
    assert _sockopt(default.fd, socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0


@pytest.mark.skipif(not LINUX, reason="Linux accept-queue arithmetic (backlog + 1)")
def test_listen_backlog_is_passed_to_the_kernel(backend, svc, peers):
    def completed_connects(ln, n=8):
        done = 0
        for _ in range(n):
            c = peers.client("tcp", None, blocking=False)
            c.setblocking(False)
            c.connect_ex(ln.address)
            _, w, _ = select.select([], [c], [], 0.3)
            done += bool(w)
        return done

    small = peers.keep(svc.listen(("127.0.0.1", 0), backlog=1))
    assert completed_connects(small) <= 3
    big = peers.keep(svc.listen(("127.0.0.1", 0)))  # backlog=1024
    assert completed_connects(big) == 8


# ---------------------------------------------------------------- options

def test_accepted_connections_get_the_listener_keywords(backend, svc, peers):
    pool = backend.BufferPool(512)
    marker = object()
    ln = peers.keep(svc.listen(("127.0.0.1", 0), recvq_size=1, sendq_size=2,
                               share_buff=pool, user_data=marker))
    ln.accept("a")
    client = peers.client("tcp", ln.address)
    conn = peers.keep(collect_one(svc).conn)
    assert conn.user_data is marker
    conn.recv("r", None)
    with pytest.raises(goaio.Busy):      # recvq_size=1
        conn.recv("r2", bytearray(4))
    client.sendall(b"hi")
    res = collect_one(svc)
    assert res.err is None and res.context == "r"
    assert len(res.buff) == 512           # taken from the share_buff pool
    assert bytes(res.buff[:2]) == b"hi"
    pool.release(res.buff)


def test_accepted_connections_get_the_listener_option(backend, svc, peers):
    marker = object()
    opt = goaio.AIOConnOption(recvq_size=2, sendq_size=1, user_data=marker)
    ln = peers.keep(svc.listen(("127.0.0.1", 0), option=opt))
    for i in range(2):
        ln.accept(i)
    clients = [peers.client("tcp", ln.address) for _ in range(2)]
    conns = [peers.keep(r.conn) for r in collect(svc, 2)]
    assert clients
    for conn in conns:
        assert conn.user_data is marker
        conn.recv("a", bytearray(1))
        conn.recv("b", bytearray(1))
        with pytest.raises(goaio.Busy):
            conn.recv("c", bytearray(1))


def test_listen_option_and_keywords_together_is_type_error(backend, svc):
    with pytest.raises(TypeError):
        svc.listen(("127.0.0.1", 0), option=goaio.AIOConnOption(), recvq_size=2)


def test_listen_bad_option_value_is_value_error(backend, svc):
    with pytest.raises(ValueError):
        svc.listen(("127.0.0.1", 0), recvq_size=0)


# ---------------------------------------------------------------- many accepts

def test_many_pending_accepts_complete_once_each_in_posting_order(backend, svc, peers, family):
    ln = peers.keep(svc.listen(peers.address(family)))
    n = 8
    ctxs = [("acc", i) for i in range(n)]
    for c in ctxs:
        ln.accept(c)
    clients = []
    for _ in range(n):  # one at a time: the kernel queues them in this order
        clients.append(peers.client(family, ln.address))
        time.sleep(0.01)
    results = collect(svc, n)
    assert [r.context for r in results] == ctxs
    conns = [peers.keep(r.conn) for r in results]
    assert len({id(c) for c in conns}) == n
    for r in results:
        assert r.err is None and r.buff is None and r.bytes_transferred == 0
    if family != "unix":
        assert [c.peername for c in conns] == [c.getsockname() for c in clients]
    for i, conn in enumerate(conns):
        conn.send("x", b"%d" % i)
    collect(svc, n)
    for i, client in enumerate(clients):
        assert recv_exactly(client, len(b"%d" % i)) == b"%d" % i
    assert_no_result(svc)


def test_more_than_max_pending_accepts_is_busy(backend, svc, peers):
    ln = peers.keep(svc.listen(("127.0.0.1", 0)))
    assert M.MAX_PENDING_ACCEPTS == 1024
    for i in range(M.MAX_PENDING_ACCEPTS):
        ln.accept(i)
    with pytest.raises(goaio.Busy) as ei:
        ln.accept("one too many")
    assert str(ei.value) == M.ACCEPTQ_FULL
    ln.close()
    results = collect(svc, M.MAX_PENDING_ACCEPTS)
    assert [r.context for r in results] == list(range(M.MAX_PENDING_ACCEPTS))
    assert all(type(r.err) is goaio.ConnClosed for r in results)
    assert_no_result(svc)


# ---------------------------------------------------------------- closing

class Reason(Exception):
    pass


def test_listener_close_completes_pending_accepts_with_reason(backend, svc, peers):
    ln = peers.keep(svc.listen(("127.0.0.1", 0)))
    for i in range(3):
        ln.accept(i)
    reason = Reason("stop")
    ln.close(reason)
    results = collect(svc, 3)
    assert [r.context for r in results] == [0, 1, 2]
    for r in results:
        assert r.err is reason
        assert r.conn is None
        assert r.buff is None and r.bytes_transferred == 0
    assert ln.closed and ln.fd == -1
    assert_no_result(svc)


def test_listener_close_default_reason_is_conn_closed(backend, svc, peers):
    ln = peers.keep(svc.listen(("127.0.0.1", 0)))
    ln.accept("a")
    ln.accept("b")
    ln.close()
    results = collect(svc, 2)
    for r in results:
        assert type(r.err) is goaio.ConnClosed
        assert str(r.err) == M.LISTENER_CLOSED
        assert r.conn is None
    assert results[0].err is not results[1].err
    assert_no_result(svc)


def test_listener_closed_refuses_accept_and_is_idempotent(backend, svc, peers):
    ln = svc.listen(("127.0.0.1", 0))
    addr = ln.address
    ln.close()
    ln.close()
    assert ln.closed and ln.fd == -1
    with pytest.raises(goaio.ConnClosed) as ei:
        ln.accept("x")
    assert str(ei.value) == M.LISTENER_CLOSED
    # the port is free again: nothing listens there
    c = socket.socket()
    peers.socks.append(c)
    with pytest.raises(ConnectionRefusedError):
        c.connect(addr)


@pytest.mark.parametrize("bad", ["string", 5, Reason])
def test_listener_close_bad_reason_is_type_error(backend, svc, peers, bad):
    ln = peers.keep(svc.listen(("127.0.0.1", 0)))
    ln.accept("a")
    with pytest.raises(TypeError):
        ln.close(bad)
    assert not ln.closed
    client = peers.client("tcp", ln.address)
    res = collect_one(svc)
    assert res.err is None
    peers.keep(res.conn)
    assert client


def test_service_close_closes_listeners(backend, peers):
    svc = backend.AIOService()
    try:
        ln = svc.listen(("127.0.0.1", 0))
        ln.accept("a")
        addr = ln.address
    finally:
        svc.close()
    assert ln.closed and ln.fd == -1
    with pytest.raises(goaio.ServiceClosed):
        ln.accept("b")
    with pytest.raises(goaio.ServiceClosed):
        svc.get_complete_status(timeout=0)
    with pytest.raises(goaio.ServiceClosed):
        svc.listen(("127.0.0.1", 0))
    c = socket.socket()
    peers.socks.append(c)
    with pytest.raises(ConnectionRefusedError):
        c.connect(addr)
    ln.close()  # still idempotent


def test_listener_is_a_context_manager(backend, svc, peers):
    with svc.listen(("127.0.0.1", 0)) as ln:
        assert not ln.closed
        fd = ln.fd
        assert fd >= 0
        ln.accept("a")
        client = peers.client("tcp", ln.address)
        res = collect_one(svc)
        assert res.err is None
        peers.keep(res.conn)
        assert client
    assert ln.closed and ln.fd == -1
    assert not res.conn.closed  # accepted connections outlive their listener


def test_listener_close_with_a_client_waiting_in_the_queue(backend, svc, peers):
    ln = svc.listen(("127.0.0.1", 0))
    client = peers.client("tcp", ln.address)
    ln.close()
    client.settimeout(WAIT)
    # the queued connection is reset or closed by the kernel, never accepted
    try:
        data = client.recv(16)
    except ConnectionResetError:
        data = b""
    assert data == b""
    assert_no_result(svc)


# ---------------------------------------------------------------- failures

def test_reset_between_kernel_accept_and_goaio_accept_is_skipped(backend, svc, peers):
    ln = peers.keep(svc.listen(("127.0.0.1", 0)))
    bad = socket.create_connection(ln.address, timeout=WAIT)
    reset(bad)        # RST while the connection waits in the accept queue
    time.sleep(0.05)
    good = peers.client("tcp", ln.address)
    ln.accept("a")
    res = collect_one(svc)
    assert res.err is None, res.err
    conn = peers.keep(res.conn)
    assert conn.peername == good.getsockname()
    _roundtrip(svc, conn, good)
    assert_no_result(svc)


def test_reset_skipped_while_the_accept_is_pending_for_the_next(backend, svc, peers):
    ln = peers.keep(svc.listen(("127.0.0.1", 0)))
    bad = socket.create_connection(ln.address, timeout=WAIT)
    reset(bad)
    time.sleep(0.05)
    ln.accept("a")
    assert_no_result(svc, 0.3)   # nothing to give yet: the accept stays pending
    good = peers.client("tcp", ln.address)
    res = collect_one(svc)
    assert res.err is None, res.err
    assert peers.keep(res.conn).peername == good.getsockname()


EMFILE_CHILD = r"""
import errno, importlib, json, os, resource, socket, sys, time
mod = importlib.import_module("goaio._" + sys.argv[1])
report = {}
svc = mod.AIOService(1)
ln = svc.listen(("127.0.0.1", 0))
client = socket.create_connection(ln.address, timeout=10)   # waits in the accept queue
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
used = len(os.listdir("/proc/self/fd"))
resource.setrlimit(resource.RLIMIT_NOFILE, (used + 8, hard))
fill = []
try:
    while True:
        fill.append(os.open("/dev/null", os.O_RDONLY))
except OSError as e:
    assert e.errno == errno.EMFILE, e

def describe(r):
    return [r.context, r.conn is None, getattr(r.err, "errno", None), type(r.err).__name__]

ln.accept("a1")
r = svc.get_complete_status(timeout=10)
report["first"] = describe(r) if r is not None else None
# the listener stays readable and no descriptor is free: no thread may spin
ln.accept("a2")
during = []
cpu0 = time.process_time()
t0 = time.monotonic()
while True:
    left = 1.0 - (time.monotonic() - t0)
    if left <= 0:
        break
    r = svc.get_complete_status(timeout=left)
    if r is not None:
        during.append(describe(r))
report["cpu"] = time.process_time() - cpu0
report["during"] = during
# descriptors free again: accepting resumes
for fd in fill:
    os.close(fd)
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
if during:
    ln.accept("a3")
r = svc.get_complete_status(timeout=10)
report["after"] = describe(r) if r is not None else None
if r is not None and r.conn is not None:
    r.conn.send("hello", b"hello")
    s = svc.get_complete_status(timeout=10)
    client.settimeout(10)
    report["echo"] = client.recv(16).decode()
    r.conn.close()
client.close()
ln.close()
svc.close()
print(json.dumps(report))
"""


@pytest.mark.skipif(not LINUX, reason="RLIMIT_NOFILE and /proc/self/fd")
def test_emfile_completes_the_accept_no_spin_and_recovers(backend):
    """At the descriptor limit a pending accept completes with OSError(EMFILE);
    while the listener is readable and no fd is free no thread spins (CPU time
    stays near zero); once fds are free the waiting client is accepted."""
    proc = run_python(EMFILE_CHILD, argv=[backend.name], timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"EMFILE: {out}")
    assert out["first"] == ["a1", True, errno.EMFILE, "OSError"], out
    for d in out["during"]:   # a2 either waits or fails the same way
        assert d == ["a2", True, errno.EMFILE, "OSError"], out
    assert out["cpu"] < 0.2, out
    assert out["after"] is not None and out["after"][1:3] == [False, None], out
    assert out["echo"] == "hello", out


# ---------------------------------------------------------------- misc

def test_listen_on_a_closed_service_raises(backend):
    svc = backend.AIOService()
    svc.close()
    with pytest.raises(goaio.ServiceClosed):
        svc.listen(("127.0.0.1", 0))


def test_listener_repr_and_attributes(backend, svc, peers):
    ln = peers.keep(svc.listen(("127.0.0.1", 0)))
    assert isinstance(ln.fd, int) and ln.fd >= 0
    assert ln.closed is False
    assert "closed" not in repr(ln)
    ln.close()
    assert ln.closed is True
    assert "closed" in repr(ln)
    assert ln.address is None and ln.fd == -1


def test_accepted_tcp_connection_has_nodelay(backend, svc, peers):
    ln = peers.keep(svc.listen(("127.0.0.1", 0)))
    ln.accept("a")
    peers.client("tcp", ln.address)
    conn = peers.keep(collect_one(svc).conn)
    assert _sockopt(conn.fd, socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_listen_on_an_existing_unix_path_raises_and_leaves_it(backend, svc, peers):
    require("unix")
    path = peers.path()
    with open(path, "w") as f:
        f.write("mine")
    with pytest.raises(OSError) as ei:
        svc.listen(path)
    assert ei.value.errno == errno.EADDRINUSE
    with open(path) as f:
        assert f.read() == "mine"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX")
def test_service_close_closes_accepted_connections(backend, peers):
    svc = backend.AIOService()
    try:
        ln = svc.listen(("127.0.0.1", 0))
        ln.accept("a")
        client = peers.client("tcp", ln.address)
        res = svc.get_complete_status(timeout=WAIT)
        assert res is not None and res.err is None
        conn = res.conn
    finally:
        svc.close()
    assert conn.closed and conn.fd == -1
    client.settimeout(WAIT)
    assert client.recv(16) == b""
