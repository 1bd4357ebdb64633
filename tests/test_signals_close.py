"""A signal handler that closes the service, a listener or a connection while
the main thread is busy inside goaio (posting, closing, collecting) closes
it: the handler returns, the interrupted call finishes or raises
ServiceClosed/ConnClosed, and nothing waits forever. Before the fix the pure
backend deadlocked here one trial in a few: the handler's close waited for a
lock the interrupted code, on the same thread, held (docs/semantics.md,
"Signals"). Each case runs in a child process with a timeout, on every
backend, 60 trials at random moments.
"""

import signal

import pytest

from support import run_python

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="POSIX signals only")

CHILD = r"""
import importlib, os, random, signal, socket, sys, threading, time

mod = importlib.import_module("goaio._" + sys.argv[1])
what = sys.argv[2]
import goaio

done = 0
for trial in range(60):
    svc = mod.AIOService()
    ln = svc.listen(("127.0.0.1", 0))
    pairs = [socket.socketpair() for _ in range(100)]
    conns = [svc.bind(a) for a, b in pairs]
    fired = []

    def handler(signum, frame):
        if what == "service":
            svc.close()
        elif what == "listener":
            ln.close()
        else:
            for c in conns:
                c.close()
        fired.append(time.monotonic())

    signal.signal(signal.SIGUSR1, handler)
    delay = random.uniform(0, 0.003)
    killer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGUSR1))
    killer.start()
    try:
        for i, c in enumerate(conns):
            ln.accept(i)
            c.recv(i, bytearray(16))
            c.send(i, b"x")
            svc.get_complete_statuses(8, timeout=0)
            c.close()
    except (goaio.ServiceClosed, goaio.ConnClosed):
        pass
    killer.join()
    while not fired:
        time.sleep(0.001)
    # what the handler closed is closed a moment later at the latest
    deadline = time.monotonic() + 5
    if what == "service":
        while True:
            try:
                svc.get_complete_status(timeout=0.05)
            except goaio.ServiceClosed:
                break
            assert time.monotonic() < deadline, "the service did not close"
    elif what == "listener":
        while not ln.closed:
            assert time.monotonic() < deadline, "the listener did not close"
            time.sleep(0.002)
    else:
        while not all(c.closed for c in conns):
            assert time.monotonic() < deadline, "a connection did not close"
            time.sleep(0.002)
    svc.close()
    for a, b in pairs:
        a.close()
        b.close()
    done += 1
print("trials", done)
"""


@pytest.mark.parametrize("what", ["service", "listener", "connections"])
def test_a_close_in_a_signal_handler_never_deadlocks(backend, what):
    r = run_python(CHILD, argv=[backend.name, what], timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["trials", "60"]
