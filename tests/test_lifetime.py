"""Lifetime: garbage collection, fd reuse, the default service, interpreter exit."""

import gc
import os
import socket
import sys
import textwrap
import time
import weakref

import pytest

import goaio
from support import (
    assert_no_result,
    collect,
    collect_one,
    recv_exactly,
    recv_until_eof,
    run_python,
)


# ---------------------------------------------------------------- garbage collection

def test_idle_conn_garbage_collected_warns_and_closes_socket(backend, svc, pairs):
    sock, peer = pairs()
    fd = sock.fileno()
    conn = svc.bind(sock)
    with pytest.warns(ResourceWarning):
        del conn
        gc.collect()
        # Some backends drop the last reference on a worker; give it a moment.
        deadline = time.monotonic() + 1
        while sock.fileno() != -1 and time.monotonic() < deadline:
            gc.collect()
            time.sleep(0.01)
    assert sock.fileno() == -1
    assert recv_until_eof(peer) == b""  # the fd really was closed
    assert svc._stats()["conns"] == 0
    # the fd number is free for a new binding
    sock2, _peer2 = pairs()
    with svc.bind(sock2) as conn2:
        assert conn2.fd >= 0 and fd >= 0


def test_conn_with_pending_ops_survives_dropped_references(backend, svc, pairs):
    sock, peer = pairs()
    conn = svc.bind(sock)
    conn.recv("r", bytearray(16))
    conn.send("s", b"sent while unreferenced")
    del conn
    gc.collect()
    time.sleep(0.05)
    gc.collect()
    assert recv_exactly(peer, 23) == b"sent while unreferenced"
    peer.sendall(b"reply")
    results = {r.context: r for r in collect(svc, 2)}
    assert results["s"].err is None
    r = results["r"]
    assert r.err is None and r.buff[: r.bytes_transferred] == b"reply"
    assert not r.conn.closed
    assert sock.fileno() >= 0
    r.conn.close()


def test_conn_with_share_recv_pending_survives_gc(backend, svc, pairs):
    pool = backend.BufferPool(128)
    sock, peer = pairs()
    svc.bind(sock, share_buff=pool).recv("r")
    gc.collect()
    time.sleep(0.05)
    peer.sendall(b"later")
    res = collect_one(svc)
    assert res.err is None and res.buff[:5] == b"later"
    pool.release(res.buff)
    res.conn.close()


def test_conn_closed_by_user_collects_quietly(backend, svc, pairs):
    """No ResourceWarning for a connection that was closed (warnings are errors here)."""
    sock, _peer = pairs()
    conn = svc.bind(sock)
    conn.close()
    del conn
    gc.collect()


def test_closed_conn_dropped_runs_no_python_code(backend, svc, pairs):
    """A closed connection, when its last reference goes, runs no Python code
    of goaio's (an exception raised there -- a KeyboardInterrupt, say --
    could only be printed and lost), and an unclosed one still closes."""
    goaio_dir = os.path.dirname(os.path.abspath(goaio.__file__))
    ran = []

    def profile(frame, event, arg):
        if event == "call" and os.path.abspath(frame.f_code.co_filename).startswith(goaio_dir):
            ran.append(f"{frame.f_code.co_name} ({os.path.basename(frame.f_code.co_filename)})")

    sock, _peer = pairs()
    conn = svc.bind(sock)
    conn.close()
    gone = weakref.ref(conn)
    gc.collect()
    sys.setprofile(profile)
    try:
        del conn
        gc.collect()
    finally:
        sys.setprofile(None)
    assert gone() is None
    assert ran == []
    # the unclosed case: the socket is closed when the connection goes
    sock2, peer2 = pairs()
    conn2 = svc.bind(sock2)
    with pytest.warns(ResourceWarning, match="unclosed goaio connection"):
        del conn2
        gc.collect()
    assert sock2.fileno() == -1
    assert recv_until_eof(peer2) == b""


def test_result_keeps_conn_alive(backend, svc, pairs):
    sock, peer = pairs()
    conn = svc.bind(sock)
    conn.send("s", b"x")
    del conn
    res = collect_one(svc)
    gc.collect()
    assert not res.conn.closed
    res.conn.close()
    assert recv_until_eof(peer) == b"x"


# ---------------------------------------------------------------- fd reuse

def _fd_reuse(svc, pairs, rounds):
    """Close conn A with data in flight both ways, immediately bind B on the same
    fd number: no stale event or byte of A reaches B."""
    reused = 0
    for i in range(rounds):
        a_sock, a_peer = pairs.client_first()
        a_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 << 10)
        a_peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 10)
        a = svc.bind(a_sock)
        a.recv(("A-recv", i), bytearray(64))
        a.send(("A-send", i), b"A" * (256 << 10))  # more than fits: still writing at close
        a_peer.sendall(b"a" * 4096)  # unread input on A
        fd = a.fd
        a.close()
        b_sock, b_peer = pairs.client_first()  # made first: takes the lowest free fd
        reused += b_sock.fileno() == fd
        b = svc.bind(b_sock)
        b_buf = bytearray(64)
        b.recv(("B-recv", i), b_buf)
        tag = b"B%06d" % i
        b.send(("B-send", i), tag)
        assert recv_exactly(b_peer, len(tag)) == tag, "stale bytes of A reached B's peer"
        results = {r.context[0]: r for r in collect(svc, 3)}
        ra = results["A-recv"]
        assert ra.context == ("A-recv", i)
        if ra.err is None:  # A's input may have been read before the close
            assert ra.buff[: ra.bytes_transferred] == b"a" * ra.bytes_transferred
        else:
            assert isinstance(ra.err, goaio.ConnClosed), ra.err
        assert results["A-send"].err is None or isinstance(results["A-send"].err, goaio.ConnClosed)
        assert results["B-send"].err is None
        # B's pending receive must not have completed with A's input
        assert "B-recv" not in results, f"B completed with stale data {bytes(b_buf[:8])!r}"
        b_peer.sendall(b"for B")
        res = collect_one(svc)
        assert res.context == ("B-recv", i) and res.err is None
        assert b_buf[: res.bytes_transferred] == b"for B"
        b.close()
        a_peer.close()
        b_peer.close()
    assert_no_result(svc, 0.05)
    return reused


def test_fd_reuse_no_stale_events(backend, svc, pairs):
    reused = _fd_reuse(svc, pairs, 60)
    print(f"fd number reused at once in {reused} of 60 rounds")
    assert reused > 0, "the closed fd number was never reused at once: the case was not exercised"


@pytest.mark.slow
def test_fd_reuse_no_stale_events_long(backend, svc, pairs):
    assert _fd_reuse(svc, pairs, 2000) > 0


def test_dup_of_closed_conn_fd_sends_no_stale_event(backend, svc, pairs):
    """A dup of a bound fd keeps the open file alive after conn.close(): its
    events must not reach a new connection that got the old fd number
    (EPOLL_CTL_DEL before close; epoll tracks the file, not the number)."""
    import os

    reused = 0
    for i in range(20):
        a_sock, a_peer = pairs.client_first()
        a = svc.bind(a_sock)
        dup = os.dup(a.fd)
        try:
            fd = a.fd
            a.close()
            b_sock, b_peer = pairs.client_first()
            reused += b_sock.fileno() == fd
            b = svc.bind(b_sock)
            buf = bytearray(16)
            b.recv(("B", i), buf)
            a_peer.sendall(b"stale bytes for A")  # readable on the dup, not on B
            assert_no_result(svc, 0.03)
            b_peer.sendall(b"fresh")
            res = collect_one(svc)
            assert res.context == ("B", i) and res.err is None
            assert buf[: res.bytes_transferred] == b"fresh"
            b.close()
        finally:
            os.close(dup)
        a_peer.close()
        b_peer.close()
    assert reused > 0


def test_refcounts_return_to_baseline(backend, svc, connect):
    """Contexts, buffers and connections are not leaked by completed operations."""
    import sys

    conn, peer = connect()
    ctx, buf, data = object(), bytearray(8), b"12345678"
    base = (sys.getrefcount(ctx), sys.getrefcount(buf), sys.getrefcount(data), sys.getrefcount(conn))
    for _ in range(50):
        conn.send(ctx, data)
        conn.recv(ctx, buf)
        peer.sendall(recv_exactly(peer, 8))
        results = collect(svc, 2)
        assert all(r.err is None for r in results)
        del results
    conn.set_recv_timeout(0.01)
    for _ in range(10):
        conn.recv(ctx, buf)
        assert isinstance(collect_one(svc).err, goaio.RecvTimeout)
    conn.set_recv_timeout(None)
    gc.collect()
    after = (sys.getrefcount(ctx), sys.getrefcount(buf), sys.getrefcount(data), sys.getrefcount(conn))
    assert after == base, f"refcounts {base} -> {after}"


# ---------------------------------------------------------------- default service

DEFAULT_SERVICE = r"""
import socket, sys, goaio
assert goaio.BACKEND == sys.argv[1], goaio.BACKEND
lst = socket.socket(); lst.bind(("127.0.0.1", 0)); lst.listen()
peer = socket.create_connection(lst.getsockname()); sock, _ = lst.accept(); lst.close()
peer.settimeout(10)
svc = goaio.default_service()
assert goaio.default_service() is svc
assert isinstance(svc, goaio.AIOService)
assert svc._stats()["threads"] == 1, svc._stats()
conn = goaio.bind(sock, user_data="u")
assert conn.user_data == "u"
conn.send("s", b"hi")
assert peer.recv(2) == b"hi"
res = goaio.get_complete_status(timeout=10)
assert res.context == "s" and res.err is None and res.conn is conn
assert goaio.get_complete_status(timeout=0) is None
peer.sendall(b"yo")
conn.recv("r", bytearray(2))
batch = goaio.get_complete_statuses(timeout=10)
assert [r.context for r in batch] == ["r"], batch
assert goaio.get_complete_statuses(4, timeout=0) == []
# Once closed it stays closed.
svc.close()
assert conn.closed
assert goaio.default_service() is svc
for call in (lambda: goaio.bind(socket.socket()), lambda: goaio.get_complete_status(timeout=0),
             lambda: goaio.get_complete_statuses(timeout=0)):
    try:
        call()
    except goaio.ServiceClosed:
        pass
    else:
        raise AssertionError("default service usable after close")
peer.close()
print("ok")
"""


def test_default_service(backend):
    proc = run_python(DEFAULT_SERVICE, backend_name=backend.name, argv=[backend.name])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
    assert proc.stderr == ""


def test_default_service_made_on_first_use(backend):
    proc = run_python(
        "import threading, goaio\n"
        "n = threading.active_count()\n"
        "assert goaio._default is None\n"
        "goaio.get_complete_status(timeout=0)\n"
        "assert threading.active_count() == n + 1, threading.enumerate()\n"
        "print('ok')",
        backend_name=backend.name,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


# ---------------------------------------------------------------- interpreter exit

EXIT_WITH_LIVE_SERVICE = r"""
import socket, sys, threading, goaio
lst = socket.socket(); lst.bind(("127.0.0.1", 0)); lst.listen()
peers = []
svc = goaio.AIOService(workers=2)
for i in range(4):
    peer = socket.create_connection(lst.getsockname())
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
    sock, _ = lst.accept()
    peers.append(peer)
    conn = svc.bind(sock)
    conn.recv(i, bytearray(16))
    conn.send(i, b"x" * (8 << 20))   # pending: nobody reads
    conn.set_recv_timeout(30)
peers.append(socket.create_connection(lst.getsockname()))
idle_conn = svc.bind(lst.accept()[0])   # idle, still referenced at exit
dflt = goaio.bind(socket.create_connection(lst.getsockname()))   # the default service too
dflt.recv("d", bytearray(4))
peers.append(lst.accept()[0])
threading.Thread(target=lambda: list(svc), daemon=True).start()   # a blocked collector
def blocked():
    try:
        svc.get_complete_status()
    except goaio.ServiceClosed:
        pass
threading.Thread(target=blocked, daemon=True).start()
lst.close()
for p in peers:
    p.close()
"""


@pytest.mark.parametrize("args", [(), ("-X", "dev")], ids=["plain", "dev-mode"])
def test_interpreter_exit_with_live_service(backend, args):
    t0 = time.monotonic()
    proc = run_python(EXIT_WITH_LIVE_SERVICE, backend_name=backend.name, args=args, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr == ""
    assert time.monotonic() - t0 < 15


def test_interpreter_exit_with_closed_and_open_services(backend):
    code = textwrap.dedent("""
        import goaio
        a = goaio.AIOService(); a.close()
        b = goaio.AIOService(workers=3)
        c = goaio.AIOService(0)
    """)
    proc = run_python(code, backend_name=backend.name, args=("-X", "dev"), timeout=30)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def test_import_prints_nothing(backend):
    proc = run_python("import goaio", backend_name=backend.name, args=("-X", "dev", "-W", "error"))
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
