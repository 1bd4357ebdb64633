"""Each goaio error, raised or delivered, is exactly the shared class on every backend."""

import socket
import time

import pytest

import goaio
from support import close_service, collect, collect_one


def raised(fn, *args, **kwargs):
    with pytest.raises(Exception) as info:
        fn(*args, **kwargs)
    return type(info.value)


def test_raised_errors_are_the_shared_classes(backend, svc, connect, pairs):
    # UnsupportedConn: bind refuses a non-socket
    assert raised(svc.bind, object()) is goaio.UnsupportedConn
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        assert raised(svc.bind, udp) is goaio.UnsupportedConn
    # EmptyBuffer: a zero-length receive
    conn, _peer = connect(recvq_size=1)
    assert raised(conn.recv, None, bytearray()) is goaio.EmptyBuffer
    # Busy: one receive too many
    conn.recv("pending", bytearray(1))
    assert raised(conn.recv, None, bytearray(1)) is goaio.Busy
    # TypeError / BufferError: plain built-ins
    assert raised(conn.recv, None, b"ro") is TypeError
    assert raised(conn.send, None, memoryview(bytearray(4))[::2]) is BufferError
    # ConnClosed: posting on a closed connection
    conn.close()
    assert collect_one(svc).err.__class__ is goaio.ConnClosed
    assert raised(conn.send, None, b"x") is goaio.ConnClosed
    # ServiceClosed: anything after close
    other = backend.AIOService()
    close_service(other)
    assert raised(other.get_complete_status, 0) is goaio.ServiceClosed
    sock, _ = pairs()
    assert raised(other.bind, sock) is goaio.ServiceClosed


def test_delivered_errors_are_the_shared_classes(backend, svc, connect):
    conn, peer = connect(small=True)
    # EmptyBuffer (empty send)
    conn.send("empty", b"")
    assert type(collect_one(svc).err) is goaio.EmptyBuffer
    # RecvTimeout
    conn.set_recv_timeout(0.05)
    conn.recv("rt", bytearray(4))
    assert type(collect_one(svc).err) is goaio.RecvTimeout
    conn.set_recv_timeout(None)
    # SendTimeout
    conn.set_send_timeout(0.1)
    conn.send("st", b"s" * (8 << 20))
    assert type(collect_one(svc).err) is goaio.SendTimeout
    conn.set_send_timeout(None)
    # ConnClosed (default close reason)
    conn.recv("cc", bytearray(4))
    conn.close()
    assert type(collect_one(svc).err) is goaio.ConnClosed
    # EOFError
    conn2, peer2 = connect()
    peer2.close()
    conn2.recv("eof", bytearray(4))
    assert type(collect_one(svc).err) is EOFError


def test_os_errors_are_the_errno_subclass(backend, svc, connect):
    import errno
    import struct

    conn, peer = connect()
    conn.recv("r", bytearray(4))
    time.sleep(0.05)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()
    err = collect_one(svc).err
    assert type(err) is ConnectionResetError
    assert err.errno == errno.ECONNRESET
    assert err.strerror
    conn.send("s", b"x")
    conn.send("s2", b"y")
    errs = [r.err for r in collect(svc, 2)]
    assert all(type(e) in (BrokenPipeError, ConnectionResetError) for e in errs), errs
    assert all(e.errno in (errno.EPIPE, errno.ECONNRESET) for e in errs), errs
