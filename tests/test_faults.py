"""Fault injection: signal storms, peer resets, EPIPE, EMFILE, fd reuse, timeout races.

Every test runs on every backend (the ``backend`` fixture). The quick versions
run in the default suite; ``-m slow`` runs the long ones (many more rounds).
Figures (signals delivered, rounds, fds reused, races won by each side) are
printed; ``pytest -s`` or ``-rP`` shows them.
"""

import array
import contextlib
import json
import queue
import random
import signal
import socket
import threading
import time

import pytest

import goaio
from support import (
    close_service,
    extend_hang_guard,
    WAIT,
    LINUX,
    Pairs,
    Reader,
    assert_no_result,
    collect,
    family_available,
    recv_exactly,
    reset,
    run_python,
)

TCP_FAMILIES = [f for f in ("tcp", "tcp6") if family_available(f)]
ALL_FAMILIES = [f for f in ("tcp", "tcp6", "unix") if family_available(f)]


@pytest.fixture
def service(backend, pairs):
    """A two-worker service, closed (and checked drained) at teardown."""
    s = backend.AIOService(2)
    yield s
    close_service(s)
    st = s._stats()
    assert (st["live_ops"], st["conns"], st["threads"]) == (0, 0, 0), st


# ====================================================================== EINTR

@contextlib.contextmanager
def itimer_storm(interval=0.0001):
    """SIGALRM every ``interval`` seconds (ITIMER_REAL) with a Python handler.

    pytest-timeout uses the same timer: what is left of its alarm is re-armed
    afterwards.
    """
    hits = [0]

    def handler(signum, frame):
        hits[0] += 1

    old_handler = signal.signal(signal.SIGALRM, handler)
    t0 = time.monotonic()
    old_timer = signal.setitimer(signal.ITIMER_REAL, interval, interval)
    try:
        yield hits
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        time.sleep(0.01)    # a SIGALRM already on its way lands on ours, not pytest-timeout's
        signal.signal(signal.SIGALRM, old_handler)
        if old_timer[0] > 0:
            left = max(old_timer[0] - (time.monotonic() - t0), 0.01)
            signal.setitimer(signal.ITIMER_REAL, left, old_timer[1])


class Writer(threading.Thread):
    """Sends ``data`` on a blocking peer socket in random pieces."""

    def __init__(self, sock, data, seed):
        super().__init__(daemon=True)
        self.sock, self.data, self.rnd = sock, data, random.Random(seed)
        self.error = None
        self.start()

    def run(self):
        try:
            self.sock.settimeout(WAIT * 3)
            i = 0
            while i < len(self.data):
                j = min(len(self.data), i + self.rnd.randint(1, 96 * 1024))
                self.sock.sendall(self.data[i:j])
                i = j
        except BaseException as exc:
            self.error = exc

    def result(self):
        self.join(WAIT * 3)
        assert not self.is_alive(), "peer writer stuck"
        if self.error is not None:
            raise self.error


def _recv_buffer(rnd, size):
    """A receive buffer of ``size`` bytes of a random kind, and a function
    giving its first ``n`` bytes."""
    kind = rnd.randrange(4)
    if kind == 0:
        b = bytearray(size)
        return b, lambda n: bytes(b[:n])
    if kind == 1:
        base = bytearray(size + 16)
        return memoryview(base)[8:8 + size], lambda n: bytes(base[8:8 + n])
    if kind == 2:
        a = array.array("B", bytes(size))
        return a, lambda n: a.tobytes()[:n]
    cuts = sorted([rnd.randint(0, size), rnd.randint(0, size)])
    parts = [bytearray(cuts[0]), bytearray(cuts[1] - cuts[0]), bytearray(size - cuts[1])]
    return parts, lambda n: b"".join(bytes(p) for p in parts)[:n]


def _send_buffer(rnd, data):
    kind = rnd.randrange(4)
    if kind == 0:
        return data
    if kind == 1:
        return bytearray(data)
    if kind == 2:
        return memoryview(data)
    cut = rnd.randint(0, len(data))
    return [data[:cut], bytearray(data[cut:])]


def _duplex_traffic(svc, conns, nbytes, seed, collect_here=True):
    """Full duplex on every ``(conn, peer)``: ``nbytes`` each way in random
    pieces and buffer kinds, both checked byte for byte. Results are collected
    by this thread, or (``collect_here=False``) by two collector threads."""
    rnd = random.Random(seed)
    state = {}
    readers, writers = [], []
    for i, (conn, peer) in enumerate(conns):
        out = rnd.randbytes(nbytes)
        inp = rnd.randbytes(nbytes)
        readers.append(Reader(peer, nbytes))
        writers.append(Writer(peer, inp, seed + i))
        state[conn] = {"out": out, "inp": inp, "sent": 0, "got": bytearray(), "posted": 0,
                       "pending_recv": 0, "pending_send": 0, "reserved": 0, "rseq": 0, "pieces": {}}
    lock = threading.Lock()

    def post_more(conn):
        s = state[conn]
        while s["pending_send"] < 4 and s["posted"] < nbytes:
            size = min(nbytes - s["posted"], rnd.randint(1, 128 * 1024))
            chunk = s["out"][s["posted"]:s["posted"] + size]
            conn.send(("s", s["posted"], size), _send_buffer(rnd, chunk))
            s["posted"] += size
            s["pending_send"] += 1
        # the pending receives never ask for more than is left of the stream,
        # so every one of them (recv_full too) completes
        while s["pending_recv"] < 3 and nbytes - len(s["got"]) - s["reserved"] > 0:
            size = min(rnd.randint(1, 64 * 1024), nbytes - len(s["got"]) - s["reserved"])
            buf, data = _recv_buffer(rnd, size)
            full = rnd.random() < 0.3
            (conn.recv_full if full else conn.recv)(("r", data, full, size, s["rseq"]), buf)
            s["rseq"] += 1
            s["pending_recv"] += 1
            s["reserved"] += size

    def handle(res):
        s = state[res.conn]
        assert res.err is None, res.err
        if res.context[0] == "s":
            _, off, size = res.context
            assert res.bytes_transferred == size
            s["sent"] += size
            s["pending_send"] -= 1
        else:
            # several collectors may handle the results of one connection in
            # any order: the pieces are put together by posting order
            _, data, full, size, seq = res.context
            n = res.bytes_transferred
            assert n >= 1 and (n == size if full else n <= size)
            s["pieces"][seq] = data(n)
            s["got"] += b"\0" * n
            s["pending_recv"] -= 1
            s["reserved"] -= size
        post_more(res.conn)

    def done():
        return all(len(s["got"]) >= nbytes and s["sent"] == nbytes for s in state.values())

    deadline = time.monotonic() + WAIT * 3
    with lock:
        for conn, _ in conns:
            post_more(conn)
    if collect_here:
        while not done():
            assert time.monotonic() < deadline, "duplex traffic stuck"
            for res in svc.get_complete_statuses(64, timeout=0.5):
                handle(res)
    else:
        errors = []

        def collector():
            # a new thread inherits its creator's mask (SIGALRM blocked in
            # the main thread): unblocked here, the storm reaches this thread
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})
            try:
                while not done() and time.monotonic() < deadline:
                    batch = svc.get_complete_statuses(16, timeout=0.05)
                    with lock:
                        for res in batch:
                            handle(res)
            except BaseException as exc:  # reported below
                errors.append(exc)

        ts = [threading.Thread(target=collector, daemon=True) for _ in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(WAIT * 3)
        assert not any(t.is_alive() for t in ts), "collector stuck"
        if errors:
            raise errors[0]
        assert done(), "duplex traffic stuck"
    for (conn, peer), r, w in zip(conns, readers, writers):
        s = state[conn]
        w.result()
        assert r.result() == s["out"], "the peer did not receive the exact stream"
        got = b"".join(s["pieces"][k] for k in sorted(s["pieces"]))
        assert got == s["inp"], "goaio did not receive the exact stream"
    # outstanding receives posted beyond the stream: none (post_more bounds them)
    return 2 * nbytes * len(conns)


def _eintr_storm(svc, pairs, seconds):
    conns = [(svc.bind(s), p) for s, p in (pairs(f) for f in ALL_FAMILIES * 2)]
    nbytes = 1 << 20
    moved = rounds = 0
    with itimer_storm() as hits:
        # the main thread collects (and polls, and does the IO itself)
        end = time.monotonic() + seconds / 2
        while time.monotonic() < end or rounds < 2:
            moved += _duplex_traffic(svc, conns, nbytes, seed=rounds)
            rounds += 1
        main_hits = hits[0]
        # SIGALRM blocked in the main thread: it lands in the collector
        # threads (which unblock it) and the service threads, inside their
        # system calls
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        try:
            end = time.monotonic() + seconds / 2
            while time.monotonic() < end or rounds < 4:
                moved += _duplex_traffic(svc, conns, nbytes, seed=rounds, collect_here=False)
                rounds += 1
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
    assert_no_result(svc, 0.05)
    for conn, _ in conns:
        conn.close()
    return hits[0], main_hits, moved, rounds


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="no setitimer")
def test_eintr_storm_itimer_real(backend, service, pairs):
    """SIGALRM every 100 us with a Python handler during full-duplex traffic on
    six connections (tcp, tcp6, unix): byte-exact both ways. First the main
    thread collects; then it blocks SIGALRM so that the signals interrupt the
    collector and service threads."""
    hits, main_hits, moved, rounds = _eintr_storm(service, pairs, 3.0)
    print(f"EINTR storm: {hits} SIGALRM handled ({main_hits} while the main thread collected), "
          f"{rounds} rounds, {moved} bytes checked")
    assert main_hits > 100 and hits > main_hits


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="no setitimer")
def test_eintr_storm_long(backend, service, pairs):
    extend_hang_guard(900)
    hits, main_hits, moved, rounds = _eintr_storm(service, pairs, 120.0)
    print(f"EINTR storm: {hits} SIGALRM handled ({main_hits} while the main thread collected), "
          f"{rounds} rounds, {moved} bytes checked")


# ====================================================================== resets

def _reset_round(svc, pairs, rnd, family, pool):
    """A connection in the middle of a large transfer both ways; the peer reads
    a random amount, sends a random amount, then resets."""
    sock, peer = pairs(family, small=True)
    conn = svc.bind(sock, share_buff=pool)
    big = rnd.randbytes(rnd.choice([256 << 10, 1 << 20, 4 << 20]))
    conn.send("big", big)
    conn.send("tail", [b"t" * 1000, bytearray(b"u" * 1000)])
    recvs = []
    for i in range(rnd.randint(1, 4)):
        kind = rnd.randrange(3)
        if kind == 0:
            b = bytearray(rnd.randint(1, 5000))
            conn.recv(("r", i), b)
        elif kind == 1:
            b = bytearray(rnd.randint(1, 5000))
            conn.recv_full(("r", i), b)
        else:
            b = None
            conn.recv(("r", i), None)
        recvs.append(b)
    to_read = rnd.randint(0, min(len(big), 300 << 10))
    got = recv_exactly(peer, to_read) if to_read else b""
    assert got == big[:to_read]
    sent_by_peer = rnd.randbytes(rnd.choice([0, 1, 100, 4000]))
    if sent_by_peer:
        peer.sendall(sent_by_peer)
    if rnd.random() < 0.5:
        time.sleep(rnd.random() * 0.002)
    reset(peer)
    results = {r.context: r for r in collect(svc, 2 + len(recvs))}
    assert len(results) == 2 + len(recvs), "an operation completed twice"
    rbig, rtail = results["big"], results["tail"]
    errs = []
    if rbig.err is None:
        # the whole buffer fit in the kernel before the reset (small sends)
        assert rbig.bytes_transferred == len(big)
    else:
        assert isinstance(rbig.err, (ConnectionResetError, BrokenPipeError)), rbig.err
        assert to_read <= rbig.bytes_transferred < len(big)
        errs.append(rbig.err)
        assert rtail.err is not None, "a send completed after the one the reset failed"
    if rtail.err is not None:
        assert isinstance(rtail.err, (ConnectionResetError, BrokenPipeError)), rtail.err
        errs.append(rtail.err)
    # receives: exactly the bytes the peer sent, in order, then errors
    received = bytearray()
    failed = False
    for i, b in enumerate(recvs):
        res = results[("r", i)]
        n = res.bytes_transferred
        buf = res.buff if b is None else b
        if buf is not None:
            received += bytes(memoryview(buf)[:n])
        if res.err is None:
            assert not failed, "a receive succeeded after one failed"
            if b is None and pool is not None:
                pool.release(res.buff)
        else:
            failed = True
            assert isinstance(res.err, (ConnectionResetError, EOFError)), res.err
            errs.append(res.err)
            if b is None:
                assert res.buff is None
    assert bytes(received) == sent_by_peer[:len(received)], "received bytes are not what the peer sent"
    if failed:
        assert bytes(received) == sent_by_peer, "bytes the peer sent before its reset were lost"
    if errs:
        assert any(isinstance(e, ConnectionResetError) for e in errs), (
            f"the reset was never reported as ConnectionResetError: {errs!r}")
    # errors are not sticky: the kernel now says EOF / EPIPE
    conn.recv("after-r", bytearray(10))
    conn.send("after-s", b"x")
    after = {r.context: r for r in collect(svc, 2)}
    if len(received) == len(sent_by_peer):
        assert isinstance(after["after-r"].err, (EOFError, ConnectionResetError)), after["after-r"].err
    assert isinstance(after["after-s"].err, (BrokenPipeError, ConnectionResetError)), after["after-s"].err
    conn.close()
    return len(big) + len(sent_by_peer)


def _resets(svc, pairs, pool, rounds):
    rnd = random.Random(5)
    moved = 0
    for i in range(rounds):
        moved += _reset_round(svc, pairs, rnd, TCP_FAMILIES[i % len(TCP_FAMILIES)], pool if i % 2 else None)
    assert_no_result(svc, 0.05)
    assert pool.outstanding == 0, pool
    return moved


def test_peer_resets_mid_transfer(backend, svc, pairs):
    pool = backend.BufferPool(1024)
    moved = _resets(svc, pairs, pool, 100)
    print(f"peer resets: 100 rounds, {moved} bytes in flight")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_peer_resets_mid_transfer_long(backend, svc, pairs):
    extend_hang_guard(900)
    pool = backend.BufferPool(1024)
    moved = _resets(svc, pairs, pool, 1000)
    print(f"peer resets: 1000 rounds, {moved} bytes in flight")


# ====================================================================== EPIPE

EPIPE_CHILD = r"""
import importlib, json, os, signal, socket, struct, sys, tempfile, time
signal.signal(signal.SIGPIPE, signal.SIG_DFL)
mod = importlib.import_module("goaio._" + sys.argv[1])
families = sys.argv[2].split(",")
tmp = tempfile.mkdtemp()

def pair(fam):
    if fam == "unix":
        path = os.path.join(tmp, "l%d" % time.monotonic_ns())
        lst = socket.socket(socket.AF_UNIX); lst.bind(path)
    elif fam == "tcp6":
        lst = socket.socket(socket.AF_INET6); lst.bind(("::1", 0))
    else:
        lst = socket.socket(); lst.bind(("127.0.0.1", 0))
    lst.listen()
    peer = socket.socket(lst.family); peer.connect(lst.getsockname())
    sock, _ = lst.accept(); lst.close()
    return sock, peer

svc = mod.AIOService(2)
errs = {}
ops = 0
for fam in families:
    for mode in range(6):
        sock, peer = pair(fam)
        conn = svc.bind(sock)
        # some sends are already queued (and partly written) when the peer dies
        if mode >= 3:
            conn.send("pre-big", b"p" * (8 << 20))
            conn.send("pre-list", [b"a" * 1000, bytearray(2000), memoryview(b"c" * 3000)])
            ops += 2
        if fam != "unix":
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()
        for i in range(20):
            if i % 3 == 0:
                conn.send(i, b"x" * 65536)
            elif i % 3 == 1:
                conn.send(i, [b"y" * 100, bytearray(b"z" * 70000), b"w"])
            else:
                conn.send(i, memoryview(bytearray(5)))
            ops += 1
        conn.recv("r", bytearray(4))
        ops += 1
        seen = 0
        want = 21 + (2 if mode >= 3 else 0)
        while seen < want:
            res = svc.get_complete_status(timeout=10)
            assert res is not None, "an operation on a dead peer never completed"
            seen += 1
            if res.err is not None:
                k = fam + ":" + type(res.err).__name__
                errs[k] = errs.get(k, 0) + 1
        conn.close()
assert svc.get_complete_status(timeout=0.05) is None
svc.close()
print(json.dumps({"ops": ops, "errors": errs}))
"""


@pytest.mark.skipif(not hasattr(signal, "SIGPIPE"), reason="no SIGPIPE here")
def test_epipe_with_default_sigpipe(backend):
    """SIGPIPE at SIG_DFL, sends (single, gather, large, queued before the peer
    died) to dead peers of every family: error completions, the process lives."""
    proc = run_python(EPIPE_CHILD, argv=[backend.name, ",".join(ALL_FAMILIES)], timeout=120)
    assert proc.returncode != -signal.SIGPIPE, "killed by SIGPIPE"
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"EPIPE: {out}")
    for fam in ALL_FAMILIES:
        assert out["errors"].get(f"{fam}:BrokenPipeError", 0) > 0, out
    assert set(k.split(":")[1] for k in out["errors"]) <= {
        "BrokenPipeError", "ConnectionResetError", "EOFError"}, out


# ====================================================================== EMFILE

EMFILE_CHILD = r"""
import errno, importlib, json, os, resource, socket, sys
mod = importlib.import_module("goaio._" + sys.argv[1])
report = {}
svc = mod.AIOService(2)
lst = socket.socket(); lst.bind(("127.0.0.1", 0)); lst.listen(512)
addr = lst.getsockname()
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
used = len(os.listdir("/proc/self/fd"))
resource.setrlimit(resource.RLIMIT_NOFILE, (used + 60, hard))
pairs = []          # (conn, client)
fail = None
while True:
    try:
        c = socket.create_connection(addr, timeout=5)
    except OSError as e:
        fail = ("connect", e.errno)
        break
    try:
        s, _ = lst.accept()
    except OSError as e:
        fail = ("accept", e.errno)
        c.close()
        break
    pairs.append((svc.bind(s), c))
report["at_limit"] = fail
report["pairs"] = len(pairs)
assert fail[1] == errno.EMFILE, fail
# at the limit: a new service fails clearly; accept fails clearly
spare = []
try:
    while True:   # use up any fd left
        spare.append(socket.socket())
except OSError as e:
    assert e.errno == errno.EMFILE, e
# one connection waits in the listen backlog while no fd is free
spare.pop().close()
pend_client = socket.create_connection(addr, timeout=5)
try:
    socket.socket()
    raise AssertionError("a socket was created beyond the limit")
except OSError as e:
    assert e.errno == errno.EMFILE, e
try:
    mod.AIOService(1)
    report["service_at_limit"] = "created"
except OSError as e:
    report["service_at_limit"] = errno.errorcode.get(e.errno, e.errno)
lst.settimeout(5)
try:
    lst.accept()
    report["accept_at_limit"] = "accepted"
except OSError as e:
    report["accept_at_limit"] = errno.errorcode.get(e.errno, str(e))
# the existing connections still work at the limit
def pingpong(conns, tag):
    for i, (conn, c) in enumerate(conns):
        msg = b"%s-%d" % (tag, i)
        conn.send(("s", i), msg)
        buf = bytearray(len(msg))
        conn.recv_full(("r", i, bytes(msg)), buf)
        c.sendall(msg)
    n = 0
    while n < 2 * len(conns):
        res = svc.get_complete_status(timeout=10)
        assert res is not None, "traffic stuck at the fd limit"
        assert res.err is None, res.err
        if res.context[0] == "r":
            assert bytes(res.buff) == res.context[2]
        n += 1
    for i, (conn, c) in enumerate(conns):
        msg = b"%s-%d" % (tag, i)
        c.settimeout(5)
        got = b""
        while len(got) < len(msg):
            got += c.recv(len(msg) - len(got))
        assert got == msg
pingpong(pairs, b"at-limit")
# free some fds: the spare sockets and 10 connections
for c in spare:
    c.close()
for conn, c in pairs[:10]:
    conn.close(); c.close()
pairs = pairs[10:]
# recovery: the waiting connection is accepted and works, so does a new one
newc = socket.create_connection(addr, timeout=5)
want = {pend_client.getsockname(): pend_client, newc.getsockname(): newc}
extra = []
stale = []
while len(extra) < 2:
    s, peer_addr = lst.accept()
    if peer_addr in want:
        extra.append((svc.bind(s), want[peer_addr]))
    else:   # a client closed while no fd was free to accept it: binds, reads EOF
        conn = svc.bind(s)
        conn.recv("stale", bytearray(8))
        res = svc.get_complete_status(timeout=10)
        assert res is not None and isinstance(res.err, EOFError), res
        conn.close()
        stale.append(peer_addr)
report["stale_accepted"] = len(stale)
pingpong(extra, b"recovered")
report["recovered_accept"] = True
svc2 = mod.AIOService(1)
svc2.close()
report["recovered_service"] = True
for conn, c in extra + pairs:
    conn.close(); c.close()
svc.close()
st = svc._stats()
assert (st["live_ops"], st["conns"], st["threads"]) == (0, 0, 0), st
print(json.dumps(report))
"""


@pytest.mark.skipif(not LINUX, reason="RLIMIT_NOFILE / /proc/self/fd")
def test_emfile_then_recovery(backend):
    """Under a low RLIMIT_NOFILE: at the limit, connect/accept and a new service
    fail with EMFILE (no crash, no hang), bound connections keep working; once
    fds are freed, accept, bind and new services work again."""
    proc = run_python(EMFILE_CHILD, argv=[backend.name], timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"EMFILE: {out}")
    assert out["service_at_limit"] == "EMFILE", out
    assert out["accept_at_limit"] == "EMFILE", out
    assert out["recovered_accept"] and out["recovered_service"]


# ====================================================================== fd reuse

class Collectors:
    """Threads collecting results into a queue (so polling happens in them)."""

    def __init__(self, svc, n=2):
        self.svc = svc
        self.q = queue.Queue()
        self.stop = False
        self.errors = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]
        for t in self.threads:
            t.start()

    def _run(self):
        try:
            while not self.stop:
                for res in self.svc.get_complete_statuses(16, timeout=0.02):
                    self.q.put(res)
        except goaio.ServiceClosed:
            pass
        except BaseException as exc:  # reported by close()
            self.errors.append(exc)

    def get(self, n, timeout=WAIT):
        deadline = time.monotonic() + timeout
        out = []
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"collected {len(out)} of {n} results in {timeout}s: {out!r}")
            try:
                out.append(self.q.get(timeout=left))
            except queue.Empty:
                pass
        return out

    def close(self):
        self.stop = True
        for t in self.threads:
            t.join(WAIT)
        assert not any(t.is_alive() for t in self.threads), "collector stuck"
        if self.errors:
            raise self.errors[0]


def _client_pair(lst):
    """A connected (client, accepted) pair; the client is made first, so it
    takes the lowest free fd number."""
    c = socket.socket(lst.family, socket.SOCK_STREAM)
    try:
        c.connect(lst.getsockname())
    except BaseException:
        c.close()
        raise
    s, _ = lst.accept()
    s.settimeout(WAIT)
    return c, s


def _fd_reuse_rounds(svc, pool, rounds, rnd):
    """Close A (recv with a share buffer, a large send half written, the peer's
    bytes unread, collectors polling) and bind B on the same fd number at once:
    B sees only its own bytes, B's peer only B's bytes, A's results only A's."""
    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lst.bind(("127.0.0.1", 0))
    lst.listen(64)
    lst.settimeout(WAIT)
    col = Collectors(svc, 2)
    reused = 0
    a_bytes = b_bytes = 0
    try:
        for i in range(rounds):
            a_sock, a_peer = _client_pair(lst)
            a_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 << 10)
            a_peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 10)
            a = svc.bind(a_sock, share_buff=pool)
            a.recv(("A-recv", i), None if i % 2 else bytearray(rnd.randint(1, 64)))
            a.send(("A-send", i), b"A" * (256 << 10))
            a_peer.sendall(b"a" * rnd.choice([0, 1, 4096]))
            if rnd.random() < 0.5:
                time.sleep(rnd.random() * 0.0005)
            fd = a.fd
            reason = ConnectionAbortedError("A closed")
            a.close(reason)
            if i % 4 == 3:
                b_sock, b_peer = socket.socketpair()
                b_peer.settimeout(WAIT)
            else:
                b_sock, b_peer = _client_pair(lst)
            reused += b_sock.fileno() == fd
            b = svc.bind(b_sock)
            tag = b"B%07d" % i
            b_buf = bytearray(len(tag))
            b.recv_full(("B-recv", i), b_buf)
            b.send(("B-send", i), tag)
            b_peer.sendall(tag)
            results = {}
            for res in col.get(4):
                assert res.context not in results, f"completed twice: {res.context}"
                results[res.context] = res
            ra, sa = results[("A-recv", i)], results[("A-send", i)]
            rb, sb = results[("B-recv", i)], results[("B-send", i)]
            assert ra.conn is a and sa.conn is a and rb.conn is b and sb.conn is b
            if ra.err is None:
                assert ra.buff[:ra.bytes_transferred] == b"a" * ra.bytes_transferred
                if i % 2:
                    pool.release(ra.buff)
            else:
                assert ra.err is reason, ra.err
            assert sa.err is reason, sa.err
            assert (rb.err, rb.bytes_transferred, bytes(b_buf)) == (None, len(tag), tag), (
                f"B got {rb.err!r} {bytes(b_buf)!r}: stale event or bytes of A")
            assert (sb.err, sb.bytes_transferred) == (None, len(tag))
            b.close()
            got = b""
            b_peer.settimeout(WAIT)
            while True:
                chunk = b_peer.recv(4096)
                if not chunk:
                    break
                got += chunk
            assert got == tag, f"B's peer read {got[:40]!r}...: bytes of A reached B"
            a_peer.settimeout(WAIT)
            a_got = bytearray()
            try:
                while True:
                    chunk = a_peer.recv(1 << 16)
                    if not chunk:
                        break
                    a_got += chunk
            except ConnectionResetError:
                pass
            assert a_got.count(b"A") == len(a_got), "B's bytes reached A's peer"
            a_bytes += len(a_got)
            b_bytes += 2 * len(tag)
            a_peer.close()
            b_peer.close()
        assert col.q.empty()
        time.sleep(0.05)
        assert col.q.empty(), f"extra result {col.q.get()!r}"
        assert pool.outstanding == 0, pool
    finally:
        col.close()
        lst.close()
    return reused, a_bytes, b_bytes


def test_fd_reuse_race(backend, service):
    rounds = 500
    reused, a_bytes, b_bytes = _fd_reuse_rounds(service, backend.BufferPool(64), rounds, random.Random(7))
    print(f"fd reuse: {rounds} rounds, fd number reused at once in {reused}, "
          f"{a_bytes} bytes of A drained, {b_bytes} bytes of B checked")
    assert reused > rounds // 2, f"the fd number was reused in only {reused} of {rounds} rounds"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_fd_reuse_race_long(backend, service):
    extend_hang_guard(1200)
    rounds = 5000
    reused, a_bytes, b_bytes = _fd_reuse_rounds(service, backend.BufferPool(64), rounds, random.Random(8))
    print(f"fd reuse: {rounds} rounds, fd number reused at once in {reused}, "
          f"{a_bytes} bytes of A drained, {b_bytes} bytes of B checked")
    assert reused > rounds // 2


# ====================================================================== close vs pool growth

def _close_vs_pool_growth(backend, attempts, rnd):
    """A receive completes and the next one, a share-buffer receive, finds the
    BufferPool empty: the pool grows (large buffers: a long window) while
    another thread closes the connection. Results of one connection keep
    their posting order: the completed receive first, then the close reason."""
    bad = []
    for i in range(attempts):
        svc = backend.AIOService(1)
        pool = backend.BufferPool(8 << 20)
        pairs = Pairs()
        try:
            sock, peer = pairs()
            conn = svc.bind(sock, share_buff=pool)
            conn.recv_full("first", bytearray(4))
            conn.recv("second", None)
            peer.sendall(b"abcdefgh")
            delay = rnd.random() * 0.004
            t = threading.Thread(target=lambda: time.sleep(delay) or conn.close())
            t.start()
            res = collect(svc, 2)
            t.join(WAIT)
            order = [(r.context, r.err) for r in res]
            if [c for c, _ in order] != ["first", "second"]:
                bad.append((i, [(c, type(e).__name__ if e else None) for c, e in order]))
            for r in res:
                if r.err is None and r.context == "second":
                    pool.release(r.buff)
                else:
                    assert r.err is None or isinstance(r.err, goaio.ConnClosed), r.err
            assert_no_result(svc, 0.01)
        finally:
            close_service(svc)
            pairs.close()
        assert pool.outstanding == 0
    return bad


def test_close_racing_pool_growth_keeps_order(backend):
    bad = _close_vs_pool_growth(backend, 40, random.Random(17))
    assert not bad, f"results out of posting order in {len(bad)} of 40 attempts: {bad[:3]}"


# ====================================================================== timeout races

class PacedSender(threading.Thread):
    """Sends a stream to each peer in small pieces at jittered intervals."""

    def __init__(self, peers, nbytes, seed):
        super().__init__(daemon=True)
        self.peers = peers
        self.rnd = random.Random(seed)
        self.streams = [self.rnd.randbytes(nbytes) for _ in peers]
        self.error = None
        self.start()

    def run(self):
        try:
            offs = [0] * len(self.peers)
            rnd = self.rnd
            while True:
                live = [i for i, o in enumerate(offs) if o < len(self.streams[i])]
                if not live:
                    return
                for i in live:
                    n = rnd.randint(1, 300)
                    self.peers[i].sendall(self.streams[i][offs[i]:offs[i] + n])
                    offs[i] += n
                time.sleep(rnd.random() * 0.0015)
        except BaseException as exc:
            self.error = exc

    def result(self):
        self.join(WAIT * 3)
        assert not self.is_alive()
        if self.error:
            raise self.error


def _recv_timeout_races(svc, pairs, nconns, nbytes, seed):
    """recv_full with a deadline of about one inter-arrival gap, over and over:
    every op completes once, with the data or a RecvTimeout carrying every byte
    it copied; the concatenation is exactly the stream."""
    rnd = random.Random(seed)
    conns = []
    peers = []
    for i in range(nconns):
        s, p = pairs(ALL_FAMILIES[i % len(ALL_FAMILIES)])
        conns.append(svc.bind(s))
        peers.append(p)
    got = {c: bytearray() for c in conns}
    stats = {"ok": 0, "timeout_empty": 0, "timeout_partial": 0}

    def post(c):
        c.set_recv_timeout(rnd.choice([0.0005, 0.001, 0.002, 0.004]))
        size = rnd.randint(1, 700)
        buf = bytearray(size)
        c.recv_full(("rf", size), buf)

    for c in conns:
        post(c)
    sender = PacedSender(peers, nbytes, seed)
    deadline = time.monotonic() + WAIT * 3
    outstanding = len(conns)
    while outstanding:
        assert time.monotonic() < deadline, f"stuck: {[len(g) for g in got.values()]}"
        for res in svc.get_complete_statuses(64, timeout=0.5):
            c = res.conn
            n = res.bytes_transferred
            size = res.context[1]
            got[c] += res.buff[:n]
            if res.err is None:
                assert n == size
                stats["ok"] += 1
            else:
                assert isinstance(res.err, goaio.RecvTimeout), res.err
                assert n < size
                stats["timeout_partial" if n else "timeout_empty"] += 1
            if len(got[c]) < nbytes:
                post(c)
            else:
                outstanding -= 1
    sender.result()
    # the last recv_full may have asked for more than was left: those timed out
    for c, stream in zip(conns, sender.streams):
        assert bytes(got[c]) == stream, "bytes lost or reordered around a receive timeout"
    assert_no_result(svc, 0.02)
    for c in conns:
        c.close()
    return stats


def _send_timeout_races(svc, pairs, nconns, nbytes, seed):
    """Sends with a tiny deadline to slow readers; each SendTimeout carries the
    bytes written and the rest is resent: the peers read exactly the stream."""
    rnd = random.Random(seed)
    items = []
    for i in range(nconns):
        s, p = pairs(TCP_FAMILIES[i % len(TCP_FAMILIES)], small=True)
        c = svc.bind(s)
        stream = rnd.randbytes(nbytes)
        items.append({"conn": c, "peer": p, "stream": stream, "off": 0,
                      "reader": Reader(p, nbytes, chunk=rnd.choice([4096, 65536]), delay=0.0005)})
    stats = {"ok": 0, "timeout_empty": 0, "timeout_partial": 0}
    by_conn = {it["conn"]: it for it in items}

    def post(it):
        it["conn"].set_send_timeout(rnd.choice([0.0005, 0.002, 0.005]))
        size = min(len(it["stream"]) - it["off"], rnd.randint(1, 256 << 10))
        it["conn"].send(("s", it["off"], size), it["stream"][it["off"]:it["off"] + size])

    for it in items:
        post(it)
    deadline = time.monotonic() + WAIT * 3
    outstanding = len(items)
    while outstanding:
        assert time.monotonic() < deadline, "send timeout races stuck"
        for res in svc.get_complete_statuses(64, timeout=0.5):
            it = by_conn[res.conn]
            _, off, size = res.context
            assert off == it["off"]
            n = res.bytes_transferred
            if res.err is None:
                assert n == size
                stats["ok"] += 1
            else:
                assert isinstance(res.err, goaio.SendTimeout), res.err
                assert n < size
                stats["timeout_partial" if n else "timeout_empty"] += 1
            it["off"] += n
            if it["off"] < len(it["stream"]):
                post(it)
            else:
                outstanding -= 1
    for it in items:
        assert it["reader"].result() == it["stream"], "the stream differs from the bytes the sends reported"
        it["conn"].close()
    return stats


def _timeout_vs_close(svc, pairs, rounds, width, rnd):
    """A receive (or a blocked send) whose deadline expires just as the
    connection is closed: exactly one completion, RecvTimeout/SendTimeout or
    the close reason, never both, nothing after."""
    outcome = {"timeout": 0, "reason": 0}
    for r in range(rounds):
        conns = []
        for i in range(width):
            sending = i % 4 == 3
            s, p = pairs(TCP_FAMILIES[i % len(TCP_FAMILIES)], small=sending)
            conns.append((svc.bind(s), p, sending))
        plan = []
        for c, p, sending in conns:
            t = rnd.choice([0.001, 0.002, 0.003])
            if sending:
                c.set_send_timeout(t)
                c.send(("op", r, id(c)), b"z" * (4 << 20))
            else:
                c.set_recv_timeout(t)
                c.recv(("op", r, id(c)), bytearray(16))
            # close around the deadline (timers fire up to ~1 ms late: ms-resolution polls)
            plan.append((time.monotonic() + t + rnd.uniform(-0.0002, 0.003), c))
        reasons = {}
        for at, c in sorted(plan, key=lambda x: x[0]):
            while time.monotonic() < at:
                pass
            reason = KeyError(f"closed {id(c)}")
            reasons[c] = reason
            c.close(reason)
        seen = set()
        for res in collect(svc, width):
            assert res.context not in seen, f"{res.context} completed twice"
            seen.add(res.context)
            if res.err is reasons[res.conn]:
                outcome["reason"] += 1
            else:
                assert isinstance(res.err, (goaio.RecvTimeout, goaio.SendTimeout)), res.err
                outcome["timeout"] += 1
        assert_no_result(svc, 0.002)
        for c, p, _ in conns:
            p.close()
    assert_no_result(svc, 0.05)
    return outcome


def test_recv_timeout_races_data(backend, service, pairs):
    stats = _recv_timeout_races(service, pairs, 12, 64 << 10, seed=11)
    print(f"recv timeout vs data: {stats}")
    assert stats["timeout_partial"] + stats["timeout_empty"] > 0 and stats["ok"] > 0, stats


def test_send_timeout_races_data(backend, service, pairs):
    stats = _send_timeout_races(service, pairs, 6, 2 << 20, seed=12)
    print(f"send timeout vs data: {stats}")
    assert stats["timeout_partial"] > 0 and stats["ok"] > 0, stats


def test_timeout_races_close(backend, service, pairs):
    outcome = _timeout_vs_close(service, pairs, 40, 16, random.Random(13))
    print(f"timeout vs close: {outcome} over {40 * 16} races")


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_timeout_races_long(backend, service, pairs):
    extend_hang_guard(1200)
    r = _recv_timeout_races(service, pairs, 48, 256 << 10, seed=21)
    s = _send_timeout_races(service, pairs, 12, 16 << 20, seed=22)
    c = _timeout_vs_close(service, pairs, 400, 32, random.Random(23))
    print(f"recv timeout vs data: {r}; send timeout vs data: {s}; timeout vs close: {c}")
    assert c["timeout"] > 0 and c["reason"] > 0, c
