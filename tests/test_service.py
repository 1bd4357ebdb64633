"""AIOService: workers, collecting (single, batch, poll, many threads), Busy, leaks."""

import gc
import threading
import time

import pytest

import goaio
from support import (
    close_service,
    WAIT,
    Reader,
    assert_no_result,
    assert_service_drained,
    collect,
    collect_one,
    fd_count,
    recv_exactly,
    wait_until,
)


# ---------------------------------------------------------------- workers

def _service_threads(backend, workers):
    base = threading.active_count()
    svc = backend.AIOService(workers=workers)
    try:
        return threading.active_count() - base, svc._stats()["threads"]
    finally:
        close_service(svc)
        assert_service_drained(svc)


def test_workers_zero_is_one(backend):
    assert _service_threads(backend, 0) == _service_threads(backend, 1)


def test_workers_count(backend):
    one_active, one_stats = _service_threads(backend, 1)
    three_active, three_stats = _service_threads(backend, 3)
    assert three_active - one_active == 2
    assert three_stats - one_stats == 2


def test_default_workers_is_one(backend):
    svc = backend.AIOService()
    try:
        default = svc._stats()["threads"]
    finally:
        close_service(svc)
    assert default == _service_threads(backend, 1)[1]


@pytest.mark.parametrize("bad, exc", [(-1, ValueError), (-100, ValueError), ("2", TypeError),
                                      (1.0, TypeError), (None, TypeError), (True, TypeError)])
def test_workers_bad(backend, bad, exc):
    base = threading.active_count()
    with pytest.raises(exc):
        backend.AIOService(workers=bad)
    assert threading.active_count() == base


def test_workers_share_the_load(backend, pairs):
    """With several workers, IO progresses while nobody collects."""
    with backend.AIOService(workers=3) as svc:
        ps = [pairs() for _ in range(6)]
        conns = [svc.bind(s) for s, _ in ps]
        data = b"w" * (1 << 20)
        readers = [Reader(peer, len(data)) for _, peer in ps]
        for c in conns:
            c.send("s", data)
        for r in readers:  # no collector: the workers write
            assert r.result() == data
        assert len(collect(svc, 6)) == 6


# ---------------------------------------------------------------- collecting

def test_get_complete_status_timeout_returns_none(backend, svc):
    t0 = time.monotonic()
    assert svc.get_complete_status(timeout=0.2) is None
    elapsed = time.monotonic() - t0
    assert 0.2 - 0.0005 <= elapsed < 0.4, elapsed


def test_get_complete_statuses_timeout_returns_empty_list(backend, svc):
    t0 = time.monotonic()
    assert svc.get_complete_statuses(8, timeout=0.2) == []
    elapsed = time.monotonic() - t0
    assert 0.2 - 0.0005 <= elapsed < 0.4, elapsed


def test_timeout_zero_polls(backend, svc, connect):
    t0 = time.monotonic()
    for _ in range(100):
        assert svc.get_complete_status(timeout=0) is None
        assert svc.get_complete_statuses(10, timeout=0) == []
    assert time.monotonic() - t0 < 0.5
    conn, peer = connect()
    conn.send("s", b"x")
    assert recv_exactly(peer, 1) == b"x"
    deadline = time.monotonic() + WAIT
    res = None
    while res is None and time.monotonic() < deadline:
        res = svc.get_complete_status(timeout=0)  # polling alone must make progress
        time.sleep(0.001)
    assert res is not None and res.context == "s"


def test_timeout_zero_poll_does_io(backend, svc, connect):
    """A thread that only polls with timeout=0 still sees receives complete."""
    conn, peer = connect()
    conn.recv("r", bytearray(4))
    peer.sendall(b"poll")
    deadline = time.monotonic() + WAIT
    got = []
    while not got and time.monotonic() < deadline:
        got = svc.get_complete_statuses(4, timeout=0)
    assert [r.context for r in got] == ["r"]


@pytest.mark.parametrize("bad", [-1, -0.001, float("-inf")])
def test_negative_timeouts_are_value_error(backend, svc, bad):
    with pytest.raises(ValueError):
        svc.get_complete_status(timeout=bad)
    with pytest.raises(ValueError):
        svc.get_complete_statuses(4, timeout=bad)


def test_bad_timeout_types(backend, svc):
    for bad in ("1", [1]):
        with pytest.raises(TypeError):
            svc.get_complete_status(timeout=bad)
        with pytest.raises(TypeError):
            svc.get_complete_statuses(4, timeout=bad)


@pytest.mark.parametrize("bad, exc", [(0, ValueError), (-1, ValueError), ("4", TypeError), (2.0, TypeError)])
def test_max_results_checks(backend, svc, bad, exc):
    with pytest.raises(exc):
        svc.get_complete_statuses(bad, timeout=0)


def test_get_complete_statuses_batches(backend, svc, connect):
    conn, peer = connect()
    for i in range(10):
        conn.send(i, b"%02d" % i)
    assert recv_exactly(peer, 20) == b"".join(b"%02d" % i for i in range(10))
    wait_until(lambda: svc.stats()["queued_results"] == 10, msg="the ten completions queued")
    b1 = svc.get_complete_statuses(max_results=4, timeout=1)
    b2 = svc.get_complete_statuses(max_results=4, timeout=1)
    b3 = svc.get_complete_statuses(max_results=4, timeout=1)
    assert [len(b) for b in (b1, b2, b3)] == [4, 4, 2]
    assert [r.context for r in b1 + b2 + b3] == list(range(10))
    assert all(isinstance(r, backend.AIOResult) for r in b1)
    assert svc.get_complete_statuses(max_results=4, timeout=0) == []


def test_get_complete_statuses_returns_when_first_result_arrives(backend, svc, connect):
    conn, peer = connect()
    conn.recv("r", bytearray(4))

    def later():
        time.sleep(0.2)
        peer.sendall(b"ping")

    threading.Thread(target=later).start()
    t0 = time.monotonic()
    batch = svc.get_complete_statuses(max_results=64, timeout=5)
    assert [r.context for r in batch] == ["r"]
    assert time.monotonic() - t0 < 2


def test_default_max_results_is_64(backend, svc, connect):
    conn, peer = connect(sendq_size=100)
    for i in range(100):
        conn.send(i, b"y")
    recv_exactly(peer, 100)
    wait_until(lambda: svc.stats()["queued_results"] == 100, msg="the hundred completions queued")
    first = svc.get_complete_statuses(timeout=1)
    assert len(first) == 64
    rest = collect(svc, 36)
    assert [r.context for r in first + rest] == list(range(100))


def test_iterating_a_service(backend, svc, connect):
    conn, peer = connect()
    for i in range(5):
        conn.send(i, b"z")
    seen = []
    for res in svc:
        seen.append(res.context)
        if len(seen) == 5:
            break
    assert seen == list(range(5))


def test_result_fields(backend, svc, connect):
    conn, peer = connect()
    ctx = object()
    buf = bytearray(3)
    peer.sendall(b"abc")
    conn.recv(ctx, buf)
    res = collect_one(svc)
    assert isinstance(res, backend.AIOResult)
    assert res.conn is conn
    assert res.context is ctx
    assert res.buff is buf
    assert res.bytes_transferred == 3
    assert res.err is None


def test_several_collector_threads_exactly_once(backend, pairs):
    n_conns, per_conn = 20, 50
    with backend.AIOService(workers=2) as svc:
        ps = [pairs() for _ in range(n_conns)]
        conns = [svc.bind(s, sendq_size=per_conn) for s, _ in ps]
        readers = [Reader(peer, per_conn * 4) for _, peer in ps]
        got = []
        lock = threading.Lock()
        stop = threading.Event()
        total = n_conns * per_conn

        def collector(batch):
            while not stop.is_set():
                if batch:
                    rs = svc.get_complete_statuses(7, timeout=0.05)
                else:
                    r = svc.get_complete_status(timeout=0.05)
                    rs = [] if r is None else [r]
                with lock:
                    got.extend(r.context for r in rs)
                    if len(got) >= total:
                        stop.set()

        ts = [threading.Thread(target=collector, args=(i % 2,)) for i in range(4)]
        for t in ts:
            t.start()
        for k in range(per_conn):
            for i, c in enumerate(conns):
                c.send((i, k), b"%04d" % k)
        stop.wait(WAIT * 2)
        stop.set()
        for t in ts:
            t.join(WAIT)
        assert len(got) == total, f"{len(got)} of {total}"
        assert len(set(got)) == total, "a result was delivered twice"
        for r in readers:
            assert r.result() == b"".join(b"%04d" % k for k in range(per_conn))
        assert svc.get_complete_status(timeout=0.1) is None


def test_collectors_honour_their_timeouts(backend, svc):
    out = []

    def collector():
        t0 = time.monotonic()
        r = svc.get_complete_status(timeout=0.3)
        out.append((r, time.monotonic() - t0))

    ts = [threading.Thread(target=collector) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(WAIT)
    assert len(out) == 4
    for r, elapsed in out:
        assert r is None and 0.3 - 0.0005 <= elapsed < 0.6, elapsed


def test_methods_callable_from_inside_handler_loop(backend, svc, pairs, bind):
    """An echo server: posting from the collecting loop."""
    ps = [pairs() for _ in range(10)]
    conns = [bind(s) for s, _ in ps]
    for c in conns:
        c.recv("r", bytearray(64))
    for i, (_, peer) in enumerate(ps):
        peer.sendall(b"msg %d" % i)
    echoed = 0
    while echoed < 10:
        res = collect_one(svc)
        assert res.err is None
        if res.context == "r":
            res.conn.send("s", res.buff[: res.bytes_transferred])
        else:
            echoed += 1
    for i, (_, peer) in enumerate(ps):
        assert recv_exactly(peer, len(b"msg %d" % i)) == b"msg %d" % i


# ---------------------------------------------------------------- Busy

def test_busy_when_recv_queue_full(backend, svc, connect):
    conn, peer = connect(recvq_size=2)
    conn.recv(1, bytearray(1))
    conn.recv(2, bytearray(1))
    with pytest.raises(goaio.Busy):
        conn.recv(3, bytearray(1))
    with pytest.raises(goaio.Busy):
        conn.recv_full(3, bytearray(1))
    with pytest.raises(goaio.Busy):
        conn.recv(3)
    peer.sendall(b"a")
    assert collect_one(svc).context == 1
    conn.recv(4, bytearray(1))  # a slot is free again
    peer.sendall(b"bc")
    assert [r.context for r in collect(svc, 2)] == [2, 4]
    assert_no_result(svc)


def test_default_queue_sizes_are_32(backend, svc, connect):
    conn, peer = connect(small=True)
    for i in range(32):
        conn.recv(i, bytearray(1))
    with pytest.raises(goaio.Busy):
        conn.recv(32, bytearray(1))
    conn.send("big", b"B" * (8 << 20))  # pends: the peer does not read
    for i in range(31):
        conn.send(i, b"s")
    with pytest.raises(goaio.Busy):
        conn.send("one too many", b"s")


def test_busy_when_send_queue_full(backend, svc, connect):
    conn, peer = connect(small=True, sendq_size=1)
    conn.send("big", b"B" * (4 << 20))
    with pytest.raises(goaio.Busy):
        conn.send("next", b"x")
    with pytest.raises(goaio.Busy):
        conn.send("empty", b"")
    reader = Reader(peer, 4 << 20)
    res = collect_one(svc)
    assert res.context == "big" and res.err is None
    assert len(reader.result()) == 4 << 20
    conn.send("after", b"ok")
    assert collect_one(svc).err is None
    assert recv_exactly(peer, 2) == b"ok"


def test_completed_uncollected_ops_free_their_slot(backend, svc, connect):
    """Queue limits count pending operations, not completed ones waiting to be collected."""
    conn, peer = connect(sendq_size=1)
    for i in range(5):
        conn.send(i, b"x")
        recv_exactly(peer, 1)
        wait_until(lambda: svc._stats()["live_ops"] == 0, msg="send completed")
    assert [r.context for r in collect(svc, 5)] == list(range(5))


# ---------------------------------------------------------------- leaks

def _cycle(backend, pairs):
    pool = backend.BufferPool(256)
    svc = backend.AIOService(workers=2)
    sock, peer = pairs()
    conn = svc.bind(sock, share_buff=pool)
    conn.recv("r")
    conn.recv("r2", bytearray(4))
    conn.send("s", b"hello")
    conn.set_recv_timeout(5)
    close_service(svc)
    peer.close()
    assert pool.outstanding == 0
    assert_service_drained(svc)


def test_no_thread_or_fd_leak_over_100_cycles(backend, pairs):
    _cycle(backend, pairs)  # warm up lazy imports/allocations
    gc.collect()
    fds, before = fd_count(), set(threading.enumerate())
    for _ in range(100):
        # each cycle checks that its closed service has no thread left
        _cycle(backend, pairs)
    gc.collect()

    # The threads that appeared since, by identity (a count would be thrown
    # off by a thread of an earlier test ending meanwhile); the bounded wait
    # is for a loaded machine only: each cycle has already checked, at once,
    # that its closed service had joined its own threads.
    def new_threads():
        return [t for t in threading.enumerate() if t not in before and t.is_alive()]

    deadline = time.monotonic() + WAIT
    while new_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert new_threads() == []
    # each cycle's peer is closed; its bound socket closed by the service
    assert fd_count() <= fds + 2, f"fds {fds} -> {fd_count()}"


def test_no_fd_leak_over_many_connections(backend, svc, pairs, bind):
    gc.collect()
    base = fd_count()
    for _ in range(200):
        sock, peer = pairs()
        conn = bind(sock)
        conn.recv("r", bytearray(8))
        peer.sendall(b"x")
        collect_one(svc)
        conn.close()
        peer.close()
    gc.collect()
    assert fd_count() <= base + 2, f"fds {base} -> {fd_count()}"
    assert svc._stats()["conns"] == 0


def test_service_threads_are_daemons(backend):
    before = set(threading.enumerate())
    svc = backend.AIOService(workers=3)
    try:
        new = [t for t in threading.enumerate() if t not in before]
        assert len(new) >= 3
        assert all(t.daemon for t in new), [t for t in new if not t.daemon]
    finally:
        close_service(svc)


def test_timeouts_fire_while_nobody_collects(backend, svc, connect):
    conn, _peer = connect()
    conn.set_recv_timeout(0.1)
    conn.recv("r", bytearray(4))
    time.sleep(0.4)
    t0 = time.monotonic()
    res = svc.get_complete_status(timeout=0)
    assert res is not None, "the timeout did not fire while nobody was collecting"
    assert isinstance(res.err, goaio.RecvTimeout)
    assert time.monotonic() - t0 < 0.05


def test_many_completions_while_nobody_collects(backend, svc, pairs, bind):
    """Thousands of operations complete with no collector: nothing dropped, each once."""
    ps = [pairs() for _ in range(10)]
    conns = [bind(s, sendq_size=32, recvq_size=32) for s, _ in ps]
    n = 0
    for rnd in range(16):
        for i, c in enumerate(conns):
            c.send((i, rnd), b"%d.%d;" % (i, rnd))
            c.recv((i, "r", rnd), bytearray(1))
            n += 2
    for i, (_, peer) in enumerate(ps):
        expect = b"".join(b"%d.%d;" % (i, rnd) for rnd in range(16))
        assert recv_exactly(peer, len(expect)) == expect
        peer.sendall(b"r" * 16)
    wait_until(lambda: svc._stats()["live_ops"] == 0, msg="every op completed without a collector")
    results = collect(svc, n)
    assert len({r.context for r in results}) == n
    assert_no_result(svc, 0.05)


def test_timeouts_on_many_connections_cost_no_thread(backend, svc, pairs, bind):
    conns = [bind(s) for s, _ in pairs.many(500)]
    base = threading.active_count()
    for i, c in enumerate(conns):
        c.set_recv_timeout(5)
        c.set_send_timeout(5)
        c.recv(i, bytearray(1))
    time.sleep(0.1)
    assert threading.active_count() == base


FORK_CHILD = r"""
import os, socket, sys, warnings
warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads running
import goaio

def pair():
    lst = socket.socket(); lst.bind(("127.0.0.1", 0)); lst.listen()
    peer = socket.create_connection(lst.getsockname()); sock, _ = lst.accept(); lst.close()
    peer.settimeout(10)
    return sock, peer

def echo_once(svc, tag):
    sock, peer = pair()
    conn = svc.bind(sock)
    conn.recv("r", bytearray(16))
    peer.sendall(tag)
    res = svc.get_complete_status(timeout=10)
    assert res is not None and res.err is None and res.buff[:len(tag)] == tag, res
    conn.send("s", tag)
    res = svc.get_complete_status(timeout=10)
    assert res is not None and res.err is None, res
    assert peer.recv(16) == tag
    conn.close(); peer.close()

svc = goaio.AIOService(workers=2)
sock, peer = pair()
parent_conn = svc.bind(sock)
parent_conn.recv("parent", bytearray(16))   # pending across the fork
pid = os.fork()
if pid == 0:
    try:
        # the inherited service counts as closed in the child
        for call in (lambda: svc.get_complete_status(timeout=0), lambda: svc.bind(pair()[0]),
                     lambda: parent_conn.recv("x", bytearray(1))):
            try:
                call()
            except goaio.ServiceClosed:
                pass
            else:
                raise AssertionError("inherited service usable in the child")
        fresh = goaio.AIOService()
        echo_once(fresh, b"child")
        fresh.close()
        os._exit(0)
    except BaseException as exc:
        print("child failed:", repr(exc), file=sys.stderr, flush=True)
        os._exit(1)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
peer.sendall(b"after fork")
res = svc.get_complete_status(timeout=10)
assert res is not None and res.context == "parent" and res.err is None, res
assert res.buff[:10] == b"after fork"
echo_once(svc, b"parent")
svc.close(); peer.close()
print("ok")
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no fork")
def test_fork_with_live_service(backend):
    """A child can use a fresh service; the parent's service is undisturbed by the fork."""
    from support import run_python

    proc = run_python(FORK_CHILD, backend_name=backend.name, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
