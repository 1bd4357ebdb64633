"""Posting from the main thread and from another thread takes the same
effect. The pure backend's once-per-request paths lock differently on the
main thread (where a signal handler may raise between any two bytecodes) and
elsewhere (goaio/_pure.py, ``_main_id``), so every outcome of a send and a
receive is checked from both, on every backend: the whole buffer written at
once, a prefix copied, a write the socket takes only in part, a write to a
reset peer, a receive posted before its data and one posted after."""

import errno
import threading
import time

import pytest

from support import Reader, collect_one, recv_exactly, reset


@pytest.fixture(params=["main", "thread"])
def post(request):
    """``post(fn)`` runs ``fn`` on the main thread or on a thread of its own,
    and returns (or raises) what it did."""
    if request.param == "main":
        return lambda fn: fn()

    def on_thread(fn):
        out = {}

        def run():
            try:
                out["value"] = fn()
            except BaseException as exc:    # re-raised on the main thread
                out["error"] = exc

        t = threading.Thread(target=run)
        t.start()
        t.join(10)
        assert not t.is_alive()
        if "error" in out:
            raise out["error"]
        return out.get("value")

    return on_thread


def test_send_whole_prefix_and_partial(backend, svc, connect, post):
    conn, peer = connect(small=True)
    post(lambda: conn.send("whole", b"hello"))
    res = collect_one(svc)
    assert (res.context, res.err, res.bytes_transferred) == ("whole", None, 5)
    assert recv_exactly(peer, 5) == b"hello"

    buf = bytearray(b"0123456789")
    post(lambda: conn.send("prefix", buf, nbytes=3))     # a small prefix: sent as a copy
    res = collect_one(svc)
    assert (res.context, res.err, res.bytes_transferred) == ("prefix", None, 3)
    assert res.buff is buf
    assert recv_exactly(peer, 3) == b"012"

    # more than the small socket buffers hold: the socket takes a part at
    # once, the rest waits for the peer to read
    big = bytes(range(256)) * (16 * 1024)       # 4 MiB
    post(lambda: conn.send("big", big))
    time.sleep(0.05)
    assert svc.get_complete_status(timeout=0) is None
    reader = Reader(peer, len(big))
    res = collect_one(svc)
    assert (res.context, res.err, res.bytes_transferred) == ("big", None, len(big))
    assert reader.result() == big
    # and the connection goes on in order after it
    post(lambda: conn.send("after", b"!"))
    assert collect_one(svc).context == "after"
    assert recv_exactly(peer, 1) == b"!"


def test_send_to_a_reset_peer_fails_once(backend, svc, connect, post):
    conn, peer = connect()
    reset(peer)
    time.sleep(0.05)     # the RST has come back
    errs = []
    for i in range(3):
        post(lambda: conn.send(i, b"x" * 1000))    # never raises: it completes with the error
        res = collect_one(svc)
        assert res.context == i
        if res.err is not None:
            assert isinstance(res.err, OSError)
            assert res.err.errno in (errno.ECONNRESET, errno.EPIPE)
            assert res.bytes_transferred == 0
            errs.append(res.err)
            break
    assert errs, "three sends to a reset peer all succeeded"
    assert svc.get_complete_status(timeout=0.1) is None     # one result per send, no more


def test_recv_posted_before_and_after_its_data(backend, svc, connect, post):
    conn, peer = connect()
    buf = bytearray(64)
    post(lambda: conn.recv("before", buf))
    time.sleep(0.02)
    assert svc.get_complete_status(timeout=0) is None
    peer.sendall(b"ping")
    res = collect_one(svc)
    assert (res.context, res.err, res.bytes_transferred, bytes(buf[:4])) == ("before", None, 4, b"ping")

    # data first: the receive posted after it finds it at once
    peer.sendall(b"second")
    time.sleep(0.05)
    buf2 = bytearray(64)
    post(lambda: conn.recv("after", buf2))
    res = collect_one(svc)
    assert (res.context, res.err, res.bytes_transferred, bytes(buf2[:6])) == ("after", None, 6, b"second")

    # EOF: a receive completes with EOFError once
    peer.shutdown(1)
    post(lambda: conn.recv("eof", bytearray(8)))
    res = collect_one(svc)
    assert res.context == "eof"
    assert isinstance(res.err, EOFError)
    assert svc.get_complete_status(timeout=0.1) is None
