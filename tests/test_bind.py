"""AIOService.bind: what it accepts, what it refuses and in which order, options."""

import os
import socket

import pytest

import goaio
from support import collect, collect_one, recv_exactly, reset


# ---------------------------------------------------------------- accepted

def test_bind_each_family_echoes(backend, svc, pairs, family, bind):
    sock, peer = pairs(family)
    conn = bind(sock)
    assert isinstance(conn, backend.AIOConn)
    peer.sendall(b"ping")
    buf = bytearray(16)
    conn.recv("r", buf)
    res = collect_one(svc)
    assert (res.err, res.bytes_transferred, bytes(buf[:4])) == (None, 4, b"ping")
    conn.send("s", b"pong")
    res = collect_one(svc)
    assert (res.err, res.bytes_transferred) == (None, 4)
    assert recv_exactly(peer, 4) == b"pong"


def test_bind_makes_the_socket_non_blocking(backend, svc, pairs, bind):
    sock, _peer = pairs()
    assert os.get_blocking(sock.fileno())
    conn = bind(sock)
    assert not conn.closed
    assert not os.get_blocking(sock.fileno())


def test_conn_attributes(backend, svc, pairs, bind):
    sock, _peer = pairs()
    fd = sock.fileno()
    marker = object()
    conn = bind(sock, user_data=marker)
    assert conn.fd == fd
    assert conn.closed is False
    assert conn.user_data is marker
    conn.user_data = "other"  # an ordinary read/write attribute
    assert conn.user_data == "other"
    conn.close()
    assert conn.closed is True
    assert conn.fd == -1
    assert sock.fileno() == -1


def test_bind_with_option_object(backend, svc, pairs, bind):
    sock, _peer = pairs()
    marker = object()
    conn = bind(sock, goaio.AIOConnOption(recvq_size=1, sendq_size=2, user_data=marker))
    assert conn.user_data is marker
    conn.recv(1, bytearray(1))
    with pytest.raises(goaio.Busy):
        conn.recv(2, bytearray(1))


def test_bind_user_data_defaults_to_none(backend, svc, pairs, bind):
    sock, _peer = pairs()
    assert bind(sock).user_data is None


def test_bind_peer_already_reset(backend, svc, pairs, bind):
    """Peer gone between accept and bind: bind works, the op gets the kernel's OSError."""
    sock, peer = pairs()
    reset(peer)
    conn = bind(sock)
    conn.recv("r", bytearray(16))
    res = collect_one(svc)
    assert isinstance(res.err, ConnectionResetError), res.err
    assert res.bytes_transferred == 0
    assert not conn.closed


def test_bind_peer_already_closed_gives_eof(backend, svc, pairs, bind):
    sock, peer = pairs()
    peer.close()
    conn = bind(sock)
    conn.recv("r", bytearray(16))
    res = collect_one(svc)
    assert isinstance(res.err, EOFError), res.err


# ---------------------------------------------------------------- refused

@pytest.mark.parametrize("obj", [None, 3, "sock", b"x", object()])
def test_bind_not_a_socket(backend, svc, obj):
    with pytest.raises(goaio.UnsupportedConn):
        svc.bind(obj)


def test_bind_fd_number_is_not_a_socket(backend, svc, pairs):
    sock, _peer = pairs()
    with pytest.raises(TypeError):  # UnsupportedConn is a TypeError
        svc.bind(sock.fileno())


def test_bind_object_with_fileno_is_not_a_socket(backend, svc, pairs):
    sock, _peer = pairs()

    class Fake:
        def fileno(self):
            return sock.fileno()

    with pytest.raises(goaio.UnsupportedConn):
        svc.bind(Fake())


def test_bind_udp_socket(backend, svc):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
        a.bind(("127.0.0.1", 0))
        b.connect(a.getsockname())
        for s in (a, b):
            with pytest.raises(goaio.UnsupportedConn):
                svc.bind(s)
            assert os.get_blocking(s.fileno())  # untouched


def test_bind_unix_datagram_and_seqpacket(backend, svc):
    for kind in (socket.SOCK_DGRAM, getattr(socket, "SOCK_SEQPACKET", None)):
        if kind is None:
            continue
        a, b = socket.socketpair(socket.AF_UNIX, kind)
        with a, b:
            with pytest.raises(goaio.UnsupportedConn):
                svc.bind(a)


def test_bind_stream_socket_of_other_family(backend, svc):
    """SOCK_STREAM but neither INET, INET6 nor UNIX (here AF_VSOCK) is UnsupportedConn."""
    fam = getattr(socket, "AF_VSOCK", None)
    if fam is None:
        pytest.skip("no AF_VSOCK here")
    try:
        s = socket.socket(fam, socket.SOCK_STREAM)
    except OSError as exc:
        pytest.skip(f"cannot make an AF_VSOCK socket: {exc}")
    with s:
        with pytest.raises(goaio.UnsupportedConn):
            svc.bind(s)
        assert os.get_blocking(s.fileno())


def test_bind_listening_socket(backend, svc):
    with socket.socket() as lst:
        lst.bind(("127.0.0.1", 0))
        lst.listen()
        with pytest.raises(goaio.UnsupportedConn):
            svc.bind(lst)


def test_bind_closed_socket(backend, svc, pairs):
    sock, _peer = pairs()
    sock.close()
    with pytest.raises(ValueError) as info:
        svc.bind(sock)
    assert not isinstance(info.value, goaio.UnsupportedConn)


def test_bind_closed_udp_socket_is_value_error(backend, svc):
    """Closed is checked before the socket type."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.close()
    with pytest.raises(ValueError):
        svc.bind(s)


def test_bind_twice_same_service(backend, svc, pairs, bind):
    sock, _peer = pairs()
    conn = bind(sock)
    with pytest.raises(ValueError):
        svc.bind(sock)
    assert not conn.closed


def test_bind_twice_other_service(backend, svc, pairs, bind):
    sock, _peer = pairs()
    conn = bind(sock)
    with backend.AIOService() as other:
        with pytest.raises(ValueError):
            other.bind(sock)
    assert not conn.closed


def test_bind_twice_other_backend(backend, svc, pairs, bind):
    """'Already bound to any service of any backend in this process'."""
    from goaio import _pure

    sock, _peer = pairs()
    conn = bind(sock)
    with _pure.AIOService() as other:
        with pytest.raises(ValueError):
            other.bind(sock)
    assert not conn.closed
    sock2, _peer2 = pairs()
    with _pure.AIOService() as other:
        conn2 = other.bind(sock2)
        with pytest.raises(ValueError):
            svc.bind(sock2)
    assert conn2.closed


def test_rebind_after_close_is_value_error(backend, svc, pairs, bind):
    sock, _peer = pairs()
    bind(sock).close()
    with pytest.raises(ValueError):
        svc.bind(sock)


@pytest.mark.parametrize(
    "opts, exc",
    [
        ({"recvq_size": 0}, ValueError),
        ({"sendq_size": 0}, ValueError),
        ({"recvq_size": -1}, ValueError),
        ({"sendq_size": -5}, ValueError),
        ({"recvq_size": "4"}, TypeError),
        ({"sendq_size": 2.5}, TypeError),
        ({"share_buff": object()}, TypeError),
        ({"share_buff": 5}, TypeError),
        ({"no_such_option": 1}, TypeError),
    ],
)
def test_bind_bad_options(backend, svc, pairs, opts, exc, bind):
    sock, _peer = pairs()
    with pytest.raises(exc):
        svc.bind(sock, **opts)
    # A refused bind leaves the socket unbound: it can be bound now.
    conn = bind(sock)
    assert conn.fd == sock.fileno()


def test_option_object_checks_ranges():
    with pytest.raises(ValueError):
        goaio.AIOConnOption(recvq_size=0)
    with pytest.raises(ValueError):
        goaio.AIOConnOption(sendq_size=0)
    with pytest.raises(TypeError):
        goaio.AIOConnOption(recvq_size=None)


def test_bind_option_and_keywords_is_type_error(backend, svc, pairs, bind):
    sock, _peer = pairs()
    with pytest.raises(TypeError):
        svc.bind(sock, goaio.AIOConnOption(), recvq_size=4)
    conn = bind(sock)  # still bindable
    assert not conn.closed


def test_bind_option_of_wrong_type(backend, svc, pairs, bind):
    sock, _peer = pairs()
    with pytest.raises(TypeError):
        svc.bind(sock, {"recvq_size": 4})
    conn = bind(sock)
    assert not conn.closed


def test_bind_check_order(backend, pairs):
    """service closed > not a socket > closed socket > unsupported > already bound > options."""
    s = backend.AIOService()
    s.close()
    with pytest.raises(goaio.ServiceClosed):
        s.bind("not a socket")

    with backend.AIOService() as svc:
        # closed socket beats bad options
        sock, _peer = pairs()
        sock.close()
        with pytest.raises(ValueError):
            svc.bind(sock, recvq_size="x")  # would be TypeError
        # unsupported beats bad options
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            with pytest.raises(goaio.UnsupportedConn):
                svc.bind(udp, recvq_size=0)
        # already bound beats wrong option types
        sock2, _peer2 = pairs()
        conn2 = svc.bind(sock2)
        assert not conn2.closed
        with pytest.raises(ValueError):
            svc.bind(sock2, recvq_size="x")


def test_bound_socket_fd_is_released_on_close(backend, svc, pairs, bind):
    """After close the fd is no longer registered: a new socket on that number binds."""
    for _ in range(20):
        sock, peer = pairs()
        conn = bind(sock)
        conn.close()
        peer.close()
    res = []
    for _ in range(5):
        sock, peer = pairs()
        conn = bind(sock)
        conn.send(None, b"x")
        res.append(conn)
    collect(svc, 5)
