"""Waits and timeouts of any size: a value too large to represent (math.inf,
an int beyond any float, 30 days, 1e9...) means "no limit", never an
OverflowError, a wait that never returns, or a timer that fails at once.

Each case runs in a child process: a collector stuck in an endless OS wait
must fail the test, not hang the suite.
"""

import math
import textwrap

import pytest

from support import run_python

HUGE = {
    "30days": "30 * 86400",
    "1e9": "1e9",
    "1e10": "1e10",
    "1e12": "1e12",
    "inf": "math.inf",
    "int400": "10 ** 400",
}


def run_case(backend, body, timeout=60):
    code = "import math, socket, threading, time\nimport goaio\n" + PAIR + textwrap.dedent(body)
    proc = run_python(code, backend_name=backend.name, timeout=timeout)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


PAIR = """
def pair(small=False):
    lst = socket.create_server(("127.0.0.1", 0))
    c = socket.socket()
    if small:  # a small window (set before connecting), so that sends pend
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    c.connect(lst.getsockname())
    s, _ = lst.accept()
    if small:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
    lst.close()
    return s, c
"""


@pytest.mark.parametrize("value", list(HUGE), ids=list(HUGE))
def test_huge_recv_timeout_means_no_limit(backend, value):
    """A receive with a huge timeout never times out, never fails at once, and
    does not stop another connection's short timeout from firing."""
    out = run_case(backend, f"""
    svc = goaio.AIOService()
    a, pa = pair()
    b, pb = pair()
    ca = svc.bind(a)
    cb = svc.bind(b)
    ca.set_recv_timeout({HUGE[value]})
    ca.recv("huge", bytearray(8))
    cb.set_recv_timeout(0.1)
    t0 = time.monotonic()
    cb.recv("short", bytearray(8))
    r = svc.get_complete_status(timeout=5)
    took = time.monotonic() - t0
    assert r is not None and r.context == "short", r
    assert isinstance(r.err, goaio.RecvTimeout), r.err
    assert took < 2.0, took
    # the huge one is still pending, and a bounded collect returns on time
    t0 = time.monotonic()
    assert svc.get_complete_status(timeout=0.2) is None
    assert time.monotonic() - t0 < 2.0
    # a collector thread without a timeout polls with the huge timer at the
    # head of the timer heap, and gets the data when it comes
    got = []
    t = threading.Thread(target=lambda: got.append(svc.get_complete_status()), daemon=True)
    t.start()
    time.sleep(0.3)
    pa.sendall(b"data")
    t.join(5)
    assert got, "the collector never returned"
    r = got[0]
    assert (r.context, r.err, bytes(r.buff[:4])) == ("huge", None, b"data"), (r, r.err)
    svc.close()
    print("ok")
    """)
    assert out.strip() == "ok"


@pytest.mark.parametrize("value", list(HUGE), ids=list(HUGE))
def test_huge_send_timeout_means_no_limit(backend, value):
    """A send waiting for the peer under a huge send timeout completes when
    the peer reads, without SendTimeout."""
    out = run_case(backend, f"""
    svc = goaio.AIOService()
    a, pa = pair(small=True)
    ca = svc.bind(a)
    ca.set_send_timeout({HUGE[value]})
    data = bytes(4 << 20)
    ca.send("big", data)
    assert svc.get_complete_status(timeout=0.3) is None   # blocked, not failed
    got = 0
    pa.settimeout(10)
    while got < len(data):
        got += len(pa.recv(1 << 20))
    r = svc.get_complete_status(timeout=10)
    assert (r.context, r.err, r.bytes_transferred) == ("big", None, len(data)), (r, r.err)
    svc.close()
    print("ok")
    """)
    assert out.strip() == "ok"


@pytest.mark.parametrize("value", list(HUGE), ids=list(HUGE))
@pytest.mark.parametrize("call", ["one", "batch"])
def test_huge_collect_timeout_waits_for_the_result(backend, value, call):
    """get_complete_status*(timeout=huge) waits (no OverflowError) and returns
    the completion made while it waits."""
    get = ("svc.get_complete_status(timeout=T)" if call == "one"
           else "svc.get_complete_statuses(8, timeout=T)[0]")
    out = run_case(backend, f"""
    T = {HUGE[value]}
    svc = goaio.AIOService()
    a, pa = pair()
    ca = svc.bind(a)
    ca.recv("r", bytearray(8))
    threading.Timer(0.3, pa.sendall, (b"late",)).start()
    t0 = time.monotonic()
    r = {get}
    assert (r.context, r.err, bytes(r.buff[:4])) == ("r", None, b"late"), r
    assert 0.2 < time.monotonic() - t0 < 5
    svc.close()
    print("ok")
    """)
    assert out.strip() == "ok"


def test_huge_timeouts_are_accepted_by_the_checks(backend, svc, connect):
    """No OverflowError at the call: an int too large for a float is "no limit"."""
    conn, _ = connect()
    for v in (10 ** 400, math.inf, 1e308, 2 ** 64):
        conn.set_recv_timeout(v)
        conn.set_send_timeout(v)
        assert svc.get_complete_status(timeout=0) is None
        assert svc.get_complete_statuses(4, timeout=0) == []
    with pytest.raises(ValueError):
        conn.set_recv_timeout(-10 ** 400)
    with pytest.raises(ValueError):
        svc.get_complete_status(timeout=-math.inf)
