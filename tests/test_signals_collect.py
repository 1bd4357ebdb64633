"""Signals while a thread collects: a Python handler runs within 100 ms,
its exception propagates out of the collecting call, and nothing is lost: a
handler that raises in the middle of the service's work never leaves an
operation stuck or a read's bytes dropped.

Every case runs in a child process (signals, and a possible hang).
"""

import textwrap

import pytest

from support import run_python

PRELUDE = textwrap.dedent("""
    import os, signal, socket, sys, threading, time
    import goaio

    class Interrupt(Exception):
        pass

    def pair():
        lst = socket.create_server(("127.0.0.1", 0))
        c = socket.create_connection(lst.getsockname())
        s, _ = lst.accept()
        lst.close()
        c.settimeout(10)
        return s, c
""")


def run_case(backend, body, timeout=20):
    proc = run_python(PRELUDE + textwrap.dedent(body), backend_name=backend.name, timeout=timeout)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout



CALLS = {
    "one": "svc.get_complete_status()",
    "one-timeout": "svc.get_complete_status(timeout=3)",
    "batch": "svc.get_complete_statuses(16)",
    "iter": "next(iter(svc))",
}


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("lands", ["main", "worker"])
def test_raising_handler_runs_within_100ms_while_collecting(backend, call, lands):
    """SIGALRM with a raising handler while the main thread is blocked in a
    collecting call with nothing to collect: the exception comes out of the
    call within 100 ms of the signal; a result queued before it is still
    there afterwards. ``worker``: the signal is blocked in the main thread,
    so the OS delivers it to a service thread."""
    out = run_case(backend, f"""
    svc = goaio.AIOService()
    a, pa = pair()
    conn = svc.bind(a)
    fired = []

    def handler(sig, frame):
        fired.append(time.monotonic())
        raise Interrupt()

    signal.signal(signal.SIGALRM, handler)
    if {lands!r} == "worker":
        time.sleep(0.1)  # the service threads exist, with SIGALRM unblocked
        signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGALRM}})
    signal.setitimer(signal.ITIMER_REAL, 0.3)
    t0 = time.monotonic()
    try:
        res = {CALLS[call]}
    except Interrupt:
        out = time.monotonic()
    else:
        raise AssertionError(f"returned {{res!r}} after {{time.monotonic() - t0:.3f}}s")
    # where the signal went to another thread, the time it was raised is
    # t0 + 0.3; the handler then runs in the main thread
    late = out - (t0 + 0.3)
    assert late < 0.1, f"the handler's exception came {{late * 1000:.0f}} ms after the signal"
    if {lands!r} == "worker":
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {{signal.SIGALRM}})
    conn.recv("r", bytearray(4))
    pa.sendall(b"data")
    r = svc.get_complete_status(timeout=5)
    assert (r.context, r.err, bytes(r.buff)) == ("r", None, b"data"), r
    svc.close()
    print("ok")
    """, timeout=8)
    assert out.strip() == "ok"


def test_raising_handler_during_the_service_work_loses_nothing(backend):
    """SIGALRM every ~1 ms with a handler that raises while the main thread
    collects, over 150 rounds of one receive each: every receive completes
    (none stuck behind an event the interrupted round had consumed) and
    every byte lands where it belongs. A result whose return the handler cut
    off is accepted as delivered if its buffer holds the data and nothing is
    pending."""
    out = run_case(backend, """
    svc = goaio.AIOService()
    a, pa = pair()
    conn = svc.bind(a)
    armed = [False]
    hits = [0]

    def handler(sig, frame):
        if armed[0]:
            hits[0] += 1
            raise Interrupt()

    def rounds(n):
        global cut
        for rnd in range(n):
            payload = bytes([rnd % 251]) * 64
            buf = bytearray(64)
            conn.recv(rnd, buf)
            # the data comes while the main thread collects, at varying moments
            threading.Timer((rnd % 7) * 0.0005, pa.sendall, (payload,)).start()
            deadline = time.monotonic() + 3
            got = None
            while time.monotonic() < deadline:
                try:
                    armed[0] = True
                    got = svc.get_complete_status(timeout=0.02)
                    armed[0] = False
                except Interrupt:
                    armed[0] = False
                    continue
                if got is not None:
                    break
                if svc._stats()["live_ops"] == 0:
                    # completed, but not in the queue: its return was cut off
                    break
            if got is None:
                if svc._stats()["live_ops"]:
                    stuck.append(rnd)
                    break
                cut += 1
            else:
                assert (got.context, got.err, got.bytes_transferred) == (rnd, None, 64), (got, got.err)
            assert bytes(buf) == payload, f"round {rnd}: the bytes were lost"

    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.001, 0.0003)
    stuck = []
    cut = 0
    try:
        rounds(150)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        armed[0] = False
    assert not stuck, f"receive of round {stuck} never completed ({hits[0]} interrupts)"
    assert hits[0] > 20, hits[0]
    svc.close()
    print("ok", hits[0], cut)
    """, timeout=30)
    assert out.split()[0] == "ok"
