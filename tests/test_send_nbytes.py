"""send(context, buff, nbytes=n): the first n bytes of one buffer, without a slice."""

import pytest

import goaio
from goaio import _messages as M

from support import assert_no_result, collect_one, recv_exactly


def test_nbytes_sends_the_prefix_and_reports_the_buffer(backend, svc, connect):
    conn, peer = connect()
    buf = bytearray(b"0123456789")
    conn.send("s", buf, nbytes=4)
    res = collect_one(svc)
    assert (res.err, res.bytes_transferred, res.context) == (None, 4, "s")
    assert res.buff is buf
    assert recv_exactly(peer, 4) == b"0123"
    peer.settimeout(0.1)
    with pytest.raises(TimeoutError):
        peer.recv(1)  # nothing past the prefix


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_nbytes_whole_and_none_are_the_whole_buffer(backend, svc, connect, kind):
    conn, peer = connect()
    data = kind(b"abcdef")
    conn.send(1, data, nbytes=6)
    conn.send(2, data, nbytes=None)
    r1, r2 = collect_one(svc), collect_one(svc)
    assert (r1.bytes_transferred, r2.bytes_transferred) == (6, 6)
    assert recv_exactly(peer, 12) == b"abcdefabcdef"


def test_nbytes_counts_bytes_of_a_wide_buffer(backend, svc, connect):
    conn, peer = connect()
    words = memoryview(bytearray(range(8))).cast("H")   # 4 items of 2 bytes
    conn.send("w", words, nbytes=3)
    res = collect_one(svc)
    assert (res.err, res.bytes_transferred) == (None, 3)
    assert recv_exactly(peer, 3) == bytes(range(3))


def test_nbytes_zero_is_an_empty_send(backend, svc, connect):
    conn, peer = connect()
    conn.send("e", b"abc", nbytes=0)
    res = collect_one(svc)
    assert isinstance(res.err, goaio.EmptyBuffer)
    assert res.bytes_transferred == 0


def test_nbytes_echo_reuses_the_receive_buffer(backend, svc, connect):
    conn, peer = connect()
    buf = bytearray(64)
    for i in range(20):
        msg = bytes([i]) * (i + 1)
        conn.recv("r", buf)
        peer.sendall(msg)
        res = collect_one(svc)
        assert res.err is None
        conn.send("s", res.buff, nbytes=res.bytes_transferred)
        assert collect_one(svc).bytes_transferred == len(msg)
        assert recv_exactly(peer, len(msg)) == msg


@pytest.mark.parametrize("bad, exc", [
    (-1, ValueError), (11, ValueError), (1.0, TypeError), ("1", TypeError), (True, TypeError),
    (2 ** 70, OverflowError),
])
def test_bad_nbytes_raises_and_posts_nothing(backend, svc, connect, bad, exc):
    conn, peer = connect()
    with pytest.raises(exc) as info:
        conn.send("x", bytearray(10), nbytes=bad)
    if bad == 11:
        assert str(info.value) == M.SEND_NBYTES_RANGE.format(10, 11)
    assert_no_result(svc, 0.05)
    conn.send("ok", b"z", nbytes=1)     # the connection is unharmed
    assert collect_one(svc).context == "ok"
    assert recv_exactly(peer, 1) == b"z"


def test_nbytes_with_a_list_is_a_type_error(backend, svc, connect):
    conn, peer = connect()
    with pytest.raises(TypeError) as info:
        conn.send("l", [b"ab", b"cd"], nbytes=2)
    assert str(info.value) == M.SEND_NBYTES_LIST
    assert_no_result(svc, 0.05)


def test_nbytes_is_keyword_only(backend, svc, connect):
    conn, peer = connect()
    with pytest.raises(TypeError):
        conn.send("p", b"abc", 2)
    assert_no_result(svc, 0.05)


def test_nbytes_over_tls_sends_only_the_prefix(backend, svc, pairs, tls_certs):
    from tls_support import recv_exactly_ssl, tls_server_pair

    conn, client = tls_server_pair(svc, pairs, tls_certs)
    buf = bytearray(b"prefix|not this")
    conn.send("s", buf, nbytes=6)
    conn.send("t", b"!", nbytes=1)
    got = {r.context: r for r in (collect_one(svc), collect_one(svc))}
    assert (got["s"].err, got["s"].bytes_transferred) == (None, 6)
    assert (got["t"].err, got["t"].bytes_transferred) == (None, 1)
    assert recv_exactly_ssl(client, 7) == b"prefix!"
    client.settimeout(0.2)
    with pytest.raises(TimeoutError):
        client.recv(1)  # nothing past the prefixes
