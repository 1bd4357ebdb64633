"""The kqueue backend against the real kqueue behaviours it must cope with.

On Linux, goaio._kqueue exists only in the test build (GOAIO_KQUEUE_EMULATION=1),
over an emulation of kqueue()/kevent() in C (docs/kqueue.md). These tests pin
down what the emulation reproduces -- so the backend cannot come to depend on a
simplification -- and what the backend does with it. Every assertion here is
also true of real kqueue (macOS/FreeBSD), where the same tests run against the
kernel; the few that need the emulation's switches say so. The test hooks
(_kq_open, _kevent, _translate, _poller_probe) live in tests/kqueue_emu/hooks.pxi
and are compiled only into the emulation build: elsewhere this file skips.
"""

import errno
import os
import socket
import struct
import threading
import time

import pytest

from support import WAIT, run_python

try:
    from goaio import _kqueue as kqmod
except ImportError as exc:
    pytest.skip(
        f"goaio._kqueue is not built here ({exc}); on Linux build it with "
        "GOAIO_KQUEUE_EMULATION=1 python setup.py build_ext --inplace",
        allow_module_level=True,
    )

if not hasattr(kqmod, "_KQ"):
    pytest.skip("goaio._kqueue has no test hooks: they are compiled only into the emulation "
                "build (tests/kqueue_emu/, GOAIO_KQUEUE_EMULATION=1)", allow_module_level=True)

from goaio import ConnClosed, RecvTimeout, ServiceClosed

K = kqmod._KQ
READ, WRITE, USER = K["EVFILT_READ"], K["EVFILT_WRITE"], K["EVFILT_USER"]
EV_ADD, EV_DELETE, EV_CLEAR = K["EV_ADD"], K["EV_DELETE"], K["EV_CLEAR"]
EV_RECEIPT, EV_EOF, EV_ERROR = K["EV_RECEIPT"], K["EV_EOF"], K["EV_ERROR"]
NOTE_TRIGGER = K["NOTE_TRIGGER"]
PF_READ, PF_WRITE, PF_HUP = K["PF_READ"], K["PF_WRITE"], K["PF_HUP"]
WAKE_ID = K["WAKE_ID"]

#: A generation-tagged connection id as the engine makes them: (gen << 32) | slot.
ID_A = (7 << 32) | 3
ID_B = (8 << 32) | 3

needs_emulation = pytest.mark.skipif(not kqmod._EMULATED, reason="uses a switch of the Linux emulation")


# ---------------------------------------------------------------- helpers

@pytest.fixture
def kq():
    fd = kqmod._kq_open()
    yield fd
    kqmod._kq_close(fd)


@pytest.fixture
def svc(pairs):
    s = kqmod.AIOService()
    yield s
    s.close()


def ev(ident, filt, flags, udata=0, fflags=0, data=0):
    return (ident.fileno() if hasattr(ident, "fileno") else ident, filt, flags, fflags, data, udata)


def wait_events(kq, want, timeout=WAIT):
    """Collect events until want(events) is true (or the time is up)."""
    got = []
    deadline = time.monotonic() + timeout
    while not want(got) and time.monotonic() < deadline:
        got += kqmod._kevent(kq, (), 16, 0.05)
    return got


def settle(sock, nbytes, eof):
    """Wait until the kernel holds nbytes (and the FIN, if eof) for sock."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            data = sock.recv(nbytes + 1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            data = b""
        if len(data) >= nbytes:
            if not eof:
                return
            # a FIN behind the data shows as readable-at-EOF after it; give it time
            time.sleep(0.05)
            return
        time.sleep(0.01)
    raise AssertionError("data did not arrive")


def reset(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def open_fds():
    for d in ("/proc/self/fd", "/dev/fd"):
        if os.path.isdir(d):
            return len(os.listdir(d))
    pytest.skip("no fd directory here")


def collect(svc, n, timeout=WAIT):
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(out)} of {n} results"
        out += svc.get_complete_statuses(n - len(out), timeout=left)
    return out


# ---------------------------------------------------------------- kevent: what the backend relies on

@pytest.mark.parametrize("family", ["tcp", "unix"])
def test_eof_comes_with_the_data_still_readable(kq, pairs, family):
    sock, peer = pairs(family)
    peer.sendall(b"x" * 1000)
    peer.shutdown(socket.SHUT_WR)
    settle(sock, 1000, eof=True)
    got = kqmod._kevent(kq, [ev(sock, READ, EV_ADD | EV_CLEAR, ID_A)], 8, 1.0)
    assert len(got) == 1, got
    ident, filt, flags, fflags, data, udata = got[0]
    assert (ident, filt, udata) == (sock.fileno(), READ, ID_A)
    assert flags & EV_EOF and not flags & EV_ERROR
    assert data == 1000, "EV_EOF carries the bytes still readable"
    assert fflags == 0
    assert sock.recv(4096) == b"x" * 1000
    assert sock.recv(4096) == b""


def test_reset_sets_eof_and_leaves_the_error_to_recv(kq, pairs):
    sock, peer = pairs("tcp")
    kqmod._kevent(kq, [ev(sock, READ, EV_ADD | EV_CLEAR, ID_A), ev(sock, WRITE, EV_ADD | EV_CLEAR, ID_A)], 0)
    reset(peer)
    got = wait_events(kq, lambda g: {READ, WRITE} <= {e[1] for e in g if e[2] & EV_EOF})
    eofs = {e[1]: e for e in got if e[2] & EV_EOF}
    assert set(eofs) == {READ, WRITE}, got
    assert eofs[READ][3] == errno.ECONNRESET, "fflags holds the socket error"
    assert eofs[READ][5] == eofs[WRITE][5] == ID_A
    # Reporting the error must not consume it: the system call still sees it.
    with pytest.raises(ConnectionResetError):
        sock.recv(16)


def test_udata_round_trips_all_64_bits(kq, pairs):
    ids = [1, (1 << 32) | 5, 0xFFFFFFFE_FFFFFFFF, (1 << 64) - 2]
    socks = {}
    for udata in ids:
        sock, peer = pairs("tcp")
        peer.sendall(b"!")
        socks[sock.fileno()] = udata
        settle(sock, 1, eof=False)
        kqmod._kevent(kq, [ev(sock, READ, EV_ADD | EV_CLEAR, udata)], 0)
    got = wait_events(kq, lambda g: len({e[0] for e in g}) == len(ids))
    assert {e[0]: e[5] for e in got} == socks


def test_failed_changes_come_back_as_ev_error_entries(kq, pairs):
    sock, peer = pairs("tcp")
    peer.sendall(b"ready")
    settle(sock, 5, eof=False)
    kqmod._kevent(kq, [ev(sock, READ, EV_ADD | EV_CLEAR, ID_A)], 0)
    # Deleting a filter that was never added: an EV_ERROR entry, with the
    # change's ident, filter and udata -- and no events in that call.
    got = kqmod._kevent(kq, [ev(sock, WRITE, EV_DELETE, udata=77)], 8, 0)
    assert len(got) == 1, got
    ident, filt, flags, fflags, data, udata = got[0]
    assert flags & EV_ERROR and data == errno.ENOENT
    assert (ident, filt, udata) == (sock.fileno(), WRITE, 77)
    # the pending READ event was not lost by that call
    got = kqmod._kevent(kq, (), 8, 1.0)
    assert [(e[1], e[5]) for e in got] == [(READ, ID_A)]
    # A change on a closed fd.
    s = socket.socket()
    dead = s.fileno()
    s.close()
    got = kqmod._kevent(kq, [ev(dead, READ, EV_ADD | EV_CLEAR, ID_B)], 8, 0)
    assert len(got) == 1 and got[0][2] & EV_ERROR and got[0][4] == errno.EBADF and got[0][5] == ID_B


def test_without_room_a_failed_change_fails_the_call_and_stops_it(kq, pairs):
    sock, peer = pairs("tcp")
    other, other_peer = pairs("tcp")
    other_peer.sendall(b"x")
    settle(other, 1, eof=False)
    with pytest.raises(FileNotFoundError):
        kqmod._kevent(kq, [ev(sock, READ, EV_DELETE), ev(other, READ, EV_ADD | EV_CLEAR, ID_B)], 0)
    # the change after the failed one was not applied
    assert kqmod._kevent(kq, (), 8, 0.2) == []


def test_receipts_answer_every_change(kq, pairs):
    sock, peer = pairs("tcp")
    peer.sendall(b"x")
    settle(sock, 1, eof=False)
    got = kqmod._kevent(kq, [ev(sock, READ, EV_ADD | EV_CLEAR | EV_RECEIPT, ID_A),
                             ev(sock, WRITE, EV_DELETE | EV_RECEIPT, ID_A)], 2, 0)
    assert [(e[1], bool(e[2] & EV_ERROR), e[4]) for e in got] == [(READ, True, 0), (WRITE, True, errno.ENOENT)]
    # a receipt is no event: the readable socket is reported by the next call
    got = kqmod._kevent(kq, (), 8, 1.0)
    assert [(e[1], e[5], bool(e[2] & EV_ERROR)) for e in got] == [(READ, ID_A, False)]


def test_ev_clear_reports_each_change_once(kq, pairs):
    sock, peer = pairs("tcp")
    kqmod._kevent(kq, [ev(sock, READ, EV_ADD | EV_CLEAR, ID_A)], 0)
    assert kqmod._kevent(kq, (), 8, 0.1) == []
    peer.sendall(b"a")
    got = kqmod._kevent(kq, (), 8, 1.0)
    assert [(e[1], e[4]) for e in got] == [(READ, 1)]
    # the byte is still unread, but nothing changed: no event
    assert kqmod._kevent(kq, (), 8, 0.2) == []
    peer.sendall(b"b")
    got = kqmod._kevent(kq, (), 8, 1.0)
    assert [(e[1], e[4]) for e in got] == [(READ, 2)]


def test_without_ev_clear_the_filter_is_level_triggered(kq, pairs):
    sock, peer = pairs("tcp")
    peer.sendall(b"a")
    settle(sock, 1, eof=False)
    kqmod._kevent(kq, [ev(sock, READ, EV_ADD, ID_A)], 0)
    for _ in range(3):
        assert [e[1] for e in kqmod._kevent(kq, (), 8, 1.0)] == [READ]
    sock.recv(1)
    assert kqmod._kevent(kq, (), 8, 0.1) == []


def test_an_event_is_dropped_once_its_data_was_read(kq, pairs):
    sock, peer = pairs("tcp")
    kqmod._kevent(kq, [ev(sock, READ, EV_ADD | EV_CLEAR, ID_A)], 0)
    assert kqmod._kevent(kq, (), 8, 0.1) == []
    peer.sendall(b"abc")
    settle(sock, 3, eof=False)
    sock.recv(3)       # read before the event is collected
    assert kqmod._kevent(kq, (), 8, 0.1) == []


@pytest.mark.skipif(not K["HAVE_EVFILT_USER"], reason="no EVFILT_USER here")
def test_user_event_trigger(kq):
    kqmod._kevent(kq, [ev(5, USER, EV_ADD | EV_CLEAR, ID_A)], 0)
    assert kqmod._kevent(kq, (), 8, 0) == []
    for _ in range(2):
        kqmod._kevent(kq, [ev(5, USER, 0, ID_A, fflags=NOTE_TRIGGER)], 0)
    got = kqmod._kevent(kq, (), 8, 1.0)
    assert [(e[0], e[1], e[5]) for e in got] == [(5, USER, ID_A)], "two triggers, one event"
    assert kqmod._kevent(kq, (), 8, 0.1) == [], "EV_CLEAR resets it"
    # every change sets udata again, a trigger too: a waker must pass the right one
    kqmod._kevent(kq, [ev(5, USER, 0, ID_B, fflags=NOTE_TRIGGER)], 0)
    assert [e[5] for e in kqmod._kevent(kq, (), 8, 1.0)] == [ID_B]
    # a trigger from another thread ends a wait at once
    t = threading.Timer(0.1, kqmod._kevent, (kq, [ev(5, USER, 0, ID_A, fflags=NOTE_TRIGGER)], 0))
    t0 = time.monotonic()
    t.start()
    got = kqmod._kevent(kq, (), 8, 5.0)
    t.join()
    assert [e[1] for e in got] == [USER] and time.monotonic() - t0 < 2.0


def test_timeout(kq):
    t0 = time.monotonic()
    assert kqmod._kevent(kq, (), 8, 0.2) == []
    dt = time.monotonic() - t0
    assert 0.2 <= dt < 2.0
    t0 = time.monotonic()
    assert kqmod._kevent(kq, (), 8, 0) == []
    assert time.monotonic() - t0 < 0.1


def test_closing_the_fd_drops_its_knotes_even_if_the_file_lives_on(kq, pairs):
    a, a_peer = pairs("tcp")
    n = a.fileno()
    kqmod._kevent(kq, [ev(a, READ, EV_ADD | EV_CLEAR, ID_A)], 0)
    b, b_peer = pairs("tcp")
    keep = os.dup(n)                   # the file stays open (a dup, a child...)
    try:
        a.close()
        os.dup2(b.fileno(), n)        # the number n now names another file
        try:
            a_peer.sendall(b"old")
            b_peer.sendall(b"new")
            # no knote survived the close: nothing for ID_A, nothing for n
            assert kqmod._kevent(kq, (), 8, 0.3) == []
            with pytest.raises(FileNotFoundError):
                kqmod._kevent(kq, [ev(n, READ, EV_DELETE)], 0)
            kqmod._kevent(kq, [ev(n, READ, EV_ADD | EV_CLEAR, ID_B)], 0)
            got = kqmod._kevent(kq, (), 8, 1.0)
            assert [(e[0], e[5], e[4]) for e in got] == [(n, ID_B, 3)]
        finally:
            os.close(n)
    finally:
        os.close(keep)


FORK_CHILD = r"""
import errno, os
from goaio import _kqueue as k
kq = k._kq_open()
pid = os.fork()
if pid == 0:
    try:
        k._kevent(kq, (), 1, 0)
        os._exit(3)
    except OSError as exc:
        os._exit(0 if exc.errno == errno.EBADF else 4)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
k._kevent(kq, (), 1, 0)    # the parent's is intact
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_kqueue_is_not_inherited_by_fork():
    proc = run_python(FORK_CHILD, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0", "the child must not have the parent's kqueue"


# ---------------------------------------------------------------- the poller's translation

def test_translation_of_eof_error_and_wake_entries():
    t = kqmod._translate
    assert t([(9, READ, EV_CLEAR, 0, 10, ID_A)]) == [(ID_A, PF_READ)]
    assert t([(9, READ, EV_CLEAR | EV_EOF, 0, 10, ID_A)]) == [(ID_A, PF_READ | PF_HUP)]
    # EOF with an error: both directions try their call and see it
    assert t([(9, READ, EV_EOF, errno.ECONNRESET, 0, ID_A)]) == [(ID_A, PF_READ | PF_WRITE | PF_HUP)]
    assert t([(9, WRITE, EV_CLEAR, 0, 100, ID_A)]) == [(ID_A, PF_WRITE)]
    assert t([(9, WRITE, EV_EOF, 0, 0, ID_A)]) == [(ID_A, PF_READ | PF_WRITE | PF_HUP)]
    # READ and WRITE of one connection are merged; others keep their order
    assert t([(9, READ, 0, 0, 1, ID_A), (9, WRITE, 0, 0, 1, ID_A), (10, READ, 0, 0, 1, ID_B)]) == [
        (ID_A, PF_READ | PF_WRITE), (ID_B, PF_READ)]
    # wake-ups and filters the engine did not register are not events
    assert t([(0, USER, EV_CLEAR, 0, 0, WAKE_ID), (9, READ, 0, 0, 1, WAKE_ID), (3, USER, 0, 0, 0, ID_A)]) == []


def test_translation_of_ev_error_entries():
    t = kqmod._translate
    # a receipt (data 0) is no event
    assert t([(9, READ, EV_ADD | EV_RECEIPT | EV_ERROR, 0, 0, ID_A)]) == []
    # a failed change: the id's system calls report the error (the engine
    # drops an id that is stale)
    assert t([(9, WRITE, EV_DELETE | EV_ERROR, 0, errno.EBADF, ID_A)]) == [(ID_A, PF_READ | PF_WRITE | PF_HUP)]
    # an error entry is never routed by its ident (the fd), only by udata
    assert t([(9, READ, EV_ERROR, 0, errno.ENOENT, ID_B), (9, READ, 0, 0, 1, ID_A)]) == [
        (ID_B, PF_READ | PF_WRITE | PF_HUP), (ID_A, PF_READ)]
    # a failed change of the wake-up knote is ignored
    assert t([(0, USER, EV_ERROR, NOTE_TRIGGER, errno.ENOENT, WAKE_ID)]) == []


# ---------------------------------------------------------------- the backend

@pytest.mark.parametrize("family", ["tcp", "unix"])
def test_data_and_eof_in_one_event_are_all_read_before_eof(svc, pairs, family):
    sock, peer = pairs(family)
    data = os.urandom(60000)
    peer.sendall(data)
    peer.shutdown(socket.SHUT_WR)
    settle(sock, len(data), eof=True)
    conn = svc.bind(sock)
    got = bytearray()
    for i in range(100):
        conn.recv(i, bytearray(1000))
        res = svc.get_complete_status(timeout=WAIT)
        assert res is not None
        if res.err is not None:
            assert isinstance(res.err, EOFError), res
            break
        got += res.buff[:res.bytes_transferred]
    assert bytes(got) == data
    # and EOF sticks
    conn.recv("again", bytearray(10))
    res = svc.get_complete_status(timeout=WAIT)
    assert isinstance(res.err, EOFError)
    conn.close()


def test_data_and_eof_with_recvs_already_pending(svc, pairs):
    sock, peer = pairs("tcp")
    conn = svc.bind(sock)
    conn.recv_full("full", bytearray(100))
    conn.recv("after", bytearray(10))
    peer.sendall(b"y" * 30)
    peer.close()
    full, after = collect(svc, 2)
    assert full.context == "full" and isinstance(full.err, EOFError)
    assert full.bytes_transferred == 30 and full.buff[:30] == b"y" * 30
    assert after.context == "after" and isinstance(after.err, EOFError)
    conn.close()


def test_share_buffer_receives_drain_before_eof(svc, pairs):
    pool = kqmod.BufferPool(buffer_size=512)
    sock, peer = pairs("tcp")
    peer.sendall(b"z" * 5000)
    peer.shutdown(socket.SHUT_WR)
    settle(sock, 5000, eof=True)
    conn = svc.bind(sock, share_buff=pool)
    total = 0
    while True:
        conn.recv("r", None)
        res = svc.get_complete_status(timeout=WAIT)
        if res.err is not None:
            assert isinstance(res.err, EOFError) and res.buff is None
            break
        total += res.bytes_transferred
        pool.release(res.buff)
    assert total == 5000 and pool.outstanding == 0
    conn.close()


def test_reset_is_connection_reset_not_eof(svc, pairs):
    sock, peer = pairs("tcp")
    conn = svc.bind(sock)
    conn.recv("r", bytearray(10))
    reset(peer)
    res = svc.get_complete_status(timeout=WAIT)
    assert isinstance(res.err, ConnectionResetError), res
    conn.close()


def test_no_stale_event_after_close_and_fd_reuse_with_a_dup(svc, pairs):
    a_sock, a_peer = pairs("tcp")
    n = a_sock.fileno()
    a = svc.bind(a_sock)
    x, y = pairs("tcp")
    keep = os.dup(n)                  # the file of A lives on
    try:
        a.recv("a", bytearray(10))
        a.close()
        (res,) = collect(svc, 1)
        assert res.context == "a" and isinstance(res.err, ConnClosed)
        os.dup2(x.fileno(), n)
        x.close()
        b_sock = socket.socket(fileno=n)   # connection B, at A's fd number
        b = svc.bind(b_sock)
        b.recv("b", bytearray(10))
        a_peer.sendall(b"stale")
        a_peer.close()
        assert svc.get_complete_status(timeout=0.3) is None, "A's data or EOF reached B"
        y.sendall(b"fresh")
        (res,) = collect(svc, 1)
        assert res.context == "b" and res.err is None and bytes(res.buff[:res.bytes_transferred]) == b"fresh"
        b.close()
    finally:
        os.close(keep)


def test_service_close_leaks_no_fd(pairs):
    before = open_fds()
    for _ in range(10):
        s = kqmod.AIOService(workers=2)
        sock, peer = pairs("tcp")
        c = s.bind(sock)
        c.recv("r", bytearray(4))
        s.close()
        peer.close()
    assert open_fds() <= before + 1  # the listener pairs() keeps


@needs_emulation
def test_wake_pipe_where_evfilt_user_is_missing(monkeypatch, pairs):
    monkeypatch.setenv("GOAIO_KQUEUE_EMU_NO_EVFILT_USER", "1")
    probe = kqmod._poller_probe(2.0)
    assert probe["wake"] == "pipe" and probe["events"] == 0 and probe["woke_in"] < 0.5, probe
    before = open_fds()
    s = kqmod.AIOService(workers=2)
    monkeypatch.delenv("GOAIO_KQUEUE_EMU_NO_EVFILT_USER")
    try:
        sock, peer = pairs("tcp")
        conn = s.bind(sock)
        # a collector blocked in the poll is woken for a completion made by another thread
        got = []
        t = threading.Thread(target=lambda: got.append(s.get_complete_status(timeout=WAIT)))
        t.start()
        time.sleep(0.1)
        conn.send("s", b"ping")
        t.join(WAIT)
        assert got and got[0].context == "s" and got[0].err is None
        assert peer.recv(4) == b"ping"
        # a shorter timeout re-arms a poll that sleeps longer
        conn.set_recv_timeout(0.2)
        t0 = time.monotonic()
        conn.recv("r", bytearray(4))
        res = s.get_complete_status(timeout=WAIT)
        assert isinstance(res.err, RecvTimeout) and time.monotonic() - t0 < 1.5
        # close wakes a blocked collector
        errs = []

        def blocked():
            try:
                s.get_complete_status()
            except ServiceClosed as exc:
                errs.append(exc)

        t = threading.Thread(target=blocked)
        t.start()
        time.sleep(0.1)
    finally:
        s.close()
    t.join(WAIT)
    assert errs, "close() did not wake the blocked collector"
    peer.close()
    assert open_fds() <= before + 1
