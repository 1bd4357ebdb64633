"""conn.cancel(context, reason): cancel by context identity (SPEC "Half-close,
cancellation, addresses")."""

import time

import pytest

import goaio
from goaio import _messages as M
from lifecycle_support import CountingShare
from support import (
    Reader,
    assert_no_result,
    assert_nothing_to_read,
    collect,
    collect_one,
    recv_exactly,
    wait_until,
)

MIB = 1 << 20


class Reason(Exception):
    pass


def _equal_but_distinct_pairs():
    """Pairs of objects that are equal (==) but not identical (is), made at run time."""
    t1 = tuple(["ctx", int("1000")])
    t2 = tuple(["ctx", int("1000")])
    i1, i2 = int("123456"), int("123456")
    s1, s2 = "".join(["con", "text"]), "".join(["con", "text"])
    out = [(t1, t2), (i1, i2)]
    if s1 is not s2:
        out.append((s1, s2))
    for a, b in out:
        assert a == b and a is not b
    return out


@pytest.mark.parametrize("which", ["tuple", "int"])
def test_cancel_matches_identity_not_equality(backend, svc, connect, which):
    conn, peer = connect()
    a, b = _equal_but_distinct_pairs()[0 if which == "tuple" else 1]
    bufs = [bytearray(8) for _ in range(3)]
    conn.recv(a, bufs[0])
    conn.recv(b, bufs[1])
    conn.recv(a, bufs[2])
    assert conn.cancel(b) == 1
    res = collect_one(svc, timeout=1.0)   # "now": it is in the queue already
    assert res.context is b
    assert type(res.err) is goaio.Cancelled
    assert str(res.err) == M.CANCELLED
    assert res.bytes_transferred == 0
    assert res.buff is bufs[1]
    assert res.conn is conn
    assert_no_result(svc)
    # the two receives posted with a still work, in order
    peer.sendall(b"12345678")
    res = collect_one(svc)
    assert res.context is a and res.buff is bufs[0] and res.err is None
    assert conn.cancel(a) == 1
    res = collect_one(svc, timeout=1.0)
    assert res.context is a and res.buff is bufs[2] and type(res.err) is goaio.Cancelled


def test_cancel_with_no_match_returns_zero(backend, svc, connect):
    conn, _peer = connect()
    assert conn.cancel("nothing") == 0
    conn.recv("r", bytearray(4))
    assert conn.cancel("other") == 0
    assert conn.cancel(("r",)) == 0
    assert_no_result(svc)
    assert conn.cancel("r") == 1
    assert collect_one(svc).context == "r"


def test_cancel_every_pending_op_of_that_context(backend, svc, connect):
    conn, peer = connect(small=True)
    ctx = object()
    other = object()
    conn.recv(ctx, bytearray(4))
    conn.recv(other, bytearray(4))
    conn.recv(ctx, bytearray(4))
    conn.send(other, b"s" * (8 * MIB))   # starts; the peer does not read
    time.sleep(0.05)
    assert conn.cancel(ctx) == 2
    results = collect(svc, 2, timeout=1.0)
    assert all(r.context is ctx and type(r.err) is goaio.Cancelled for r in results)
    assert len({id(r.err) for r in results}) == 2   # a fresh instance each
    assert_no_result(svc)
    reader = Reader(peer, n=8 * MIB)
    assert collect_one(svc).context is other        # the send
    assert reader.result() == b"s" * (8 * MIB)
    assert conn.cancel(other) == 1                  # the receive


def test_cancel_with_a_reason(backend, svc, connect):
    conn, _peer = connect()
    reason = Reason("user gave up")
    conn.recv("r", bytearray(4))
    conn.recv("r", bytearray(4))
    assert conn.cancel("r", reason) == 2
    for res in collect(svc, 2, timeout=1.0):
        assert res.err is reason


@pytest.mark.parametrize("bad", ["string", 5, Reason])
def test_cancel_bad_reason_is_type_error_and_cancels_nothing(backend, svc, connect, bad):
    conn, peer = connect()
    conn.recv("r", bytearray(4))
    with pytest.raises(TypeError):
        conn.cancel("r", bad)
    assert_no_result(svc, 0.1)
    peer.sendall(b"ok")
    assert collect_one(svc).err is None


def test_cancel_recv_full_reports_the_bytes_already_moved(backend, svc, connect, family):
    conn, peer = connect(family)
    buf = bytearray(10)
    conn.recv_full("rf", buf)
    peer.sendall(b"abcd")
    wait_until(lambda: bytes(buf[:4]) == b"abcd", msg="the first bytes to land")
    time.sleep(0.02)
    assert conn.cancel("rf") == 1
    res = collect_one(svc, timeout=1.0)
    assert type(res.err) is goaio.Cancelled
    assert res.bytes_transferred == 4
    assert res.buff is buf
    # the connection stays open and the stream goes on where it was
    buf2 = bytearray(6)
    conn.recv_full("rest", buf2)
    peer.sendall(b"efghij")
    res = collect_one(svc)
    assert res.err is None and bytes(buf2) == b"efghij"


def test_cancel_share_buffer_receives_give_nothing_away(backend, svc, connect):
    pool = backend.BufferPool(1024)
    conn, peer = connect(share_buff=pool)
    ctx = object()
    for _ in range(3):
        conn.recv(ctx, None)
    assert conn.cancel(ctx) == 3
    for res in collect(svc, 3, timeout=1.0):
        assert type(res.err) is goaio.Cancelled
        assert res.buff is None     # a failed recv(ctx, None) carries no buffer
    assert pool.stats()["out"] == 0
    conn.recv("later", None)
    peer.sendall(b"data")
    res = collect_one(svc)
    assert res.err is None and bytes(res.buff[:4]) == b"data"
    assert pool.stats()["out"] == 1
    pool.release(res.buff)


def test_cancel_share_buffer_counting(backend, svc, connect):
    share = CountingShare()
    conn, _peer = connect(share_buff=share)
    conn.recv("c", None)
    conn.recv("c", None)
    time.sleep(0.05)
    assert conn.cancel("c") == 2
    collect(svc, 2, timeout=1.0)
    assert share.out == 0


def test_cancel_a_started_send_is_like_its_send_timeout(backend, svc, connect):
    conn, peer = connect(small=True)
    a, b, c = object(), object(), object()
    conn.send(a, b"a" * (16 * MIB))    # starts at once; the peer does not read
    conn.send(b, b"b" * MIB)
    conn.send(c, b"c" * MIB)
    time.sleep(0.1)
    n = conn.cancel(a)
    results = collect(svc, 3, timeout=1.0)
    assert [r.context for r in results] == [a, b, c]
    # it and every send queued behind it complete; count includes them all
    assert n == 3
    assert all(type(r.err) is goaio.Cancelled for r in results)
    sent = results[0].bytes_transferred
    assert 0 < sent < 16 * MIB
    assert results[1].bytes_transferred == 0 and results[2].bytes_transferred == 0
    # the stream holds exactly the bytes reported
    assert recv_exactly(peer, sent) == b"a" * sent
    assert_nothing_to_read(peer, 0.3)
    # the connection stays open; a later send follows those bytes
    conn.send("tail", b"tail")
    assert collect_one(svc).err is None
    assert recv_exactly(peer, 4) == b"tail"
    assert not conn.closed


def test_cancel_a_queued_send_behind_a_started_one(backend, svc, connect):
    conn, peer = connect(small=True)
    a, x, c = object(), object(), object()
    conn.send(a, b"a" * (4 * MIB))     # started
    conn.send(x, b"x" * MIB)            # not started: just leaves the queue
    conn.send(c, b"c" * MIB)
    time.sleep(0.05)
    assert conn.cancel(x) == 1
    res = collect_one(svc, timeout=1.0)
    assert res.context is x and type(res.err) is goaio.Cancelled and res.bytes_transferred == 0
    reader = Reader(peer, n=5 * MIB)
    results = collect(svc, 2)
    assert [r.context for r in results] == [a, c]
    assert all(r.err is None for r in results)
    assert reader.result() == b"a" * (4 * MIB) + b"c" * MIB


def test_cancel_then_timeout_does_not_fire(backend, svc, connect):
    conn, _peer = connect()
    conn.set_recv_timeout(0.2)
    conn.recv("t", bytearray(4))
    assert conn.cancel("t") == 1
    assert type(collect_one(svc, timeout=1.0).err) is goaio.Cancelled
    assert_no_result(svc, 0.5)     # the cancelled op's timer never fires


def test_cancel_both_directions(backend, svc, connect):
    conn, peer = connect(small=True)
    ctx = object()
    conn.recv(ctx, bytearray(4))
    conn.send(ctx, b"d" * (8 * MIB))
    time.sleep(0.05)
    assert conn.cancel(ctx) == 2
    results = collect(svc, 2, timeout=1.0)
    assert {type(r.err) for r in results} == {goaio.Cancelled}
    send = [r for r in results if type(r.buff) is bytes][0]
    assert send.bytes_transferred > 0
    assert recv_exactly(peer, send.bytes_transferred) == b"d" * send.bytes_transferred
    assert_nothing_to_read(peer, 0.2)


def test_cancel_pending_shutdown_leaves_the_stream_open(backend, svc, connect):
    conn, peer = connect(small=True)
    sd = object()
    conn.send("big", b"b" * (8 * MIB))
    conn.shutdown(sd)
    assert conn.cancel(sd) == 1
    res = collect_one(svc, timeout=1.0)
    assert res.context is sd and type(res.err) is goaio.Cancelled
    reader = Reader(peer, n=8 * MIB + 4)
    assert collect_one(svc).context == "big"
    conn.send("after", b"more")          # not shut down: sending goes on
    assert collect_one(svc).err is None
    assert reader.result() == b"b" * (8 * MIB) + b"more"


def test_cancel_on_a_closed_connection_returns_zero(backend, svc, connect):
    conn, _peer = connect()
    conn.recv("r", bytearray(4))
    conn.close()
    collect_one(svc)
    assert conn.cancel("r") == 0


def test_connection_stays_open_after_cancel(backend, svc, connect, family):
    conn, peer = connect(family)
    conn.recv("c", bytearray(4))
    assert conn.cancel("c") == 1
    collect_one(svc, timeout=1.0)
    assert not conn.closed and conn.fd >= 0
    buf = bytearray(4)
    conn.recv_full("r", buf)
    conn.send("s", b"pong")
    peer.sendall(b"ping")
    got = {r.context: r for r in collect(svc, 2)}
    assert got["r"].err is None and bytes(buf) == b"ping"
    assert got["s"].err is None
    assert recv_exactly(peer, 4) == b"pong"
