"""The twins agree (SPEC "Errors": every backend raises the same classes with
the same messages, and behaves the same in every case the tests can reach).

The same scenarios run on every backend and are written down as a transcript:
for each step, the exception class and message it raised, or the result it
completed with (context, bytes, error class and message, whether a buffer came
back), and the reprs of the objects involved, with the backend's name, fd
numbers and addresses taken out. Each backend's transcript must equal the
pure backend's, step by step.
"""

import re
import socket
import struct
import time

import pytest

import goaio
from goaio import AIOConnOption, _messages
from conftest import load_backend
from support import WAIT

_NORM = [
    (re.compile(r"\b(epoll|kqueue|pure)\b"), "<backend>"),
    (re.compile(r"fd=\d+"), "fd=#"),
    (re.compile(r"0x[0-9a-fA-F]+"), "0x#"),
    (re.compile(r"id=\d+"), "id=#"),
]


def norm(text):
    for pattern, repl in _NORM:
        text = pattern.sub(repl, text)
    return text


def raised(fn):
    """What fn() did: ("raised", class, message) or ("returned", repr)."""
    try:
        value = fn()
    except BaseException as exc:  # noqa: BLE001 - recorded
        return ("raised", type(exc).__name__, norm(str(exc)))
    return ("returned", norm(repr(value)))


def result(res):
    if res is None:
        return None
    err = res.err
    return (res.context, res.bytes_transferred, None if err is None else type(err).__name__,
            None if err is None else norm(str(err)), res.buff is None, norm(repr(res)))


def tcp_pair():
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen()
    peer = socket.create_connection(lst.getsockname())
    sock, _ = lst.accept()
    lst.close()
    peer.settimeout(WAIT)
    return sock, peer


def wait_result(svc):
    res = svc.get_complete_status(timeout=WAIT)
    assert res is not None, "no result in time"
    return res


class Share:
    """A share_buff returning what `make` makes."""

    def __init__(self, make):
        self.make = make

    def acquire(self):
        return self.make()

    def release(self, buff):
        pass


def transcript(bk):
    t = {}
    cleanup = []

    # --- the service
    t["workers=-1"] = raised(lambda: bk.AIOService(workers=-1))
    t["workers='x'"] = raised(lambda: bk.AIOService(workers="x"))
    svc = bk.AIOService()
    cleanup.append(svc)
    t["repr(svc)"] = norm(repr(svc))
    t["max_results=0"] = raised(lambda: svc.get_complete_statuses(0, timeout=0))
    t["max_results=2**63"] = raised(lambda: svc.get_complete_statuses(2 ** 63, timeout=0))
    t["max_results='x'"] = raised(lambda: svc.get_complete_statuses("x", timeout=0))
    t["timeout=-1"] = raised(lambda: svc.get_complete_status(timeout=-1))
    t["timeout='x'"] = raised(lambda: svc.get_complete_status(timeout="x"))
    t["timeout=nan"] = raised(lambda: svc.get_complete_status(timeout=float("nan")))
    t["timeout=0"] = raised(lambda: svc.get_complete_status(timeout=0))
    t["statuses timeout=0"] = raised(lambda: svc.get_complete_statuses(4, timeout=0))

    # --- binding
    t["bind(object)"] = raised(lambda: svc.bind(object()))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    cleanup.append(udp)
    t["bind(udp)"] = raised(lambda: svc.bind(udp))
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen()
    cleanup.append(lst)
    t["bind(listening)"] = raised(lambda: svc.bind(lst))
    closed = socket.socket()
    closed.close()
    t["bind(closed)"] = raised(lambda: svc.bind(closed))
    a, b = socket.socketpair()
    cleanup += [b]
    t["bind(recvq_size=0)"] = raised(lambda: svc.bind(a, recvq_size=0))
    t["bind(option and kw)"] = raised(lambda: svc.bind(a, AIOConnOption(), recvq_size=1))
    t["bind(option=1)"] = raised(lambda: svc.bind(a, 1))
    t["bind(share_buff=1)"] = raised(lambda: svc.bind(a, share_buff=1))
    conn = svc.bind(a, recvq_size=1, sendq_size=1)
    t["bind twice"] = raised(lambda: svc.bind(a))
    t["repr(conn)"] = norm(repr(conn))
    t["AIOConn()"] = raised(lambda: bk.AIOConn())

    # --- posting
    t["recv(bytes)"] = raised(lambda: conn.recv("c", b"ro"))
    t["recv(5)"] = raised(lambda: conn.recv("c", 5))
    t["recv(bytearray(0))"] = raised(lambda: conn.recv("c", bytearray(0)))
    t["recv([])"] = raised(lambda: conn.recv("c", []))
    t["recv([bytearray(0)])"] = raised(lambda: conn.recv("c", [bytearray(0)]))
    t["recv((b,))"] = raised(lambda: conn.recv("c", (bytearray(4),)))
    t["recv_full(None)"] = raised(lambda: conn.recv_full("c", None))
    t["recv(strided)"] = raised(lambda: conn.recv("c", memoryview(bytearray(8))[::2]))
    t["send(strided)"] = raised(lambda: conn.send("c", memoryview(bytearray(8))[::2]))
    t["send(5)"] = raised(lambda: conn.send("c", 5))
    t["send([b'x', 5])"] = raised(lambda: conn.send("c", [b"x", 5]))
    released = memoryview(bytearray(4))
    released.release()
    t["send(released)"] = raised(lambda: conn.send("c", released))
    t["recv(released)"] = raised(lambda: conn.recv("c", released))
    t["close(reason='x')"] = raised(lambda: conn.close("x"))
    t["set_recv_timeout(-1)"] = raised(lambda: conn.set_recv_timeout(-1))
    t["set_recv_timeout('x')"] = raised(lambda: conn.set_recv_timeout("x"))
    conn.recv("first", bytearray(4))
    t["recv: queue full"] = raised(lambda: conn.recv("second", bytearray(4)))
    conn.set_recv_timeout(0.05)
    t["recv timeout"] = result(wait_result(svc))
    conn.set_recv_timeout(None)
    conn.send("empty", b"")
    t["empty send"] = result(wait_result(svc))
    conn.send("list", [b"ab", bytearray(b"cd"), memoryview(b"ef")])
    t["list send"] = result(wait_result(svc))
    b.recv(16)
    b.sendall(b"hi")
    conn.recv("data", bytearray(8))
    t["recv data"] = result(wait_result(svc))
    conn.recv("eof", bytearray(8))
    b.shutdown(socket.SHUT_WR)
    t["recv at EOF"] = result(wait_result(svc))
    conn.recv("after eof", None)
    t["recv after EOF"] = result(wait_result(svc))
    conn.close()
    t["post on closed conn"] = raised(lambda: conn.send("c", b"x"))
    t["repr(closed conn)"] = norm(repr(conn))

    # --- sends: full queue, timeout
    sock, peer = tcp_pair()
    cleanup.append(peer)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    conn = svc.bind(sock, sendq_size=1)
    conn.send("big", bytearray(32 << 20))
    t["send: queue full"] = raised(lambda: conn.send("more", b"x"))
    conn.set_send_timeout(0.05)
    res = wait_result(svc)
    t["send timeout"] = (res.context, type(res.err).__name__, str(res.err))
    conn.close()

    # --- close with ops pending, with and without a reason
    a, b = socket.socketpair()
    cleanup.append(b)
    conn = svc.bind(a)
    conn.recv("pending", bytearray(4))
    conn.close()
    t["close: pending"] = result(wait_result(svc))
    a, b = socket.socketpair()
    cleanup.append(b)
    conn = svc.bind(a)
    conn.recv("pending", bytearray(4))
    conn.close(ConnectionAbortedError("mine"))
    t["close(reason): pending"] = result(wait_result(svc))

    # --- reset with receives pending
    sock, peer = tcp_pair()
    conn = svc.bind(sock)
    for i in range(3):
        conn.recv(i, bytearray(4))
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()
    got = sorted((wait_result(svc) for _ in range(3)), key=lambda r: r.context)
    t["reset: pending"] = [type(r.err).__name__ for r in got]
    conn.recv("later", bytearray(4))
    t["reset: later"] = result(wait_result(svc))
    conn.close()

    # --- share buffers
    for name, make in [("bytes", lambda: b"ro"), ("empty", lambda: bytearray(0)),
                       ("strided", lambda: memoryview(bytearray(16))[::2]), ("int", lambda: 5),
                       ("raises", lambda: (_ for _ in ()).throw(KeyError("acq")))]:
        a, b = socket.socketpair()
        cleanup.append(b)
        conn = svc.bind(a, share_buff=Share(make))
        conn.recv(name, None)
        b.sendall(b"x")
        t[f"share {name}"] = result(wait_result(svc))
        conn.close()

    # --- the pool
    t["BufferPool(0)"] = raised(lambda: bk.BufferPool(0))
    t["BufferPool('x')"] = raised(lambda: bk.BufferPool("x"))
    t["BufferPool(2**70)"] = raised(lambda: bk.BufferPool(2 ** 70))
    pool = bk.BufferPool(16)
    t["repr(pool)"] = norm(repr(pool))
    t["release(foreign)"] = raised(lambda: pool.release(bytearray(16)))
    buf = pool.acquire()
    t["repr(pool) out"] = norm(repr(pool))
    buf.extend(b"more")
    t["release(resized)"] = raised(lambda: pool.release(buf))
    del buf[16:]
    pool.release(buf)
    t["release twice"] = raised(lambda: pool.release(buf))

    # --- the closed service
    svc.close()
    t["repr(closed svc)"] = norm(repr(svc))
    a, b = socket.socketpair()
    cleanup += [a, b]
    t["closed: bind"] = raised(lambda: svc.bind(a))
    t["closed: collect"] = raised(lambda: svc.get_complete_status(timeout=0))
    t["closed: close again"] = raised(svc.close)
    for obj in cleanup:
        obj.close()
    return t


@pytest.fixture(scope="module")
def reference():
    return transcript(load_backend("pure"))


def test_twins_agree(backend, reference):
    if backend.name == "pure":
        pytest.skip("the pure backend is the reference the others are compared with")
    mine = transcript(backend)
    assert mine.keys() == reference.keys()
    diffs = {k: {"pure": reference[k], backend.name: mine[k]} for k in reference if reference[k] != mine[k]}
    assert not diffs, "the twins disagree:\n" + "\n".join(f"  {k}: {v}" for k, v in diffs.items())


def test_stats_keys_agree(backend):
    svc = backend.AIOService()
    try:
        if not hasattr(svc, "stats"):
            pytest.skip("svc.stats() does not exist yet on this backend")
        assert tuple(sorted(svc.stats())) == tuple(sorted(_messages.STATS_KEYS))
    finally:
        svc.close()
