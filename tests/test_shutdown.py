"""conn.shutdown: half-close as a send-queue entry (SPEC "Half-close, cancellation, addresses")."""

import os
import time

import pytest

import goaio
from goaio import _messages as M
from support import (
    Reader,
    assert_no_result,
    assert_nothing_to_read,
    collect,
    collect_one,
    recv_exactly,
    recv_until_eof,
)

MIB = 1 << 20


def test_shutdown_after_mib_sends_is_ordered_after_them(backend, svc, connect, family):
    conn, peer = connect(family)
    chunks = [os.urandom(MIB) for _ in range(3)] + [os.urandom(3 * MIB + 17)]
    for i, c in enumerate(chunks):
        conn.send(("s", i), c)
    conn.shutdown("sd")
    reader = Reader(peer)              # reads until EOF
    results = collect(svc, len(chunks) + 1)
    assert [r.context for r in results] == [("s", i) for i in range(len(chunks))] + ["sd"]
    for r, c in zip(results, chunks):
        assert r.err is None and r.bytes_transferred == len(c)
    sd = results[-1]
    assert sd.err is None
    assert sd.conn is conn
    assert sd.buff is None
    assert sd.bytes_transferred == 0
    assert reader.result() == b"".join(chunks)   # every byte, then EOF
    assert not conn.closed
    assert_no_result(svc)


def test_shutdown_with_nothing_pending(backend, svc, connect, family):
    conn, peer = connect(family)
    conn.shutdown("sd")
    res = collect_one(svc)
    assert res.context == "sd" and res.err is None
    assert recv_until_eof(peer) == b""


def test_send_after_shutdown_raises_broken_pipe_at_the_call(backend, svc, connect):
    conn, peer = connect()
    conn.shutdown("sd")
    assert collect_one(svc).err is None
    with pytest.raises(BrokenPipeError) as ei:
        conn.send("late", b"x")
    assert str(ei.value) == M.SEND_AFTER_SHUTDOWN
    with pytest.raises(BrokenPipeError):
        conn.send("late-list", [b"a", b"b"])
    with pytest.raises(BrokenPipeError):
        conn.shutdown("again")
    assert_no_result(svc)
    assert recv_until_eof(peer) == b""


def test_send_while_shutdown_pending_raises_broken_pipe(backend, svc, connect):
    conn, peer = connect(small=True)
    conn.send("big", b"z" * (8 * MIB))    # the peer does not read yet
    conn.shutdown("sd")
    with pytest.raises(BrokenPipeError):
        conn.send("late", b"x")
    reader = Reader(peer)
    results = collect(svc, 2)
    assert [r.context for r in results] == ["big", "sd"]
    assert all(r.err is None for r in results)
    assert reader.result() == b"z" * (8 * MIB)


def test_receives_keep_working_after_shutdown(backend, svc, connect, family):
    conn, peer = connect(family)
    buf = bytearray(5)
    conn.recv_full("before", buf)        # pending across the shutdown
    conn.shutdown("sd")
    assert collect_one(svc).context == "sd"
    assert recv_until_eof(peer) == b""   # the peer saw our EOF ...
    peer.sendall(b"hello")                # ... and can still talk to us
    res = collect_one(svc)
    assert res.context == "before" and res.err is None and bytes(buf) == b"hello"
    buf2 = bytearray(64)
    conn.recv("after", buf2)
    peer.sendall(b"world")
    res = collect_one(svc)
    assert res.err is None and bytes(buf2[:res.bytes_transferred]) == b"world"
    peer.close()
    conn.recv("eof", bytearray(8))
    assert isinstance(collect_one(svc).err, EOFError)


def test_failed_send_before_shutdown_fails_it_and_nothing_is_shut_down(backend, svc, connect):
    conn, peer = connect(small=True)
    conn.set_send_timeout(0.3)
    conn.send("big", b"q" * (16 * MIB))   # the peer does not read: times out
    conn.shutdown("sd")
    results = collect(svc, 2)
    assert [r.context for r in results] == ["big", "sd"]
    big, sd = results
    assert type(big.err) is goaio.SendTimeout
    assert type(sd.err) is type(big.err)
    assert sd.bytes_transferred == 0
    sent = big.bytes_transferred
    assert 0 < sent < 16 * MIB
    # the stream holds exactly the bytes reported, and no EOF follows them
    assert recv_exactly(peer, sent) == b"q" * sent
    assert_nothing_to_read(peer, 0.3)
    # the connection is not shut down: sending goes on
    conn.set_send_timeout(0)
    conn.send("again", b"more")
    assert collect_one(svc).err is None
    assert recv_exactly(peer, 4) == b"more"


def test_shutdown_on_closed_connection_raises(backend, svc, connect):
    conn, _peer = connect()
    conn.close()
    with pytest.raises(goaio.ConnClosed):
        conn.shutdown("sd")


def test_shutdown_on_closed_service_raises(backend, pairs):
    svc = backend.AIOService()
    sock, _peer = pairs()
    conn = svc.bind(sock)
    svc.close()
    with pytest.raises(goaio.ServiceClosed):
        conn.shutdown("sd")


def test_shutdown_takes_a_place_in_the_send_queue(backend, svc, connect):
    conn, peer = connect(small=True, sendq_size=1)
    conn.send("big", b"w" * (8 * MIB))
    with pytest.raises(goaio.Busy):
        conn.shutdown("sd")
    reader = Reader(peer, n=8 * MIB)
    assert collect_one(svc).err is None
    reader.result()
    conn.shutdown("sd")
    assert collect_one(svc).err is None


def test_close_with_shutdown_pending_completes_it_with_the_reason(backend, svc, connect):
    conn, _peer = connect(small=True)
    conn.send("big", b"w" * (8 * MIB))
    conn.shutdown("sd")
    time.sleep(0.05)
    conn.close()
    results = collect(svc, 2)
    assert [r.context for r in results] == ["big", "sd"]
    assert all(type(r.err) is goaio.ConnClosed for r in results)
    assert_no_result(svc)
