"""A close that re-enters the pure backend from inside its own code.

Python runs a signal handler on the main thread, between any two bytecodes;
so a handler can run while the main thread is inside the pure backend,
holding a service's, a listener's or a connection's lock (a non-reentrant
``threading.Lock``). A close made there -- ``svc.close()`` in a SIGTERM
handler is the common case -- would wait for that lock forever, since the
thread that holds it is the one waiting. The same holds for a close made by
user code that the backend itself called (a share_buff callback).

The compiled backends have no such window (they run handlers only where they
hold no lock), so there a close in a handler happens at once. Here
``nested()`` tells such a call apart from an ordinary one, and the close is
carried out by a short-lived thread instead, which takes the locks as soon
as the interrupted code lets them go: the call returns at once, and the
service, listener or connection is closed a moment later (docs/semantics.md,
"Signals").
"""

import sys
import threading

_PKG = __name__.rpartition(".")[0]
#: the modules whose code may hold one of the pure backend's locks
_MODULES = frozenset(f"{_PKG}.{m}" for m in (
    "_pure", "_pure_ops", "_pure_listen", "_pure_connect", "_pure_tls", "_purepoll", "_common"))


def nested():
    """True when the close calling this runs on the main thread in user code
    (a signal handler, a callback) that the pure backend's own code, further
    down the stack, is running; False for a call from the backend itself
    (service close closing its connections) or from any other thread."""
    if threading.current_thread() is not threading.main_thread():
        return False
    f = sys._getframe(2)            # the close's caller
    if f is None or f.f_globals.get("__name__") in _MODULES:
        return False
    f = f.f_back
    while f is not None:
        if f.f_globals.get("__name__") in _MODULES:
            return True
        f = f.f_back
    return False


def later(close, *args):
    """Run ``close(*args)`` on a thread of its own (it waits for the locks)."""
    threading.Thread(target=close, args=args, name="goaio-pure-close", daemon=True).start()
