"""Helpers shared by the tests (imported as ``from support import ...``)."""

import os
import subprocess
import sys
import tempfile
import socket
import struct
import threading
import time

import pytest

#: Seconds any single wait in a test may take before the test fails.
WAIT = 10.0

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import goaio as _goaio  # noqa: E402

#: Where the goaio under test was imported from (the installed package, with
#: its compiled backend, or the source tree after an in-place build): child
#: interpreters import the very same one.
GOAIO_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(_goaio.__file__)))
#: Children run here, not in the repository: ``python -c`` puts its working
#: directory first on sys.path, where the source tree would shadow the package.
CHILD_CWD = tempfile.gettempdir()
LINUX = sys.platform.startswith("linux")


def subprocess_env(backend_name=None, **extra):
    """The environment for a child interpreter that imports the goaio under test."""
    env = dict(os.environ)
    env.pop("GOAIO_BACKEND", None)
    env["PYTHONPATH"] = GOAIO_PARENT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if backend_name is not None:
        env["GOAIO_BACKEND"] = backend_name
    env.update(extra)
    return env


def run_python(code, backend_name=None, timeout=60, args=(), argv=(), **env):
    """Run ``code`` in a fresh interpreter; returns CompletedProcess (text).

    ``args`` go to the interpreter (``-X dev``), ``argv`` to the code's sys.argv.
    """
    return subprocess.run(
        [sys.executable, *args, "-c", code, *argv],
        env=subprocess_env(backend_name, **env),
        cwd=CHILD_CWD,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


# --------------------------------------------------------------------------
# loopback pairs
# --------------------------------------------------------------------------

FAMILIES = ["tcp", "tcp6", "unix"]


def family_available(family):
    if family == "tcp6":
        if not socket.has_ipv6:
            return False
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
                s.bind(("::1", 0))
        except OSError:
            return False
        return True
    if family == "unix":
        return hasattr(socket, "AF_UNIX")
    return True


class Pairs:
    """Makes connected stream pairs over real listeners, and closes them at teardown.

    ``pairs()`` returns ``(to_bind, peer)``: ``to_bind`` is the accepted
    socket (give it to ``bind``), ``peer`` a blocking client socket with a
    timeout, used by the test as the remote end.
    """

    def __init__(self):
        self._listeners = {}
        self._socks = []
        self._kept = []
        self._tmpdir = None

    def keep(self, conn):
        """Hold ``conn`` until teardown (after the service closed it): an idle
        bound connection dropped unclosed would warn ResourceWarning."""
        self._kept.append(conn)
        return conn

    def _listener(self, family):
        lst = self._listeners.get(family)
        if lst is not None:
            return lst
        if not family_available(family):
            pytest.skip(f"{family} sockets are not available here")
        if family == "tcp":
            lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            lst.bind(("127.0.0.1", 0))
        elif family == "tcp6":
            lst = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            lst.bind(("::1", 0))
        elif family == "unix":
            if self._tmpdir is None:
                self._tmpdir = tempfile.mkdtemp(prefix="goaio")
            lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            lst.bind(os.path.join(self._tmpdir, f"l{len(self._listeners)}"))
        else:
            raise ValueError(family)
        lst.listen(4096)
        lst.settimeout(WAIT)
        self._listeners[family] = lst
        return lst

    def _client(self, family, small):
        fam = {"tcp": socket.AF_INET, "tcp6": socket.AF_INET6, "unix": socket.AF_UNIX}[family]
        c = socket.socket(fam, socket.SOCK_STREAM)
        self._socks.append(c)
        if small:
            # A small receive window makes sends to a non-reading peer pend
            # after a few hundred KiB (Linux lets tcp_rmem autotune to 32 MiB).
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        return c

    def _tune(self, s, family, small):
        if family in ("tcp", "tcp6"):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if small:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)

    def __call__(self, family="tcp", small=False):
        lst = self._listener(family)
        c = self._client(family, small)
        c.settimeout(WAIT)
        c.connect(lst.getsockname())
        s, _ = lst.accept()
        self._socks.append(s)
        s.settimeout(None)
        self._tune(s, family, small)
        if family != "unix":
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s, c

    def client_first(self, family="tcp"):
        """Like ``__call__`` but returns ``(client, accepted)``: the socket to bind
        is made first, so it takes the lowest free fd number."""
        lst = self._listener(family)
        c = self._client(family, False)
        c.settimeout(WAIT)
        c.connect(lst.getsockname())
        s, _ = lst.accept()
        self._socks.append(s)
        s.settimeout(WAIT)
        c.settimeout(None)
        return c, s

    def many(self, n, family="tcp"):
        """``n`` pairs at once, made in batches through the listen backlog."""
        lst = self._listener(family)
        out = []
        while len(out) < n:
            batch = min(512, n - len(out))
            clients = {}
            for _ in range(batch):
                c = self._client(family, False)
                c.settimeout(WAIT)
                c.connect(lst.getsockname())
                clients[c.getsockname()] = c
            for _ in range(batch):
                s, _ = lst.accept()
                self._socks.append(s)
                s.settimeout(None)
                out.append((s, clients.pop(s.getpeername())))
        return out

    def close(self):
        self._kept.clear()
        for s in self._socks:
            s.close()
        for lst in self._listeners.values():
            lst.close()
        if self._tmpdir is not None:
            for name in os.listdir(self._tmpdir):
                os.unlink(os.path.join(self._tmpdir, name))
            os.rmdir(self._tmpdir)




# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def collect(svc, n, timeout=WAIT):
    """Gather exactly ``n`` results within ``timeout`` seconds, or fail clearly."""
    deadline = time.monotonic() + timeout
    out = []
    while len(out) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"timed out after {timeout}s: collected {len(out)} of {n} results: {out!r}")
        res = svc.get_complete_status(timeout=left)
        if res is not None:
            out.append(res)
    return out


def collect_one(svc, timeout=WAIT):
    return collect(svc, 1, timeout)[0]


def assert_no_result(svc, wait=0.2):
    """Nothing more completes within ``wait`` seconds."""
    res = svc.get_complete_status(timeout=wait)
    assert res is None, f"unexpected extra result {res!r} (err={getattr(res, 'err', None)!r})"


def recv_exactly(sock, n, timeout=WAIT):
    """Read exactly ``n`` bytes from a blocking peer socket."""
    sock.settimeout(timeout)
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise AssertionError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def recv_until_eof(sock, timeout=WAIT):
    sock.settimeout(timeout)
    buf = bytearray()
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return bytes(buf)
        buf += chunk


def assert_nothing_to_read(sock, wait=0.2):
    """The peer has nothing more to read (and no EOF) within ``wait``."""
    sock.settimeout(wait)
    try:
        data = sock.recv(65536)
    except (socket.timeout, BlockingIOError):
        return
    finally:
        sock.settimeout(WAIT)
    raise AssertionError(f"unexpected bytes on the wire: {data[:64]!r} ({len(data)} bytes)")


def reset(sock):
    """Close ``sock`` so that the other end gets a RST (SO_LINGER 0)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def wait_until(pred, timeout=WAIT, interval=0.005, msg="condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {msg}")
        time.sleep(interval)


class Reader(threading.Thread):
    """Reads a peer socket in the background until EOF or ``n`` bytes."""

    def __init__(self, sock, n=None, chunk=1 << 20, delay=0.0):
        super().__init__(daemon=True)
        self.sock, self.n, self.chunk, self.delay = sock, n, chunk, delay
        self.data = bytearray()
        self.error = None
        self.start()

    def run(self):
        try:
            self.sock.settimeout(WAIT * 3)
            while self.n is None or len(self.data) < self.n:
                want = self.chunk if self.n is None else min(self.chunk, self.n - len(self.data))
                chunk = self.sock.recv(want)
                if not chunk:
                    break
                self.data += chunk
                if self.delay:
                    time.sleep(self.delay)
        except BaseException as exc:  # reported by result()
            self.error = exc

    def result(self, timeout=WAIT * 3):
        self.join(timeout)
        assert not self.is_alive(), f"reader still running after {timeout}s ({len(self.data)} bytes)"
        if self.error is not None:
            raise self.error
        return bytes(self.data)


def fd_count():
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else len(os.listdir("/dev/fd"))


def close_service(svc, timeout=WAIT):
    """``svc.close()``, failing (not hanging) if it does not return in ``timeout``."""
    errors = []

    def run():
        try:
            svc.close()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    t = threading.Thread(target=run, name="close_service", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        pytest.fail(f"svc.close() did not return within {timeout}s (deadlock?)")
    if errors:
        raise errors[0]


def assert_service_drained(svc):
    """After close: no live operation, connection or thread is left."""
    stats = svc._stats()
    assert stats["live_ops"] == 0, stats
    assert stats["conns"] == 0, stats
    assert stats["threads"] == 0, stats


def extend_hang_guard(seconds):
    """Re-arm conftest's faulthandler hang guard for a long (slow) test."""
    import faulthandler

    f = getattr(sys.modules.get("conftest"), "_hang_file", None) or sys.stderr
    faulthandler.dump_traceback_later(seconds, exit=True, file=f)


def close_aio_loop(lp):
    """Close a goaio.aio.Loop a test made: first let the far ends of the
    connections the test closed see their EOF and close (a server transport
    whose client has just closed may not have: 3.11's Server.wait_closed()
    does not wait for connections), then abort what is still open, so that
    no transport is left to warn "unclosed transport" in whichever later
    test the garbage collector runs in."""
    import asyncio
    import goaio.aio

    def open_transports():
        return [t for t in list(lp._transports.values())
                if isinstance(t, goaio.aio.GoaioTransport) and t._sock is not None]

    async def settle():
        for _ in range(200):
            if not open_transports():
                return
            await asyncio.sleep(0.01)

    if not lp.is_closed():
        lp.run_until_complete(settle())
        for tr in open_transports():
            tr.abort()
        lp.run_until_complete(asyncio.sleep(0))
    lp.close()
    assert lp.service.closed


def on_asyncio_loop(attempt):
    """``attempt(loop)`` (a coroutine function) run on asyncio's own
    selector loop: the reference a goaio.aio.Loop's behaviour is compared
    with."""
    import asyncio
    ref = asyncio.SelectorEventLoop()
    try:
        return ref.run_until_complete(attempt(ref))
    finally:
        ref.close()
