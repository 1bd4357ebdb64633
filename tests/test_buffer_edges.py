"""Buffers at the edges: gather lists that start with many empty entries
(more than one readv/writev takes), and buffers that can no longer be
exported (a released memoryview, a closed mmap).
"""

import mmap

import pytest

from support import collect_one, recv_exactly

#: more empty entries than one readv/writev takes (IOV_MAX is 1024 on Linux)
MANY = 1100


@pytest.mark.parametrize("method", ["recv", "recv_full"])
def test_recv_list_starting_with_many_empty_buffers(backend, svc, connect, method):
    """The empty entries are skipped: the data lands in the first non-empty
    buffer; nothing is taken for EOF."""
    conn, peer = connect()
    data = bytearray(5)
    bufs = [bytearray(0) for _ in range(MANY)] + [data]
    getattr(conn, method)("r", bufs)
    peer.sendall(b"hello")
    res = collect_one(svc)
    assert (res.err, res.bytes_transferred, bytes(data)) == (None, 5, b"hello"), res.err
    # and the connection is not at EOF
    conn.recv("next", bytearray(4))
    peer.sendall(b"more")
    res = collect_one(svc)
    assert (res.context, res.err, bytes(res.buff)) == ("next", None, b"more"), res.err


def test_recv_list_with_empty_entries_between(backend, svc, connect):
    conn, peer = connect()
    bufs = []
    for _ in range(3):
        bufs += [bytearray(0)] * 600 + [bytearray(2)]
    conn.recv_full("r", bufs)
    peer.sendall(b"abcdef")
    res = collect_one(svc)
    assert (res.err, res.bytes_transferred) == (None, 6)
    assert b"".join(bufs) == b"abcdef"


def test_send_list_starting_with_many_empty_buffers(backend, svc, connect):
    conn, peer = connect()
    conn.send("s", [b""] * MANY + [b"data"] + [b""] * MANY + [b"!"])
    assert recv_exactly(peer, 5) == b"data!"
    res = collect_one(svc)
    assert (res.err, res.bytes_transferred) == (None, 5)


def released_view():
    m = memoryview(bytearray(8))
    m.release()
    return m


def closed_mmap():
    m = mmap.mmap(-1, 4096)
    m.close()
    return m


@pytest.mark.parametrize("make", [released_view, closed_mmap], ids=["released-memoryview", "closed-mmap"])
@pytest.mark.parametrize("method", ["recv", "recv_full", "send"])
@pytest.mark.parametrize("as_list", [False, True], ids=["single", "in-list"])
def test_posting_a_dead_buffer_is_value_error(backend, svc, connect, make, method, as_list):
    """Decided: a buffer that cannot be exported any more is ValueError (what
    memoryview() raises for it), at the call, leaving nothing posted."""
    conn, peer = connect()
    buf = make()
    with pytest.raises(ValueError):
        getattr(conn, method)("x", [bytearray(4), buf] if as_list else buf)
    assert svc._stats()["live_ops"] == 0
