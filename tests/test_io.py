"""Receiving and sending: completion rules, order, large and concurrent IO, EOF, reset."""

import hashlib
import os
import random
import signal
import struct
import threading
import time

import pytest

from support import (
    WAIT,
    Reader,
    assert_no_result,
    collect,
    collect_one,
    recv_exactly,
    reset,
    run_python,
)


# ---------------------------------------------------------------- completion rules

def test_recv_completes_after_one_read(backend, svc, connect):
    conn, peer = connect()
    buf = bytearray(100)
    conn.recv("r", buf)
    assert_no_result(svc, 0.1)  # nothing to read yet
    peer.sendall(b"abc")
    res = collect_one(svc)
    assert (res.err, res.bytes_transferred, bytes(buf[:3])) == (None, 3, b"abc")


def test_recv_returns_at_most_the_buffer(backend, svc, connect):
    conn, peer = connect()
    peer.sendall(b"0123456789")
    a, b = bytearray(4), bytearray(100)
    conn.recv(1, a)
    conn.recv(2, b)
    r1, r2 = collect(svc, 2)
    assert (r1.context, r1.bytes_transferred, bytes(a)) == (1, 4, b"0123")
    assert (r2.context, r2.bytes_transferred, bytes(b[:6])) == (2, 6, b"456789")


def test_recv_full_waits_for_every_byte(backend, svc, connect):
    conn, peer = connect()
    buf = bytearray(9)
    conn.recv_full("f", buf)
    for piece in (b"abc", b"def", b"gh"):
        peer.sendall(piece)
        assert_no_result(svc, 0.05)
    peer.sendall(b"i")
    res = collect_one(svc)
    assert (res.err, res.bytes_transferred, bytes(buf)) == (None, 9, b"abcdefghi")


def test_send_completes_with_full_count(backend, svc, connect):
    conn, peer = connect()
    conn.send("s", b"x" * 100000)
    res = collect_one(svc)
    assert (res.err, res.bytes_transferred) == (None, 100000)
    assert recv_exactly(peer, 100000) == b"x" * 100000


def test_each_op_completes_exactly_once(backend, svc, connect):
    conn, peer = connect()
    for i in range(10):
        conn.send(("s", i), b"%d," % i)
        conn.recv(("r", i), bytearray(1))
    peer.sendall(b"0123456789")
    results = collect(svc, 20)
    assert sorted(r.context for r in results) == sorted([("s", i) for i in range(10)] + [("r", i) for i in range(10)])
    assert_no_result(svc)


def test_data_before_any_recv_waits_without_spinning(backend, svc, connect):
    """Unread data with nothing posted: no busy loop, and a later recv gets it."""
    conn, peer = connect()
    peer.sendall(b"early")
    time.sleep(0.05)
    cpu0, t0 = time.process_time(), time.monotonic()
    time.sleep(0.5)
    cpu = time.process_time() - cpu0
    assert cpu < 0.15 * (time.monotonic() - t0) + 0.02, f"{cpu:.3f}s CPU while idle"
    buf = bytearray(16)
    conn.recv("late", buf)
    res = collect_one(svc)
    assert bytes(buf[: res.bytes_transferred]) == b"early"


def test_hangup_with_nothing_posted_does_not_spin(backend, svc, connect):
    conn, peer = connect()
    peer.close()
    time.sleep(0.05)
    cpu0, t0 = time.process_time(), time.monotonic()
    time.sleep(0.5)
    cpu = time.process_time() - cpu0
    assert cpu < 0.15 * (time.monotonic() - t0) + 0.02, f"{cpu:.3f}s CPU while idle after hang-up"
    conn.recv(None, bytearray(4))
    assert isinstance(collect_one(svc).err, EOFError)


def test_reset_with_nothing_posted_does_not_spin(backend, svc, connect):
    conn, peer = connect()
    reset(peer)
    time.sleep(0.05)
    cpu0, t0 = time.process_time(), time.monotonic()
    time.sleep(0.5)
    cpu = time.process_time() - cpu0
    assert cpu < 0.15 * (time.monotonic() - t0) + 0.02, f"{cpu:.3f}s CPU while idle after reset"


# ---------------------------------------------------------------- order

def test_recvs_complete_in_posting_order(backend, svc, connect):
    conn, peer = connect(recvq_size=64)
    bufs = [bytearray(4) for _ in range(64)]
    for i, b in enumerate(bufs):
        conn.recv_full(i, b)
    data = os.urandom(256)
    for i in range(0, 256, 7):
        peer.sendall(data[i:i + 7])
    results = collect(svc, 64)
    assert [r.context for r in results] == list(range(64))
    assert b"".join(bufs) == data


def test_plain_recvs_complete_in_order_and_lose_nothing(backend, svc, connect):
    conn, peer = connect(recvq_size=32)
    bufs = [bytearray(random.randint(1, 50)) for _ in range(32)]
    for i, b in enumerate(bufs):
        conn.recv(i, b)
    data = os.urandom(sum(map(len, bufs)))

    def feed():
        for i in range(0, len(data), 13):
            peer.sendall(data[i:i + 13])
            time.sleep(0.001)

    t = threading.Thread(target=feed)
    t.start()
    results = collect(svc, 32)
    t.join(WAIT)
    assert [r.context for r in results] == list(range(32))
    got = b"".join(bytes(r.buff[: r.bytes_transferred]) for r in results)
    assert got == data[: len(got)]
    assert len(got) >= 32


def test_sends_complete_in_posting_order(backend, svc, connect):
    conn, peer = connect(sendq_size=32)
    chunks = [os.urandom(random.randint(1, 100000)) for _ in range(32)]
    for i, c in enumerate(chunks):
        conn.send(i, c)
    total = sum(map(len, chunks))
    reader = Reader(peer, total)
    results = collect(svc, 32)
    assert [r.context for r in results] == list(range(32))
    assert all(r.err is None and r.bytes_transferred == len(c) for r, c in zip(results, chunks))
    assert reader.result() == b"".join(chunks)


def test_sends_from_many_threads_never_interleave(backend, svc, connect):
    """Each send's bytes are contiguous on the wire, and each thread's sends keep their order."""
    threads, per_thread = 4, 12
    conn, peer = connect(sendq_size=threads * per_thread)
    header = struct.Struct("!IIQ")
    sizes = {}
    go = threading.Barrier(threads)

    def record(tid, seq):
        n = random.Random(tid * 1000 + seq).randint(1, 300000)
        body = bytes([(tid * 31 + seq) & 0xFF]) * n
        return header.pack(tid, seq, n) + body

    for tid in range(threads):
        for seq in range(per_thread):
            sizes[tid, seq] = len(record(tid, seq))

    def poster(tid):
        go.wait()
        for seq in range(per_thread):
            conn.send((tid, seq), record(tid, seq))

    total = sum(sizes.values())
    reader = Reader(peer, total)
    ts = [threading.Thread(target=poster, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(WAIT)
    results = collect(svc, threads * per_thread, timeout=30)
    assert all(r.err is None and r.bytes_transferred == sizes[r.context] for r in results)
    wire = reader.result()
    pos, last = 0, {}
    while pos < len(wire):
        tid, seq, n = header.unpack_from(wire, pos)
        assert (tid, seq) in sizes, f"garbage header at {pos}: sends interleaved"
        body = wire[pos + header.size: pos + header.size + n]
        assert body == bytes([(tid * 31 + seq) & 0xFF]) * n, f"send {(tid, seq)} interleaved"
        assert seq == last.get(tid, -1) + 1, f"thread {tid}: send {seq} after {last.get(tid)}"
        last[tid] = seq
        pos += header.size + n
    assert pos == total and all(v == per_thread - 1 for v in last.values())


# ---------------------------------------------------------------- large and duplex

def _large_send(svc, conn, peer, size):
    data = os.urandom(size)
    conn.send("big", data)
    conn.send("tail", b"--tail--")
    reader = Reader(peer, size + 8, chunk=256 * 1024, delay=0.0005)  # a slow reader
    big, tail = collect(svc, 2, timeout=60)
    assert (big.context, big.err, big.bytes_transferred) == ("big", None, size)
    assert (tail.context, tail.err, tail.bytes_transferred) == ("tail", None, 8)
    wire = reader.result(timeout=60)
    assert len(wire) == size + 8
    assert hashlib.sha256(wire[:size]).digest() == hashlib.sha256(data).digest()
    assert wire[size:] == b"--tail--"


def test_16mib_send_to_slow_reader(backend, svc, connect):
    conn, peer = connect(small=True)
    _large_send(svc, conn, peer, 16 << 20)


@pytest.mark.slow
def test_64mib_send_to_slow_reader(backend, svc, connect):
    conn, peer = connect()
    _large_send(svc, conn, peer, 64 << 20)


def _duplex(backend, svc, connect, size, family="tcp"):
    conn, peer = connect(family)
    rng = random.Random(size)
    out_data, in_data = os.urandom(size), os.urandom(size)
    # Our side: sends in random chunks (some as lists), receives with recv_full in random chunks.
    sends, pos = [], 0
    while pos < size:
        n = min(rng.randint(1, 600000), size - pos)
        piece = out_data[pos:pos + n]
        sends.append([piece[: n // 2], piece[n // 2:]] if rng.random() < 0.3 else piece)
        pos += n
    recvs, pos = [], 0
    while pos < size:
        n = min(rng.randint(1, 600000), size - pos)
        recvs.append(bytearray(n))
        pos += n

    peer_in = bytearray()
    errors = []

    def peer_writer():
        try:
            p = 0
            while p < size:
                n = rng.randint(1, 300000)
                peer.sendall(in_data[p:p + n])
                p += n
        except BaseException as exc:
            errors.append(exc)

    def peer_reader():
        try:
            peer_in.extend(recv_exactly(peer, size, timeout=60))
        except BaseException as exc:
            errors.append(exc)

    ts = [threading.Thread(target=peer_writer), threading.Thread(target=peer_reader)]
    for t in ts:
        t.start()
    # Post as queues allow, collecting as we go.
    results, si, ri, outstanding_s, outstanding_r = [], 0, 0, 0, 0
    deadline = time.monotonic() + 60
    while len(results) < len(sends) + len(recvs):
        while si < len(sends) and outstanding_s < 32:
            conn.send(("s", si), sends[si])
            si += 1
            outstanding_s += 1
        while ri < len(recvs) and outstanding_r < 32:
            conn.recv_full(("r", ri), recvs[ri])
            ri += 1
            outstanding_r += 1
        res = svc.get_complete_status(timeout=max(0.0, deadline - time.monotonic()))
        assert res is not None, "duplex transfer timed out"
        assert res.err is None, res.err
        results.append(res)
        if res.context[0] == "s":
            outstanding_s -= 1
        else:
            outstanding_r -= 1
    for t in ts:
        t.join(60)
    assert not errors, errors
    assert [r.context[1] for r in results if r.context[0] == "s"] == list(range(len(sends)))
    assert [r.context[1] for r in results if r.context[0] == "r"] == list(range(len(recvs)))
    assert bytes(peer_in) == out_data
    assert b"".join(recvs) == in_data


def test_full_duplex_mib_both_ways(backend, svc, connect):
    _duplex(backend, svc, connect, 6 << 20)


def test_full_duplex_unix(backend, svc, connect):
    _duplex(backend, svc, connect, 2 << 20, family="unix")


@pytest.mark.slow
def test_full_duplex_large(backend, svc, connect):
    _duplex(backend, svc, connect, 48 << 20)


# ---------------------------------------------------------------- EOF

def test_data_then_eof(backend, svc, connect):
    """All data completes first, then EOFError to every pending recv and every later one."""
    conn, peer = connect()
    peer.sendall(b"0123456789")
    peer.close()
    bufs = [bytearray(5), bytearray(5), bytearray(5), bytearray(5)]
    conn.recv_full(0, bufs[0])
    conn.recv_full(1, bufs[1])
    conn.recv(2, bufs[2])
    conn.recv_full(3, bufs[3])
    results = collect(svc, 4)
    assert [r.context for r in results] == [0, 1, 2, 3]
    assert [r.err for r in results[:2]] == [None, None]
    assert bufs[0] + bufs[1] == b"0123456789"
    for r in results[2:]:
        assert isinstance(r.err, EOFError) and r.bytes_transferred == 0
    assert results[2].err is not results[3].err  # a fresh instance per operation
    # ... and receives posted later, through the queue, not raised
    for i in range(3):
        conn.recv(("late", i), bytearray(5))
        res = collect_one(svc)
        assert isinstance(res.err, EOFError) and res.bytes_transferred == 0
    assert not conn.closed


def test_eof_with_recvs_pending(backend, svc, connect):
    conn, peer = connect()
    bufs = [bytearray(100) for _ in range(5)]
    for i, b in enumerate(bufs):
        conn.recv(i, b)
    peer.sendall(b"last words")
    peer.close()
    results = collect(svc, 5)
    assert [r.context for r in results] == list(range(5))
    got = b""
    seen_eof = False
    for r in results:
        if r.err is None:
            assert not seen_eof, "data completed after EOF"
            got += bytes(r.buff[: r.bytes_transferred])
        else:
            assert isinstance(r.err, EOFError), r.err
            seen_eof = True
    assert got == b"last words" and seen_eof


def test_recv_full_partial_then_eof(backend, svc, connect):
    conn, peer = connect()
    buf = bytearray(8)
    conn.recv_full("f", buf)
    peer.sendall(b"12345")
    peer.close()
    res = collect_one(svc)
    assert isinstance(res.err, EOFError)
    assert res.bytes_transferred == 5
    assert buf[:5] == b"12345"


def test_eof_share_buffer_returned(backend, svc, connect):
    pool = backend.BufferPool(1024)
    conn, peer = connect(share_buff=pool)
    peer.sendall(b"abc")
    peer.close()
    conn.recv(1)
    conn.recv(2)
    ok, eof = collect(svc, 2)
    assert ok.err is None and bytes(ok.buff[:3]) == b"abc"
    assert isinstance(eof.err, EOFError) and eof.buff is None
    assert pool.outstanding == 1
    pool.release(ok.buff)
    assert pool.outstanding == 0


def test_half_close_still_sends(backend, svc, connect):
    """After the peer shuts down its write side, our sends still go out."""
    import socket as _socket

    conn, peer = connect()
    peer.shutdown(_socket.SHUT_WR)
    conn.recv("r", bytearray(4))
    assert isinstance(collect_one(svc).err, EOFError)
    conn.send("s", b"still here")
    res = collect_one(svc)
    assert (res.err, res.bytes_transferred) == (None, 10)
    assert recv_exactly(peer, 10) == b"still here"


# ---------------------------------------------------------------- reset and dead peers

def test_peer_reset_with_recv_pending(backend, svc, connect):
    conn, peer = connect()
    conn.recv("r", bytearray(16))
    time.sleep(0.05)
    reset(peer)
    res = collect_one(svc)
    assert isinstance(res.err, ConnectionResetError), res.err
    assert res.bytes_transferred == 0
    assert not conn.closed
    # Errors are not sticky: the next read asks the kernel again and sees EOF.
    conn.recv("r2", bytearray(16))
    res = collect_one(svc)
    assert isinstance(res.err, EOFError), res.err


def test_peer_reset_fails_pending_sends_too(backend, svc, connect):
    conn, peer = connect(small=True)
    conn.recv("r", bytearray(16))
    conn.send("s1", b"x" * (8 << 20))  # pends: the peer does not read
    conn.send("s2", b"y" * 1000)
    time.sleep(0.1)
    reset(peer)
    results = {r.context: r for r in collect(svc, 3)}
    assert isinstance(results["r"].err, ConnectionResetError), results["r"].err
    for ctx in ("s1", "s2"):
        assert isinstance(results[ctx].err, (ConnectionResetError, BrokenPipeError)), (ctx, results[ctx].err)
    assert 0 < results["s1"].bytes_transferred < 8 << 20
    # later sends fail as the kernel says, and never raise
    conn.send("later", b"z")
    res = collect_one(svc)
    assert isinstance(res.err, (ConnectionResetError, BrokenPipeError)), res.err


def test_send_to_closed_peer_errors_not_hangs(backend, svc, connect):
    conn, peer = connect()
    peer.close()
    errors = []
    for i in range(50):
        conn.send(i, b"q" * 65536)
        res = collect_one(svc)
        if res.err is not None:
            errors.append(res.err)
            break
    assert errors, "writing to a closed peer never failed"
    assert isinstance(errors[0], (BrokenPipeError, ConnectionResetError)), errors[0]


SIGPIPE_CHILD = r"""
import importlib, signal, socket, struct, sys
signal.signal(signal.SIGPIPE, signal.SIG_DFL)
mod = importlib.import_module("goaio._" + sys.argv[1])
lst = socket.socket(); lst.bind(("127.0.0.1", 0)); lst.listen()
peer = socket.create_connection(lst.getsockname()); sock, _ = lst.accept(); lst.close()
svc = mod.AIOService()
conn = svc.bind(sock)
peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
peer.close()
errs = []
for i in range(100):
    conn.send(i, b"x" * 65536)
    res = svc.get_complete_status(timeout=5)
    assert res is not None, "send to a dead peer hung"
    if res.err is not None:
        errs.append(type(res.err).__name__)
        if len(errs) >= 3:
            break
conn.recv("r", bytearray(4))
res = svc.get_complete_status(timeout=5)
svc.close()
print("survived", errs)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGPIPE"), reason="no SIGPIPE here")
def test_no_sigpipe_with_default_handler(backend):
    proc = run_python(SIGPIPE_CHILD, argv=[backend.name])
    assert proc.returncode != -signal.SIGPIPE, "killed by SIGPIPE"
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("survived"), proc.stdout
    assert "BrokenPipeError" in proc.stdout or "ConnectionResetError" in proc.stdout, proc.stdout


# ---------------------------------------------------------------- signals

@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="no setitimer")
def test_eintr_storm_keeps_data_exact(backend, svc, connect):
    """A signal every few hundred microseconds of CPU: syscalls are retried, no byte is lost."""
    hits = [0]

    def handler(signum, frame):
        hits[0] += 1

    old = signal.signal(signal.SIGPROF, handler)
    signal.setitimer(signal.ITIMER_PROF, 0.0002, 0.0002)
    try:
        _duplex(backend, svc, connect, 2 << 20)
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        signal.signal(signal.SIGPROF, old)
    assert hits[0] > 0
