"""Stress: 1000+ connections ping-ponging while others connect and close
continuously, several collector threads; and a soak version for minutes.

The peers are a plain ``selectors`` echo server in its own thread (no goaio
on that side). Each churned connection picks how it ends: goaio closes it with
operations pending, the peer closes after echoing (EOF), or the peer resets
after echoing (SO_LINGER 0). Every echo is checked byte for byte.

Quick versions run in the default suite (a few seconds each); the soak runs
with ``-m slow`` for ``GOAIO_SOAK_SECONDS`` (default 300) and checks at every
sample that RSS, the fd count (/proc/self/fd), the thread count,
``svc._stats()`` live_ops/conns and the pool buffers out stay flat.
"""

import errno
import os
import random
import selectors
import socket
import struct
import sys
import threading
import time

import pytest

import goaio
from support import WAIT, fd_count

try:
    from support import close_service
except ImportError:  # older support.py
    def close_service(svc, timeout=WAIT):
        svc.close()


def extend_hang_guard(seconds):
    """Re-arm conftest's faulthandler hang guard for a long (slow) test."""
    import faulthandler

    f = getattr(sys.modules.get("conftest"), "_hang_file", None) or sys.stderr
    faulthandler.dump_traceback_later(seconds, exit=True, file=f)


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------- the peer side

HDR = struct.Struct("!cI")  # mode, bytes to echo before acting (mode E: ignored)


class EchoServer(threading.Thread):
    """Echoes every byte back. A connection starts with a header ``(mode, n)``:
    ``E`` echo until EOF; ``F`` echo ``n`` bytes, then close; ``R`` echo ``n``
    bytes, then reset (SO_LINGER 0)."""

    def __init__(self, family=socket.AF_INET):
        super().__init__(daemon=True, name="echo-server")
        self.lst = socket.socket(family, socket.SOCK_STREAM)
        self.lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lst.bind(("127.0.0.1", 0))
        self.lst.listen(4096)
        self.lst.setblocking(False)
        self.addr = self.lst.getsockname()
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.lst, selectors.EVENT_READ, None)
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.sel.register(self.wake_r, selectors.EVENT_READ, "wake")
        self.stop = False
        self.error = None
        self.accepted = 0
        self.open = 0
        self.start()

    def run(self):
        try:
            while not self.stop:
                for key, ev in self.sel.select(0.1):
                    if key.data is None:
                        self._accept()
                    elif key.data == "wake":
                        try:
                            self.wake_r.recv(4096)
                        except BlockingIOError:
                            pass
                    else:
                        self._serve(key.fileobj, key.data, ev)
        except BaseException as exc:  # reported by close()
            self.error = exc

    def _accept(self):
        for _ in range(256):
            try:
                s, _ = self.lst.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ECONNABORTED):
                    return
                raise
            s.setblocking(False)
            st = {"hdr": bytearray(), "mode": None, "left": 0, "out": bytearray()}
            self.sel.register(s, selectors.EVENT_READ, st)
            self.accepted += 1
            self.open += 1

    def _drop(self, s, rst=False):
        self.sel.unregister(s)
        if rst:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        self.open -= 1

    def _serve(self, s, st, ev):
        if ev & selectors.EVENT_READ:
            try:
                data = s.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                self._drop(s)
                return
            except BlockingIOError:
                data = None
            if data == b"":
                self._drop(s)
                return
            if data:
                if st["mode"] is None:
                    st["hdr"] += data
                    if len(st["hdr"]) < HDR.size:
                        return
                    mode, left = HDR.unpack(st["hdr"][:HDR.size])
                    st["mode"], st["left"] = mode, left
                    data = bytes(st["hdr"][HDR.size:])
                if st["mode"] != b"E":
                    data = data[:st["left"]]
                    st["left"] -= len(data)
                st["out"] += data
        if st["out"]:
            try:
                n = s.send(st["out"])
            except BlockingIOError:
                n = 0
            except (ConnectionResetError, BrokenPipeError):
                self._drop(s)
                return
            del st["out"][:n]
        if st["mode"] in (b"F", b"R") and st["left"] == 0 and not st["out"]:
            self._drop(s, rst=st["mode"] == b"R")
            return
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if st["out"] else 0)
        if self.sel.get_key(s).events != want:
            self.sel.modify(s, want, st)

    def close(self):
        self.stop = True
        self.wake_w.send(b"x")
        self.join(WAIT)
        assert not self.is_alive(), "echo server stuck"
        for key in list(self.sel.get_map().values()):
            if key.data not in (None, "wake"):
                key.fileobj.close()
        self.sel.close()
        self.lst.close()
        self.wake_r.close()
        self.wake_w.close()
        if self.error is not None:
            raise self.error


# ---------------------------------------------------------------- the goaio side

def message(cid, rnd_round):
    """A message that names its connection and round (checked in the echo)."""
    r = random.Random(cid * 1000003 + rnd_round)
    return struct.pack("!II", cid, rnd_round) + r.randbytes(r.randint(0, 600))


class PingConn:
    """A long-lived connection: send a message, receive its echo, again."""

    def __init__(self, load, cid, conn, pool):
        self.load, self.cid, self.conn, self.pool = load, cid, conn, pool
        self.lock = threading.Lock()
        self.round = 0
        self.pending = 0
        self.msg = b""
        self.got = bytearray()
        self.running = True

    def start(self):
        with self.lock:
            self._next()

    def _next(self):
        if not self.running:
            return
        self.round += 1
        self.msg = message(self.cid, self.round)
        self.got = bytearray()
        self.pending = 2
        self.conn.send(self, self.msg)
        self._post_recv()

    def _post_recv(self):
        left = len(self.msg) - len(self.got)
        if self.pool is not None:
            self.conn.recv(self, None)
        elif self.round % 2:
            self.conn.recv_full(self, bytearray(left))
        else:
            self.conn.recv(self, [bytearray(left // 2), memoryview(bytearray(left - left // 2 + 8))[:left - left // 2]])

    def on_result(self, res):
        with self.lock:
            if res.err is not None:
                raise AssertionError(f"ping conn {self.cid}: {res.err!r}")
            if isinstance(res.buff, list):
                piece = b"".join(bytes(b) for b in res.buff)[:res.bytes_transferred]
            elif res.buff is not None and len(res.buff) and isinstance(res.buff, bytearray) and len(self.msg) - len(self.got) < len(res.buff) and self.pool is None:
                piece = bytes(res.buff[:res.bytes_transferred])
            else:
                piece = bytes(res.buff[:res.bytes_transferred])
            if self.pool is not None and res.context is self and res.buff is not None and len(res.buff) == self.pool.buffer_size and res.buff is not self.msg:
                pass
            if res.buff is self.msg:  # the send
                assert res.bytes_transferred == len(self.msg)
                self.load.bytes += len(self.msg)
                self.pending -= 1
            else:
                if self.pool is not None:
                    self.pool.release(res.buff)
                self.got += piece
                want = self.msg
                assert bytes(self.got) == want[:len(self.got)], (
                    f"conn {self.cid} round {self.round}: echo differs")
                if len(self.got) < len(want):
                    self._post_recv()
                    return
                self.load.bytes += len(want)
                self.pending -= 1
            if self.pending == 0:
                self.load.rounds += 1
                self._next()


class ChurnConn:
    """A short-lived connection: a few ping-pongs, then it ends one of three ways."""

    def __init__(self, load, cid, conn, pool, rnd):
        self.load, self.cid, self.conn, self.pool = load, cid, conn, pool
        self.lock = threading.Lock()
        self.mode = rnd.choice([b"E", b"F", b"R"])
        self.rounds = rnd.randint(0, 4)
        self.msgs = [message(cid, i) for i in range(self.rounds)]
        self.total = sum(len(m) for m in self.msgs)
        self.i = 0
        self.pending = 0
        self.got = bytearray()
        self.stage = "ping"
        self.reason = KeyError(f"churn {cid}")
        self.close_pending = rnd.random() < 0.5

    def start(self):
        with self.lock:
            self.conn.send(("hdr", self), HDR.pack(self.mode, self.total))
            self.pending += 1
            self._next()

    def _next(self):
        if self.i < self.rounds:
            msg = self.msgs[self.i]
            self.got = bytearray(len(msg))
            self.conn.send(self, msg)
            if self.pool is not None and self.i % 2:
                self.conn.recv(self, None)
                self.got = bytearray()
            else:
                self.conn.recv_full(self, self.got)
            self.pending += 2
            return
        # the end
        if self.mode == b"E":
            self.stage = "closing"
            if self.close_pending:
                self.conn.recv(self, bytearray(16))
                self.conn.send(self, b"x" * 10)
                self.pending += 2
            self.conn.close(self.reason)
            if not self.pending:
                self._done()
        else:
            self.stage = "await_end"
            self.conn.recv(self, bytearray(16))
            self.pending += 1

    def _done(self):
        if self.stage != "done":
            self.stage = "done"
            self.conn.close()
            self.load.churned += 1
            self.load.churn_done(self)

    def on_result(self, res):
        with self.lock:
            self.pending -= 1
            err = res.err
            if res.context == ("hdr", self):
                assert err is None or (self.stage == "closing" and err is self.reason), err
            elif self.stage == "closing":
                assert err is None or err is self.reason or isinstance(err, (goaio.ConnClosed,)), err
            elif self.stage == "await_end":
                if self.mode == b"F":
                    assert isinstance(err, EOFError), f"peer FIN: {err!r}"
                else:
                    assert isinstance(err, (ConnectionResetError, EOFError)), f"peer RST: {err!r}"
                self.load.peer_ends += 1
            elif err is not None:
                raise AssertionError(f"churn conn {self.cid} ({self.mode}): {err!r}")
            elif res.buff is self.msgs[self.i]:
                assert res.bytes_transferred == len(res.buff)
                self.load.bytes += len(res.buff)
            else:
                msg = self.msgs[self.i]
                if self.pool is not None and res.buff is not None and res.buff is not self.got:
                    self.got += res.buff[:res.bytes_transferred]
                    self.pool.release(res.buff)
                    if len(self.got) < len(msg):
                        self.conn.recv(self, None)
                        self.pending += 1
                        return
                assert bytes(self.got) == msg, f"churn conn {self.cid}: echo differs"
                self.load.bytes += len(msg)
            if self.stage == "ping" and self.pending == 0:
                self.i += 1
                self.load.rounds += 1
                self._next()
            elif self.stage in ("closing", "await_end") and self.pending == 0:
                self._done()


class Load:
    """Drives the whole stress run."""

    def __init__(self, backend, nconns, collectors=3, workers=2, churn_width=40):
        self.backend = backend
        self.svc = backend.AIOService(workers)
        self.pool = backend.BufferPool(256)
        self.server = EchoServer()
        self.rounds = 0
        self.bytes = 0
        self.churned = 0
        self.peer_ends = 0
        self.errors = []
        self.stop = False
        self.churn_width = churn_width
        self.churn_live = set()
        self.churn_lock = threading.Lock()
        self.churn_cv = threading.Condition(self.churn_lock)
        self.churn_paused = False
        self.next_cid = 0
        self.rnd = random.Random(1)
        self.pings = []
        for i in range(nconns):
            self.pings.append(self._ping_conn())
        self.collectors = [threading.Thread(target=self._collect, daemon=True, name=f"collector-{i}")
                           for i in range(collectors)]
        for t in self.collectors:
            t.start()
        for p in self.pings:
            p.start()
        self.churner = threading.Thread(target=self._churn, daemon=True, name="churner")
        self.churner.start()

    def _sock(self):
        s = socket.create_connection(self.server.addr, timeout=WAIT)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def _ping_conn(self):
        self.next_cid += 1
        s = self._sock()
        use_pool = self.next_cid % 3 == 0
        conn = self.svc.bind(s, share_buff=self.pool if use_pool else None)
        p = PingConn(self, self.next_cid, conn, self.pool if use_pool else None)
        conn.send(("hdr", p), HDR.pack(b"E", 0))
        return p

    def _collect(self):
        try:
            while not self.stop:
                for res in self.svc.get_complete_statuses(64, timeout=0.05):
                    ctx = res.context
                    if type(ctx) is tuple and ctx[0] == "hdr":
                        if isinstance(ctx[1], ChurnConn):
                            ctx[1].on_result(res)
                        else:
                            assert res.err is None, res.err
                        continue
                    ctx.on_result(res)
        except goaio.ServiceClosed:
            pass
        except BaseException as exc:  # reported by check()
            self.errors.append(exc)
            self.stop = True

    def _churn(self):
        try:
            while not self.stop:
                with self.churn_cv:
                    while not self.stop and (self.churn_paused or len(self.churn_live) >= self.churn_width):
                        self.churn_cv.wait(0.05)
                    if self.stop:
                        return
                    self.next_cid += 1
                    cid = self.next_cid
                s = self._sock()
                use_pool = cid % 2 == 0
                conn = self.svc.bind(s, share_buff=self.pool if use_pool else None)
                c = ChurnConn(self, cid, conn, self.pool if use_pool else None, self.rnd)
                with self.churn_cv:
                    self.churn_live.add(c)
                c.start()
        except BaseException as exc:  # reported by check()
            self.errors.append(exc)
            self.stop = True

    def churn_done(self, c):
        with self.churn_cv:
            self.churn_live.discard(c)
            self.churn_cv.notify_all()

    def quiesce_churn(self, timeout=WAIT):
        """Pause the churn and wait until no churned connection is left
        (and the echo server closed their other ends)."""
        deadline = time.monotonic() + timeout
        with self.churn_cv:
            self.churn_paused = True
            while self.churn_live:
                assert not self.errors, self.errors[0]
                left = deadline - time.monotonic()
                assert left > 0, f"{len(self.churn_live)} churned connections never ended"
                self.churn_cv.wait(min(left, 0.05))
        while self.server.open != len(self.pings):
            assert time.monotonic() < deadline, (
                f"echo server still holds {self.server.open} connections for {len(self.pings)}")
            time.sleep(0.005)

    def resume_churn(self):
        with self.churn_cv:
            self.churn_paused = False
            self.churn_cv.notify_all()

    def check(self):
        if self.errors:
            raise self.errors[0]
        if self.server.error:
            raise self.server.error

    def sample(self):
        s = self.svc._stats()
        return {"rss": rss_bytes(), "fds": fd_count(), "threads": threading.active_count(),
                "live_ops": s["live_ops"], "conns": s["conns"], "pool_out": self.pool.outstanding}

    def finish(self):
        """Stop the churn, let every ping finish its round, close everything."""
        self.quiesce_churn()
        for p in self.pings:
            with p.lock:
                p.running = False
        deadline = time.monotonic() + WAIT
        while any(p.pending for p in self.pings):
            self.check()
            assert time.monotonic() < deadline, (
                f"{sum(1 for p in self.pings if p.pending)} ping connections never finished their round")
            time.sleep(0.01)
        self.stop = True
        self.resume_churn()
        for t in self.collectors + [self.churner]:
            t.join(WAIT)
            assert not t.is_alive(), f"{t.name} stuck"
        self.check()
        st = self.svc._stats()
        assert st["live_ops"] == 0, st
        assert st["conns"] == len(self.pings), st
        assert self.pool.outstanding == 0, self.pool
        for p in self.pings:
            p.conn.close()
        close_service(self.svc)
        st = self.svc._stats()
        assert (st["live_ops"], st["conns"], st["threads"]) == (0, 0, 0), st
        self.server.close()

    def abort(self):
        self.stop = True
        try:
            close_service(self.svc)
        finally:
            self.server.close()


def run_load(backend, nconns, seconds, sample_every=None, warmup=0.0):
    """Run the load for ``seconds``; returns (figures, samples)."""
    fds0 = fd_count()
    threads0 = threading.active_count()
    t0 = time.monotonic()
    load = Load(backend, nconns)
    setup = time.monotonic() - t0
    samples = []
    try:
        end = time.monotonic() + seconds
        next_sample = time.monotonic() + (warmup if sample_every else seconds + 1)
        while time.monotonic() < end:
            load.check()
            time.sleep(0.05)
            if sample_every and time.monotonic() >= next_sample:
                load.quiesce_churn()
                samples.append(load.sample())
                load.resume_churn()
                next_sample = time.monotonic() + sample_every
        load.check()
        figures = {"connections": nconns, "seconds": round(time.monotonic() - t0, 1),
                   "setup_s": round(setup, 2), "round_trips": load.rounds,
                   "bytes_checked": load.bytes, "churned": load.churned,
                   "peer_fin_or_rst": load.peer_ends, "accepted": load.server.accepted}
        load.finish()
    except BaseException:
        load.abort()
        raise
    # everything closed: fds and threads back to where they were
    deadline = time.monotonic() + WAIT
    while (fd_count(), threading.active_count()) != (fds0, threads0):
        assert time.monotonic() < deadline, (
            f"fds {fds0} -> {fd_count()}, threads {threads0} -> {threading.active_count()}")
        time.sleep(0.01)
    return figures, samples


def test_pingpong_1000_with_churn(backend):
    """1000 connections ping-pong (echo checked byte for byte) while others
    connect, talk and close (by goaio with ops pending, by peer FIN, by peer
    RST) continuously; 3 collector threads, 2 workers."""
    figures, _ = run_load(backend, 1000, 4.0)
    print(f"stress {backend.name}: {figures}")
    assert figures["round_trips"] > 1000 and figures["churned"] > 50, figures


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_soak(backend):
    """The same load for GOAIO_SOAK_SECONDS (default 300): at every sample
    (churn paused and drained), RSS, fds, threads, live ops, connections and
    pool buffers out are flat."""
    seconds = float(os.environ.get("GOAIO_SOAK_SECONDS", "300"))
    extend_hang_guard(seconds + 600)
    every = max(seconds / 12, 5.0)
    figures, samples = run_load(backend, 1200, seconds, sample_every=every, warmup=min(30.0, seconds / 5))
    print(f"soak {backend.name}: {figures}")
    for s in samples:
        print("  sample", s)
    assert len(samples) >= 3, samples
    first, last = samples[0], samples[-1]
    for s in samples:
        assert s["fds"] == first["fds"], f"fd count drifted: {first['fds']} -> {s['fds']}"
        assert s["threads"] == first["threads"], f"threads drifted: {first['threads']} -> {s['threads']}"
        assert s["conns"] == first["conns"], s
        # only the ping connections are active: at most a send and a receive each
        assert s["live_ops"] <= 2 * figures["connections"], s
        assert s["pool_out"] <= figures["connections"], s
    growth = last["rss"] - first["rss"]
    assert growth < max(32 << 20, first["rss"] // 5), (
        f"RSS grew {growth >> 20} MiB over the soak ({first['rss'] >> 20} -> {last['rss'] >> 20} MiB)")
    assert figures["round_trips"] > 0 and figures["churned"] > 0
