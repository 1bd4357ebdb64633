"""Buffers accepted and refused at post time, gather IO, pinning."""

import array
import mmap

import pytest
from hypothesis import given, strategies as st

import goaio
from support import Reader, assert_no_result, collect, collect_one, recv_exactly


# ---------------------------------------------------------------- receive buffers

def test_recv_into_bytearray(backend, svc, connect):
    conn, peer = connect()
    buf = bytearray(10)
    peer.sendall(b"hello")
    conn.recv("ctx", buf)
    res = collect_one(svc)
    assert res.conn is conn and res.context == "ctx" and res.buff is buf
    assert (res.err, res.bytes_transferred) == (None, 5)
    assert buf == b"hello\0\0\0\0\0"


def test_recv_into_memoryview_slice_writes_only_the_slice(backend, svc, connect):
    conn, peer = connect()
    backing = bytearray(b"#" * 20)
    view = memoryview(backing)[5:10]
    peer.sendall(b"0123456789")
    conn.recv_full("ctx", view)
    res = collect_one(svc)
    assert res.buff is view
    assert (res.err, res.bytes_transferred) == (None, 5)
    assert backing == b"#####01234##########"
    conn.recv_full("ctx2", memoryview(backing)[:5])
    res = collect_one(svc)
    assert backing[:5] == b"56789"


def test_recv_into_array(backend, svc, connect):
    conn, peer = connect()
    arr = array.array("i", [0] * 4)  # 16 bytes
    payload = array.array("i", [1, -2, 3, 1 << 30]).tobytes()
    peer.sendall(payload)
    conn.recv_full(None, arr)
    res = collect_one(svc)
    assert (res.err, res.bytes_transferred) == (None, 16)
    assert list(arr) == [1, -2, 3, 1 << 30]


def test_recv_into_mmap(backend, svc, connect):
    conn, peer = connect()
    m = mmap.mmap(-1, 4096)
    try:
        peer.sendall(b"mapped")
        conn.recv_full(None, memoryview(m)[:6])
        res = collect_one(svc)
        assert res.err is None
        del res
        assert m[:6] == b"mapped"
    finally:
        m.close()


def test_recv_gather_list_fills_in_order(backend, svc, connect):
    conn, peer = connect()
    a, b = bytearray(3), bytearray(4)
    c = array.array("b", [0] * 5)
    bufs = [a, memoryview(b), c]
    peer.sendall(b"abcdefghijkl")
    conn.recv_full("g", bufs)
    res = collect_one(svc)
    assert res.buff is bufs  # exactly the list given
    assert (res.err, res.bytes_transferred) == (None, 12)
    assert (a, b, c.tobytes()) == (b"abc", b"defg", b"hijkl")


def test_recv_gather_partial_read(backend, svc, connect):
    conn, peer = connect()
    a, b = bytearray(3), bytearray(10)
    peer.sendall(b"12345")
    conn.recv("g", [a, b])
    res = collect_one(svc)
    assert (res.err, res.bytes_transferred) == (None, 5)
    assert a == b"123" and b[:2] == b"45"


def test_recv_list_with_zero_length_items(backend, svc, connect):
    conn, peer = connect()
    a, b = bytearray(0), bytearray(4)
    peer.sendall(b"wxyz")
    conn.recv_full(None, [a, b, bytearray()])
    res = collect_one(svc)
    assert (res.err, res.bytes_transferred, bytes(b)) == (None, 4, b"wxyz")


READ_ONLY = [b"abc", memoryview(b"abc"), memoryview(bytearray(3)).toreadonly()]


@pytest.mark.parametrize("method", ["recv", "recv_full"])
@pytest.mark.parametrize("buf", READ_ONLY, ids=["bytes", "mv-bytes", "mv-readonly"])
def test_recv_read_only_buffer_is_type_error(backend, svc, connect, method, buf):
    conn, _peer = connect()
    with pytest.raises(TypeError):
        getattr(conn, method)(None, buf)
    with pytest.raises(TypeError):
        getattr(conn, method)(None, [bytearray(2), buf])
    assert_no_result(svc, 0.05)


@pytest.mark.parametrize("method", ["recv", "recv_full", "send"])
@pytest.mark.parametrize("buf", [123, "text", 1.5, object(), (bytearray(2),), {"a": 1}],
                         ids=["int", "str", "float", "object", "tuple", "dict"])
def test_non_buffer_is_type_error(backend, svc, connect, method, buf):
    conn, _peer = connect()
    with pytest.raises(TypeError):
        getattr(conn, method)(None, buf)
    with pytest.raises(TypeError):
        getattr(conn, method)(None, [bytearray(2), buf])
    assert_no_result(svc, 0.05)


@pytest.mark.parametrize("method", ["recv", "recv_full", "send"])
def test_non_contiguous_is_buffer_error(backend, svc, connect, method):
    conn, _peer = connect()
    nc = memoryview(bytearray(10))[::2]
    with pytest.raises(BufferError):
        getattr(conn, method)(None, nc)
    with pytest.raises(BufferError):
        getattr(conn, method)(None, [bytearray(2), nc])
    assert_no_result(svc, 0.05)


@pytest.mark.parametrize("method", ["recv", "recv_full"])
@pytest.mark.parametrize("buf", [bytearray(), memoryview(bytearray(5))[2:2], [], [bytearray(), bytearray()]],
                         ids=["bytearray", "empty-view", "empty-list", "list-of-empties"])
def test_zero_length_receive_is_empty_buffer(backend, svc, connect, method, buf):
    conn, _peer = connect()
    with pytest.raises(goaio.EmptyBuffer):
        getattr(conn, method)(None, buf)
    assert_no_result(svc, 0.05)


def test_recv_full_none_is_type_error(backend, svc, connect):
    conn, _peer = connect()
    with pytest.raises(TypeError):
        conn.recv_full(None, None)
    with pytest.raises(TypeError):
        conn.recv_full(None)


def test_send_none_is_type_error(backend, svc, connect):
    conn, _peer = connect()
    with pytest.raises(TypeError):
        conn.send(None, None)


def test_refused_post_leaves_nothing_posted(backend, svc, connect):
    """A refused call takes no queue slot and yields no result."""
    conn, peer = connect(recvq_size=1, sendq_size=1)
    for bad in (b"ro", bytearray(), memoryview(bytearray(4))[::2], 7):
        with pytest.raises((TypeError, BufferError, ValueError)):
            conn.recv(None, bad)
    buf = bytearray(4)
    conn.recv("ok", buf)  # the only slot is still free
    peer.sendall(b"data")
    res = collect_one(svc)
    assert (res.context, res.err) == ("ok", None)
    assert_no_result(svc)


def test_buffer_checked_before_queue(backend, svc, connect):
    """A bad buffer on a full queue is TypeError/BufferError/EmptyBuffer, not Busy."""
    conn, _peer = connect(recvq_size=1, sendq_size=1)
    conn.recv("pending", bytearray(4))
    with pytest.raises(TypeError):
        conn.recv(None, b"read-only")
    with pytest.raises(BufferError):
        conn.recv(None, memoryview(bytearray(4))[::2])
    with pytest.raises(goaio.EmptyBuffer):
        conn.recv(None, bytearray())
    with pytest.raises(goaio.Busy):
        conn.recv(None, bytearray(4))


# ---------------------------------------------------------------- send buffers

@pytest.mark.parametrize(
    "make",
    [
        lambda d: d,
        bytearray,
        memoryview,
        lambda d: memoryview(b"xx" + d + b"yy")[2:-2],
        lambda d: array.array("B", d),
        lambda d: memoryview(bytearray(d)).toreadonly(),
    ],
    ids=["bytes", "bytearray", "memoryview", "mv-slice", "array", "readonly-view"],
)
def test_send_buffer_kinds(backend, svc, connect, make):
    conn, peer = connect()
    data = bytes(range(256)) * 4
    buf = make(data)
    conn.send("s", buf)
    res = collect_one(svc)
    assert res.buff is buf
    assert (res.err, res.bytes_transferred) == (None, len(data))
    assert recv_exactly(peer, len(data)) == data


def test_send_gather_list(backend, svc, connect):
    conn, peer = connect()
    parts = [b"one", bytearray(b"two"), memoryview(b"three"), array.array("B", b"four"), b""]
    conn.send("g", parts)
    res = collect_one(svc)
    assert res.buff is parts
    assert (res.err, res.bytes_transferred) == (None, 15)
    assert recv_exactly(peer, 15) == b"onetwothreefour"


@pytest.mark.parametrize("buf", [b"", bytearray(), [], [b"", bytearray()]],
                         ids=["bytes", "bytearray", "empty-list", "list-of-empties"])
def test_empty_send_completes_with_empty_buffer(backend, svc, connect, buf):
    conn, peer = connect()
    conn.send("e", buf)
    res = collect_one(svc)
    assert isinstance(res.err, goaio.EmptyBuffer)
    assert isinstance(res.err, ValueError)
    assert res.bytes_transferred == 0
    assert res.buff is buf and res.context == "e"
    assert not conn.closed


def test_empty_send_keeps_its_place_in_order(backend, svc, connect):
    conn, peer = connect()
    conn.send(1, b"first-")
    conn.send(2, b"")
    conn.send(3, b"second")
    results = collect(svc, 3)
    assert [r.context for r in results] == [1, 2, 3]
    assert [type(r.err) for r in results] == [type(None), goaio.EmptyBuffer, type(None)]
    assert recv_exactly(peer, 12) == b"first-second"


# ---------------------------------------------------------------- pinning

@pytest.mark.parametrize("method", ["recv", "recv_full"])
def test_resizing_pending_recv_buffer_is_buffer_error(backend, svc, connect, method):
    conn, peer = connect()
    buf = bytearray(8)
    getattr(conn, method)("r", buf)
    with pytest.raises(BufferError):
        buf.extend(b"more")
    with pytest.raises(BufferError):
        del buf[:4]
    assert len(buf) == 8
    peer.sendall(b"12345678")
    res = collect_one(svc)
    del res
    assert buf == b"12345678"
    buf.extend(b"!")  # allowed once the op completed
    del buf[:2]
    assert buf == b"345678!"


def test_resizing_buffer_inside_pending_list_is_buffer_error(backend, svc, connect):
    conn, peer = connect()
    a, b = bytearray(2), bytearray(2)
    conn.recv_full("r", [a, b])
    with pytest.raises(BufferError):
        b.append(0)
    peer.sendall(b"abcd")
    collect_one(svc)
    b.append(0)
    assert (a, b) == (b"ab", b"cd\0")


def test_resizing_pending_send_buffer_is_buffer_error(backend, svc, connect):
    conn, peer = connect(small=True)
    data = bytearray(b"z" * (8 << 20))  # far more than the small socket buffers hold
    conn.send("s", data)
    with pytest.raises(BufferError):
        data.extend(b"x")
    with pytest.raises(BufferError):
        data.clear()
    reader = Reader(peer, len(data))
    res = collect_one(svc)
    assert (res.err, res.bytes_transferred) == (None, 8 << 20)
    del res
    data.clear()  # allowed after completion
    assert reader.result() == b"z" * (8 << 20)


def test_resize_allowed_after_close(backend, svc, connect):
    conn, _peer = connect()
    buf = bytearray(8)
    conn.recv("r", buf)
    conn.close()
    res = collect_one(svc)
    assert isinstance(res.err, goaio.ConnClosed)
    del res
    buf.extend(b"ok")


def test_resize_allowed_after_timeout(backend, svc, connect):
    conn, _peer = connect()
    buf = bytearray(8)
    conn.set_recv_timeout(0.05)
    conn.recv("r", buf)
    res = collect_one(svc)
    assert isinstance(res.err, goaio.RecvTimeout)
    del res
    buf.extend(b"ok")


# ---------------------------------------------------------------- properties

@given(
    send_sizes=st.lists(st.integers(0, 70000), min_size=1, max_size=6),
    recv_sizes=st.lists(st.integers(1, 70000), min_size=1, max_size=6),
    as_list=st.booleans(),
)
def test_gather_roundtrip_property(backend, send_sizes, recv_sizes, as_list):
    """Any shape of send list, received by any shape of recv_full list, is byte-exact."""
    import os

    from support import Pairs

    payload = [os.urandom(n) for n in send_sizes]
    total = sum(send_sizes)
    if total == 0:
        return
    # Receive buffers covering exactly `total` bytes.
    shapes, left = [], total
    for n in recv_sizes:
        if left == 0:
            break
        shapes.append(min(n, left))
        left -= shapes[-1]
    if left:
        shapes.append(left)
    bufs = [bytearray(n) for n in shapes]
    p = Pairs()
    try:
        with backend.AIOService() as svc:
            sock_a, peer_a = p()
            sock_b, peer_b = p()
            sender, receiver = svc.bind(sock_a), svc.bind(sock_b)
            receiver.recv_full("r", bufs if as_list or len(bufs) > 1 else bufs[0])
            sender.send("s", payload if as_list else b"".join(payload))
            reader = Reader(peer_a, total)
            out = reader.result()
            peer_b.sendall(out)
            results = {r.context: r for r in collect(svc, 2)}
            assert results["s"].err is None and results["s"].bytes_transferred == total
            assert results["r"].err is None and results["r"].bytes_transferred == total
            assert b"".join(bufs) == b"".join(payload)
    finally:
        p.close()


# ---------------------------------------------------------------- numpy (when installed)

def test_numpy_arrays(backend, svc, connect):
    np = pytest.importorskip("numpy")
    conn, peer = connect()
    arr = np.zeros(4, dtype=np.int32)
    payload = np.array([7, -1, 1 << 20, 3], dtype=np.int32)
    peer.sendall(payload.tobytes())
    conn.recv_full("r", arr)
    res = collect_one(svc)
    assert (res.err, res.bytes_transferred) == (None, 16)
    assert (arr == payload).all()
    # a strided view is not C-contiguous
    with pytest.raises(BufferError):
        conn.recv(None, np.zeros(8, dtype=np.uint8)[::2])
    # a read-only array cannot be received into
    ro = np.zeros(8, dtype=np.uint8)
    ro.flags.writeable = False
    with pytest.raises(TypeError):
        conn.recv(None, ro)
    # but it can be sent, also inside a list
    out = np.arange(16, dtype=np.uint8)
    conn.send("s", [out, ro])
    res = collect_one(svc)
    assert (res.err, res.bytes_transferred) == (None, 24)
    assert recv_exactly(peer, 24) == out.tobytes() + bytes(8)
