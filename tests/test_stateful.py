"""Property-based: a Hypothesis state machine over real loopback connections.

Rules post receives (``recv``, ``recv_full``, share-buffer ``recv(ctx, None)``)
and sends with random sizes and buffer kinds (bytearray, memoryview slices,
array.array, lists for gather IO), make the peer send / shut down its write
side / reset, set and clear timeouts, close connections with a reason, open
new connections (often on the fd number just freed) and collect completions
one at a time or in batches.

The model keeps, per connection, the byte stream the peer sent, the sends in
posting order and every outstanding operation. Invariants checked on every
result and after every step:

* every operation completes exactly once, with its own context and buffer;
* received bytes are exactly the next bytes of what the peer sent (so a
  prefix of it, in order), and nothing is written outside ``n`` bytes of the
  receive buffer;
* what the peer reads is a prefix of the sends' reported bytes in posting
  order (and exactly them once the connection closed cleanly);
* ``Busy`` only when the queue may really be full; ``EOFError`` only after
  every byte the peer sent; timeouts only when armed; a ``recv`` never times
  out with a partial count;
* once a connection is closed, nothing completes after a close-reason result
  of that direction except with the reason; results queued before the close
  keep their data (docs/semantics.md);
* pool buffers out are between what the model holds and what it holds plus
  the pending share-buffer receives; all come back at the end;
* ``svc._stats()``: open connections match the model; live operations never
  exceed the outstanding ones and drop to zero when everything is collected.
"""

import array
import os
import random
import socket
import time

import pytest

import goaio
from support import (Pairs, WAIT, assert_service_drained, close_service, extend_hang_guard,
                     family_available, reset)

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, Phase, settings, strategies as st  # noqa: E402
from hypothesis.stateful import (  # noqa: E402
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

FAMILY_CHOICES = [f for f in ("tcp", "tcp6", "unix") if family_available(f)]
MAX_CONNS = 3
#: per connection: the peer never has more than this many bytes unread by goaio
#: in flight (its non-blocking sends never block the test)
PEER_BUDGET = 192 * 1024

sizes = st.one_of(
    st.integers(1, 64),
    st.integers(65, 4096),
    st.integers(4097, 96 * 1024),
)
send_sizes = st.one_of(
    st.integers(0, 64),
    st.integers(65, 8192),
    st.integers(8193, 256 * 1024),
)
timeouts = st.sampled_from([None, 0, 0.002, 0.01, 0.05])
collect_timeouts = st.sampled_from([0, 0.001, 0.005, 0.02])
RECV_KINDS = ["bytearray", "mv_slice", "array", "list"]
SEND_KINDS = ["bytes", "bytearray", "mv_slice", "array", "list"]


#: figures over every example run in this process (printed by the tests)
TOTALS = {"examples": 0, "steps": 0, "ops": 0, "results": 0, "bytes_in": 0, "bytes_out": 0,
          "conns": 0, "closes": 0, "peer_resets": 0, "peer_shutdowns": 0, "timeouts_hit": 0}


class Reason(Exception):
    """A close reason."""


# ---------------------------------------------------------------- buffers

class RecvBuf:
    """A receive buffer of some kind, able to say what was written where."""

    def __init__(self, kind, size, rnd):
        self.kind = kind
        self.parts = []  # (base bytearray-like, start, length, original bytes of base)
        if kind == "list":
            n = rnd.randint(1, 4)
            cuts = sorted(rnd.randint(0, size) for _ in range(n - 1))
            lens = [b - a for a, b in zip([0] + cuts, cuts + [size])]
            self.obj = [self._make(rnd.choice(RECV_KINDS[:3]), ln, rnd, allow_zero=True) for ln in lens]
        else:
            self.obj = self._make(kind, size, rnd)
        self.capacity = sum(p[2] for p in self.parts)

    def _make(self, kind, size, rnd, allow_zero=False):
        if kind == "bytearray" or (size == 0 and allow_zero):
            base = bytearray(rnd.randbytes(size))
            self.parts.append((base, 0, size, bytes(base)))
            return base
        if kind == "mv_slice":
            pad = rnd.randint(1, 16)
            base = bytearray(rnd.randbytes(size + 2 * pad))
            self.parts.append((base, pad, size, bytes(base)))
            return memoryview(base)[pad:pad + size]
        if kind == "array":
            items = (size + 3) // 4
            base = array.array("I", rnd.randbytes(items * 4))
            self.parts.append((base, 0, items * 4, base.tobytes()))
            return base
        raise AssertionError(kind)

    def data(self, n):
        out = bytearray()
        for base, start, ln, _ in self.parts:
            raw = base.tobytes() if isinstance(base, array.array) else bytes(base)
            out += raw[start:start + ln]
        return bytes(out[:n])

    def check_untouched(self, n):
        """Nothing outside the first ``n`` bytes of the buffer was written."""
        left = n
        for base, start, ln, orig in self.parts:
            raw = base.tobytes() if isinstance(base, array.array) else bytes(base)
            used = min(left, ln)
            left -= used
            assert raw[:start] == orig[:start], f"{self.kind}: bytes written before the slice"
            assert raw[start + used:] == orig[start + used:], (
                f"{self.kind}: bytes written beyond the {n} reported")


def send_buf(kind, data, rnd):
    if kind == "bytes":
        return data
    if kind == "bytearray":
        return bytearray(data)
    if kind == "mv_slice":
        pad = rnd.randint(1, 16)
        return memoryview(b"\xee" * pad + data + b"\xdd" * pad)[pad:pad + len(data)]
    if kind == "array":
        if len(data) % 2:
            return bytearray(data)
        return array.array("H", data)
    if kind == "list":
        out = []
        i = 0
        while i < len(data):
            j = min(len(data), i + rnd.randint(1, max(1, len(data) // 2)))
            out.append(send_buf(rnd.choice(SEND_KINDS[:4]), data[i:j], rnd))
            if rnd.random() < 0.2:
                out.append(b"")
            i = j
        return out
    raise AssertionError(kind)


# ---------------------------------------------------------------- model

class Op:
    __slots__ = ("id", "kind", "ctx", "buff", "rb", "data", "share", "tmo", "cascade", "n", "done", "seq")

    def __init__(self, oid, kind, buff, rb=None, data=None, share=False):
        self.id = oid
        self.kind = kind          # "recv", "recv_full", "send"
        self.ctx = ("op", oid)
        self.buff = buff
        self.rb = rb              # RecvBuf, or None (recv(ctx, None))
        self.data = data          # send: the bytes
        self.share = share
        self.tmo = False          # a timeout was armed while it was pending
        self.cascade = False      # queued behind a timed-out send
        self.n = None             # send: bytes reported
        self.done = False
        self.seq = oid


class ConnModel:
    def __init__(self, idx, conn, peer, family, pool, rq_max, sq_max):
        self.idx = idx
        self.conn = conn
        self.peer = peer
        self.family = family
        self.pool = pool
        self.rq_max = rq_max
        self.sq_max = sq_max
        self.peer_sent = bytearray()
        self.recv_off = 0
        self.sends = []           # Ops in posting order
        self.peer_got = bytearray()
        self.peer_state = "open"  # the peer's write side: open | shut | reset
        self.peer_rd = "open"     # the peer's read side: open | eof | broken (saw a reset) | reset
        self.outstanding = {}     # id -> Op
        self.closed = False
        self.reason = None
        self.reason_given = False
        self.rto = False
        self.sto = False
        self.last_inorder = {"r": -1, "s": -1}
        self.reason_seen = {"r": False, "s": False}
        self.eof_seen = False

    def pending(self, d):
        return sum(1 for op in self.outstanding.values() if (op.kind == "send") == (d == "s"))

    def expected_wire(self):
        out = bytearray()
        for op in self.sends:
            out += op.data if op.n is None else op.data[:op.n]
        return out

    def completed_wire(self):
        out = bytearray()
        for op in self.sends:
            if op.n is None:
                return out, False
            out += op.data[:op.n]
        return out, True


class GoaioMachine(RuleBasedStateMachine):
    backend = None  # set by the per-backend subclass

    def __init__(self):
        super().__init__()
        self.pairs = Pairs()
        self.svc = None
        self.pool = None
        self.conns = []
        self.held = {}          # id(buff) -> pool buffer the model owns
        self.next_id = 0
        self.rnd = random.Random(0)
        self.stats = TOTALS
        TOTALS["examples"] += 1

    # -------------------------------------------------------------- helpers

    def _oid(self):
        self.next_id += 1
        return self.next_id

    def _pick_post(self, ci):
        """Mostly an open connection; now and then a closed one (posting must raise)."""
        if ci < 14:
            m = self._pick(ci, live=True)
            if m is not None:
                return m
        return self._pick(ci)

    def _pick(self, ci, live=None):
        cands = self.conns if live is None else [m for m in self.conns if (not m.closed) == live]
        if not cands:
            return None
        return cands[ci % len(cands)]

    def _by_conn(self, conn):
        for m in self.conns:
            if m.conn is conn:
                return m
        raise AssertionError(f"result for an unknown connection {conn!r}")

    def _post(self, m, op, call):
        d = "s" if op.kind == "send" else "r"
        qmax = m.sq_max if d == "s" else m.rq_max
        may_be_full = m.pending(d) >= qmax
        try:
            call()
        except goaio.Busy:
            assert may_be_full, f"Busy with only {m.pending(d)} of {qmax} {d}-ops outstanding"
            return False
        except goaio.ConnClosed:
            assert m.closed, "ConnClosed on an open connection"
            return False
        assert not m.closed, "posting on a closed connection did not raise ConnClosed"
        if (m.sto if d == "s" else m.rto):
            op.tmo = True
        m.outstanding[op.id] = op
        if d == "s":
            m.sends.append(op)
        self.stats["ops"] += 1
        return True

    # -------------------------------------------------------------- setup

    @initialize(workers=st.sampled_from([1, 2]), pool_size=st.sampled_from([7, 512, 4096]),
                seed=st.integers(0, 2**32 - 1))
    def setup(self, workers, pool_size, seed):
        self.rnd = random.Random(seed)
        self.svc = self.backend.AIOService(workers)
        self.pool = self.backend.BufferPool(pool_size)
        self._open(FAMILY_CHOICES[0], True, False, 32, 32)

    def _open(self, family, share, small, rq_max, sq_max):
        sock, peer = self.pairs(family, small=small)
        opts = dict(recvq_size=rq_max, sendq_size=sq_max)
        if share:
            opts["share_buff"] = self.pool
        conn = self.svc.bind(sock, **opts)
        peer.settimeout(0.0)  # the rules never block on the peer
        self.stats["conns"] += 1
        m = ConnModel(len(self.conns), conn, peer, family, self.pool if share else None, rq_max, sq_max)
        self.conns.append(m)

    @precondition(lambda self: sum(not m.closed for m in self.conns) < MAX_CONNS)
    @rule(family=st.sampled_from(FAMILY_CHOICES), share=st.booleans(), small=st.booleans(),
          rq_max=st.sampled_from([2, 32]), sq_max=st.sampled_from([2, 32]))
    def open_conn(self, family, share, small, rq_max, sq_max):
        self._open(family, share, small, rq_max, sq_max)

    # -------------------------------------------------------------- posting

    @rule(ci=st.integers(0, 15), kind=st.sampled_from(RECV_KINDS), size=sizes, full=st.booleans())
    def post_recv(self, ci, kind, size, full):
        m = self._pick_post(ci)
        rb = RecvBuf(kind, size, self.rnd)
        op = Op(self._oid(), "recv_full" if full else "recv", rb.obj, rb=rb)
        fn = m.conn.recv_full if full else m.conn.recv
        self._post(m, op, lambda: fn(op.ctx, op.buff))

    @rule(ci=st.integers(0, 15), count=st.integers(1, 4))
    def post_recv_none(self, ci, count):
        m = self._pick_post(ci)
        for _ in range(count):
            self._post_recv_none(m)

    def _post_recv_none(self, m):
        op = Op(self._oid(), "recv", None, share=m.pool is not None)
        self._post(m, op, lambda: m.conn.recv(op.ctx, None))

    @rule(ci=st.integers(0, 15), kind=st.sampled_from(SEND_KINDS), size=send_sizes)
    def post_send(self, ci, kind, size):
        m = self._pick_post(ci)
        data = self.rnd.randbytes(size)
        op = Op(self._oid(), "send", send_buf(kind, data, self.rnd), data=data)
        self._post(m, op, lambda: m.conn.send(op.ctx, op.buff))

    @rule(ci=st.integers(0, 15), recvs=st.lists(st.tuples(st.sampled_from(RECV_KINDS), sizes, st.booleans()), max_size=5),
          sends=st.lists(st.tuples(st.sampled_from(SEND_KINDS), st.integers(0, 4096)), max_size=5))
    def post_burst(self, ci, recvs, sends):
        """Several receives and sends at once, interleaved with nothing."""
        for kind, size, full in recvs:
            self.post_recv(ci, kind, size, full)
        for kind, size in sends:
            self.post_send(ci, kind, size)

    # -------------------------------------------------------------- the peer

    @rule(ci=st.integers(0, 7), size=sizes)
    def peer_send(self, ci, size):
        m = self._pick(ci, live=True)
        if m is None or m.peer_state != "open":
            return
        room = PEER_BUDGET - (len(m.peer_sent) - m.recv_off)
        size = min(size, room)
        if size <= 0:
            return
        data = self.rnd.randbytes(size)
        try:
            n = m.peer.send(data)
        except BlockingIOError:
            return
        m.peer_sent += data[:n]

    @rule(ci=st.integers(0, 7), size=st.integers(1, 512 * 1024))
    def peer_read(self, ci, size):
        m = self._pick(ci)
        if m.peer_rd != "open":
            return
        while size > 0:
            try:
                chunk = m.peer.recv(min(size, 1 << 20))
            except BlockingIOError:
                return
            except ConnectionResetError:
                assert m.closed, "the peer saw a reset while goaio's side is open"
                m.peer_rd = "broken"
                return
            if not chunk:
                assert m.closed, "the peer read EOF while goaio's side is open"
                m.peer_rd = "eof"
                return
            m.peer_got += chunk
            size -= len(chunk)

    @rule(ci=st.integers(0, 7))
    def peer_shutdown(self, ci):
        m = self._pick(ci, live=True)
        if m is None or m.peer_state != "open":
            return
        m.peer.shutdown(socket.SHUT_WR)
        self.stats["peer_shutdowns"] += 1
        m.peer_state = "shut"

    @rule(ci=st.integers(0, 7))
    def peer_reset(self, ci):
        m = self._pick(ci, live=True)
        if m is None or m.peer_state not in ("open", "shut"):
            return
        reset(m.peer)
        self.stats["peer_resets"] += 1
        m.peer_state = m.peer_rd = "reset"

    # -------------------------------------------------------------- timeouts, close

    @rule(ci=st.integers(0, 7), value=timeouts, recv=st.booleans())
    def set_timeout(self, ci, value, recv):
        m = self._pick(ci)  # on a closed connection: accepted, does nothing
        (m.conn.set_recv_timeout if recv else m.conn.set_send_timeout)(value)
        on = bool(value)
        if recv:
            m.rto = on
        else:
            m.sto = on
        if on:
            for op in m.outstanding.values():
                if (op.kind == "send") != recv:
                    op.tmo = True

    @rule(ci=st.integers(0, 7), kind=st.sampled_from(["none", "reason", "goaio"]))
    def close(self, ci, kind):
        m = self._pick(ci, live=True)
        if m is None:
            return
        reason = {"none": None, "reason": Reason(f"closed {m.idx}"), "goaio": goaio.Error("bye")}[kind]
        self._close(m, reason)

    def _close(self, m, reason):
        m.conn.close(reason)
        self.stats["closes"] += 1
        m.closed = True
        m.reason = reason
        assert m.conn.closed and m.conn.fd == -1
        m.conn.close(Reason("second close is a no-op"))
        with pytest.raises(goaio.ConnClosed):
            m.conn.recv("late", bytearray(1))
        with pytest.raises(goaio.ConnClosed):
            m.conn.send("late", b"x")

    # -------------------------------------------------------------- collecting

    @rule(timeout=collect_timeouts)
    def collect_one(self, timeout):
        res = self.svc.get_complete_status(timeout=timeout)
        if res is not None:
            self._on_result(res)

    @rule(max_results=st.integers(1, 16), timeout=collect_timeouts)
    def collect_batch(self, max_results, timeout):
        batch = self.svc.get_complete_statuses(max_results, timeout=timeout)
        assert isinstance(batch, list) and len(batch) <= max_results
        for res in batch:
            self._on_result(res)

    @rule(seconds=st.sampled_from([0.003, 0.012, 0.03]))
    def pause(self, seconds):
        """Let time pass (timers fire, workers complete sends) without collecting."""
        time.sleep(seconds)

    @rule(k=st.integers(1, 8))
    def release_held(self, k):
        for key in list(self.held)[:k]:
            self.pool.release(self.held.pop(key))

    def _on_result(self, res):
        self.stats["results"] += 1
        m = self._by_conn(res.conn)
        ctx = res.context
        assert isinstance(ctx, tuple) and ctx[0] == "op", ctx
        op = m.outstanding.pop(ctx[1], None)
        assert op is not None, f"result for an op that is not outstanding (completed twice?): {res!r}"
        assert res.context is op.ctx
        n = res.bytes_transferred
        err = res.err
        if op.kind == "send":
            self._on_send(m, op, res, n, err)
        else:
            self._on_recv(m, op, res, n, err)

    def _is_reason(self, m, err):
        if not m.closed:
            return False
        if m.reason is None:
            return isinstance(err, goaio.ConnClosed)
        return err is m.reason

    def _order(self, m, d, op, err, timeout_cls):
        """Results of one direction come in posting order (timeouts aside);
        after a close-reason result only close-reason results follow."""
        if self._is_reason(m, err):
            m.reason_seen[d] = True
        else:
            assert not m.reason_seen[d], f"{op.kind} completed with {err!r} after a close-reason result"
        if not isinstance(err, timeout_cls):
            assert op.seq > m.last_inorder[d], f"{op.kind} {op.seq} completed out of order"
            m.last_inorder[d] = op.seq

    def _on_recv(self, m, op, res, n, err):
        rb = op.rb
        if rb is not None:
            assert res.buff is op.buff, "res.buff is not the buffer given"
            cap = rb.capacity
        elif err is None:
            assert isinstance(res.buff, bytearray), type(res.buff)
            if op.share:
                assert len(res.buff) == self.pool.buffer_size
                assert id(res.buff) not in self.held, "a pool buffer handed out twice"
            else:
                assert len(res.buff) == goaio.DEFAULT_RECV_BUFF_SIZE
            cap = len(res.buff)
        else:
            # failed recv(ctx, None): buff is None (the pool buffer went back)
            assert res.buff is None, res.buff
            cap = max(self.pool.buffer_size, goaio.DEFAULT_RECV_BUFF_SIZE)
        assert 0 <= n <= cap, (n, cap)
        # the bytes: exactly the next ones of what the peer sent
        expect = bytes(m.peer_sent[m.recv_off:m.recv_off + n])
        assert len(expect) == n, f"received {n} bytes but the peer sent only {len(m.peer_sent) - m.recv_off} more"
        if rb is not None:
            assert rb.data(n) == expect, "received bytes differ from what the peer sent"
            rb.check_untouched(n)
        elif res.buff is not None:
            assert bytes(res.buff[:n]) == expect, "received bytes differ from what the peer sent"
        m.recv_off += n
        self.stats["bytes_in"] += n
        if op.share and res.buff is not None:
            self.held[id(res.buff)] = res.buff
        elif op.share and err is None:
            raise AssertionError("a successful share-buffer receive without a buffer")
        # the error
        if err is None:
            assert n >= 1
            if op.kind == "recv_full":
                assert n == cap, f"recv_full completed with {n} of {cap} bytes"
        elif isinstance(err, goaio.RecvTimeout):
            self.stats["timeouts_hit"] += 1
            assert op.tmo, "RecvTimeout without a receive timeout"
            if op.kind == "recv":
                assert n == 0, "a recv timed out with a partial count"
            else:
                assert n < cap
        elif isinstance(err, EOFError):
            assert m.peer_state in ("shut", "reset"), (
                f"EOF while the peer's write side is open ({op.kind} {op.seq}, {n} bytes, "
                f"closed={m.closed}, peer sent {len(m.peer_sent)}, read {m.recv_off})")
            if m.peer_state == "shut":
                assert m.recv_off == len(m.peer_sent), (
                    f"EOF after {m.recv_off} of {len(m.peer_sent)} bytes the peer sent")
            m.eof_seen = True
        elif isinstance(err, ConnectionResetError):
            assert m.peer_state == "reset", f"{err!r} while the peer did not reset"
        elif self._is_reason(m, err):
            pass
        else:
            raise AssertionError(f"unexpected receive error {err!r} (peer {m.peer_state}, closed {m.closed})")
        if self._is_reason(m, err) and op.kind == "recv":
            assert n == 0, f"a recv failed by the close carries {n} bytes"
        self._order(m, "r", op, err, goaio.RecvTimeout)

    def _on_send(self, m, op, res, n, err):
        assert res.buff is op.buff, "res.buff is not the buffer given"
        total = len(op.data)
        assert 0 <= n <= total, (n, total)
        op.n = n
        self.stats["bytes_out"] += n
        if err is None:
            assert total > 0, "an empty send completed without EmptyBuffer"
            assert n == total, f"send completed with {n} of {total} bytes"
        elif isinstance(err, goaio.EmptyBuffer):
            assert total == 0 and n == 0
        elif isinstance(err, goaio.SendTimeout):
            self.stats["timeouts_hit"] += 1
            assert op.tmo or op.cascade, "SendTimeout without a send timeout"
            for o in m.outstanding.values():
                if o.kind == "send" and o.seq > op.seq:
                    o.cascade = True
        elif isinstance(err, (BrokenPipeError, ConnectionResetError)):
            assert m.peer_state == "reset", f"{err!r} while the peer did not reset"
        elif self._is_reason(m, err):
            pass
        else:
            raise AssertionError(f"unexpected send error {err!r}")
        self._order(m, "s", op, err, goaio.SendTimeout)

    # -------------------------------------------------------------- invariants

    @invariant()
    def pool_matches_model(self):
        self.stats["steps"] += 1
        if self.pool is None:
            return
        held = len(self.held)
        pending = sum(1 for m in self.conns for op in m.outstanding.values() if op.share)
        out = self.pool.outstanding
        assert held <= out <= held + pending, f"pool out {out}, model holds {held}, {pending} share recvs pending"

    @invariant()
    def stats_match_model(self):
        if self.svc is None:
            return
        s = self.svc._stats()
        assert s["conns"] == sum(not m.closed for m in self.conns), s
        assert s["live_ops"] <= sum(len(m.outstanding) for m in self.conns), s

    @invariant()
    def peer_reads_a_prefix(self):
        for m in self.conns:
            if m.peer_got:
                wire = m.expected_wire()
                assert m.peer_got == wire[:len(m.peer_got)], (
                    f"conn {m.idx}: the peer read bytes that were not sent (or not in order)")

    # -------------------------------------------------------------- teardown

    def teardown(self):
        try:
            if self.svc is not None:
                self._drain()
        finally:
            if self.svc is not None:
                close_service(self.svc)
            for buff in self.held.values():
                self.pool.release(buff)
            self.held.clear()
            self.pairs.close()

    def _drain(self):
        for m in self.conns:
            if not m.closed:
                self._close(m, None)
        deadline = time.monotonic() + WAIT
        while any(m.outstanding for m in self.conns):
            left = deadline - time.monotonic()
            assert left > 0, "operations never completed: " + repr(
                [(m.idx, list(m.outstanding)) for m in self.conns if m.outstanding])
            for res in self.svc.get_complete_statuses(64, timeout=min(left, 0.5)):
                self._on_result(res)
        assert self.svc.get_complete_status(timeout=0.02) is None, "an extra result after every op completed"
        s = self.svc._stats()
        assert s["live_ops"] == 0 and s["conns"] == 0, s
        self.pool_matches_model()
        for m in self.conns:
            self._final_peer_check(m)
        close_service(self.svc)
        assert_service_drained(self.svc)
        for buff in self.held.values():
            self.pool.release(buff)
        self.held.clear()
        assert self.pool.outstanding == 0, self.pool

    def _final_peer_check(self, m):
        """After the close: the peer reads the sends' reported bytes, then EOF
        (or, when goaio's side closed with unread input, a reset: a prefix)."""
        wire, complete = m.completed_wire()
        assert complete
        if m.peer_rd == "open":
            m.peer.settimeout(WAIT)
            try:
                while True:
                    chunk = m.peer.recv(1 << 20)
                    if not chunk:
                        m.peer_rd = "eof"
                        break
                    m.peer_got += chunk
            except ConnectionResetError:
                m.peer_rd = "broken"
        if m.peer_rd == "eof":
            assert m.peer_got == wire, (
                f"conn {m.idx}: the peer read {len(m.peer_got)} bytes, the sends reported {len(wire)}")
        elif m.peer_rd == "broken":
            assert m.peer_got == wire[:len(m.peer_got)]
            assert m.recv_off < len(m.peer_sent), "a reset although goaio read all its input"


# ---------------------------------------------------------------- tests

#: Shrinking replays real IO hundreds of times (minutes): off unless
#: GOAIO_SHRINK=1; a failure then shows the sequence of steps as generated.
PHASES = [Phase.explicit, Phase.reuse, Phase.generate] + (
    [Phase.shrink] if os.environ.get("GOAIO_SHRINK") == "1" else [])

QUICK = settings(
    # GOAIO_STATEFUL_EXAMPLES: fewer under valgrind (scripts/sanitize.sh), more by hand
    max_examples=int(os.environ.get("GOAIO_STATEFUL_EXAMPLES", "40")),
    phases=PHASES,
    stateful_step_count=50,
    deadline=None,
    database=None,
    derandomize=False,
    suppress_health_check=list(HealthCheck),
)
LONG = settings(
    QUICK,
    max_examples=400,
    stateful_step_count=80,
)


def _machine(backend):
    return type(f"GoaioMachine_{backend.name}", (GoaioMachine,), {"backend": backend})


def _run(backend, profile):
    before = dict(TOTALS)
    run_state_machine_as_test(_machine(backend), settings=profile)
    print(backend.name, {k: TOTALS[k] - before[k] for k in TOTALS})


def test_state_machine(backend):
    _run(backend, QUICK)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_state_machine_long(backend):
    extend_hang_guard(1800)
    _run(backend, LONG)
