"""The pollers of the pure-Python backend: one small interface over epoll,
kqueue, poll and select.

Every poller has the same methods::

    register(fd, token, flags)    start watching fd for READ and/or WRITE
    modify(fd, token, flags)      change what fd is watched for (0: nothing)
    unregister(fd, token, forget=False)
    wait(timeout) -> [(token, events)]
    wake()                        make a wait() in another thread return now
    close()

``token`` is any object; ``wait`` hands it back with the events that fired,
a combination of READ, WRITE, HUP (the peer will send nothing more) and ERR.
A ``wake()`` shows up in the next ``wait()`` as one ``(WAKE, READ)`` entry,
after the wake-up descriptor was drained: a wake written after the drain is
seen by the next wait, so none is lost.

``edge`` tells the caller how to use it:

* edge-triggered pollers (epoll with EPOLLET, kqueue with EV_CLEAR) register
  a socket once for READ|WRITE and report each change of readiness once; the
  caller remembers readiness until a call says EAGAIN.
* level-triggered pollers (poll, select) report a ready socket at every
  wait, so the caller asks, with ``modify``, only for what it waits for now
  (READ while a receive is pending, WRITE while a send is blocked) and asks
  for nothing while idle: an idle readable or hung-up socket then costs no
  spin. A ``modify`` that adds interest while another thread waits wakes it,
  since that wait watches what was asked before it began.

``wait`` never sleeps longer than ``MAX_WAIT``: a longer wait, of any size,
is the caller's loop of such slices, so no OS call sees a value it cannot
represent and a collecting thread notices signals within one slice.

``GOAIO_PURE_POLLER`` (read by :func:`make_poller`, for tests) forces one of
``epoll``, ``kqueue``, ``poll``, ``select``; unset, the best one this
platform has is taken, in that order.
"""

import errno
import os
import select
import socket
import sys
import threading

from ._messages import MAX_WAIT, POLL_BATCH

__all__ = ["READ", "WRITE", "HUP", "ERR", "WAKE", "POLLERS", "available", "make_poller"]

READ = 1
WRITE = 2
HUP = 4
ERR = 8


class _WakeToken:
    __slots__ = ()

    def __repr__(self):
        return "WAKE"


#: The token of the wake-up descriptor in wait()'s results.
WAKE = _WakeToken()

#: Every poller, best first.
POLLERS = ("epoll", "kqueue", "poll", "select")

_WINDOWS = sys.platform == "win32"


def _clamp(timeout):
    """A wait's length in seconds: None and anything beyond MAX_WAIT are MAX_WAIT."""
    if timeout is None or timeout > MAX_WAIT or timeout != timeout:
        return MAX_WAIT
    if timeout <= 0:
        return 0.0
    return timeout


# --- wake-up descriptors ---------------------------------------------------------

class _Waker:
    """A descriptor that wake() makes readable and drain() empties:
    an eventfd where the OS has one, else a pipe (a socket pair on Windows,
    whose select() takes sockets only)."""

    def __init__(self):
        self._pair = None
        if hasattr(os, "eventfd"):
            self.fd = self._wfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self.wake = self._wake_eventfd
            self.drain = self._drain_eventfd
        elif _WINDOWS or not hasattr(os, "pipe"):
            r, w = socket.socketpair()
            r.setblocking(False)
            w.setblocking(False)
            self._pair = (r, w)
            self.fd = r.fileno()
            self._wfd = w.fileno()
            self.wake = self._wake_socket
            self.drain = self._drain_socket
        else:
            r, w = os.pipe()
            for fd in (r, w):
                os.set_blocking(fd, False)
                os.set_inheritable(fd, False)
            self.fd = r
            self._wfd = w
            self.wake = self._wake_pipe
            self.drain = self._drain_pipe

    def _wake_eventfd(self):
        try:
            os.eventfd_write(self.fd, 1)
        except (OSError, ValueError):  # closed, or the counter is full: it is readable
            pass

    def _drain_eventfd(self):
        try:
            os.eventfd_read(self.fd)
        except OSError:
            pass

    def _wake_pipe(self):
        try:
            os.write(self._wfd, b"\0")
        except OSError:  # full (then readable anyway) or closed
            pass

    def _drain_pipe(self):
        try:
            while os.read(self.fd, 4096):
                pass
        except OSError:
            pass

    def _wake_socket(self):
        try:
            self._pair[1].send(b"\0")
        except OSError:
            pass

    def _drain_socket(self):
        try:
            while self._pair[0].recv(4096):
                pass
        except OSError:
            pass

    def close(self):
        if self._pair is not None:
            for s in self._pair:
                s.close()
            return
        for fd in {self.fd, self._wfd}:
            try:
                os.close(fd)
            except OSError:
                pass


# --- epoll -----------------------------------------------------------------------

_EPOLLIN = getattr(select, "EPOLLIN", 0)
_EPOLLOUT = getattr(select, "EPOLLOUT", 0)
_EPOLLERR = getattr(select, "EPOLLERR", 0)
_EPOLLHUP = getattr(select, "EPOLLHUP", 0)
_EPOLLRDHUP = getattr(select, "EPOLLRDHUP", 0)


class EpollPoller:
    """Linux epoll, edge-triggered: one registration per socket, for both
    directions, at bind."""

    name = "epoll"
    edge = True
    IN_EV = _EPOLLIN | _EPOLLRDHUP | _EPOLLHUP | _EPOLLERR
    OUT_EV = _EPOLLOUT | _EPOLLHUP | _EPOLLERR
    HUP_EV = _EPOLLRDHUP | _EPOLLHUP | _EPOLLERR

    def __init__(self):
        self._ep = select.epoll()
        self._tokens = {}
        try:
            self._waker = _Waker()
            self._ep.register(self._waker.fd, select.EPOLLIN)
        except BaseException:
            self._ep.close()
            raise
        self.wake = self._waker.wake
        e = select
        self._mask = {0: 0, READ: e.EPOLLIN | e.EPOLLRDHUP, WRITE: e.EPOLLOUT,
                      READ | WRITE: e.EPOLLIN | e.EPOLLRDHUP | e.EPOLLOUT}
        self._et = e.EPOLLET
        self.raw_tokens = {self._waker.fd: WAKE}
        self._tokens = self.raw_tokens

    def settle(self, timeout=1.0):
        """Nothing to wait for: an epoll_wait() holds no file reference."""

    def fileno(self):
        """goaio.aio hook: the epoll descriptor (readable while events wait)."""
        return self._ep.fileno()

    def register(self, fd, token, flags):
        self._tokens[fd] = token
        try:
            self._ep.register(fd, self._mask[flags] | self._et)
        except BaseException:
            self._tokens.pop(fd, None)
            raise

    def modify(self, fd, token, flags):
        self._tokens[fd] = token
        self._ep.modify(fd, self._mask[flags] | self._et)

    def unregister(self, fd, token, forget=False):
        """Stop watching fd. ``forget``: the fd may already belong to another
        file (the user closed the socket): drop the token, touch nothing."""
        if self._tokens.get(fd) is token:
            del self._tokens[fd]
            if not forget:
                try:
                    self._ep.unregister(fd)
                except (OSError, ValueError):
                    pass

    def wait(self, timeout):
        events = self._ep.poll(_clamp(timeout), POLL_BATCH)
        if not events:
            return events
        get = self._tokens.get
        wfd = self._waker.fd
        out = []
        for fd, ev in events:
            if fd == wfd:
                self._waker.drain()
                out.append((WAKE, READ))
                continue
            token = get(fd)
            if token is None:
                continue
            out.append((token, self.canon(ev)))
        return out

    # The raw seam, for a caller that dispatches many events (the service):
    # wait_raw() is epoll's own list of (fd, epoll bits), raw_tokens maps an
    # fd to its token (the wake-up descriptor's to WAKE: the caller then calls
    # drain_wake() before acting on it), IN_EV / OUT_EV / HUP_EV are the
    # epoll bits of READ|HUP|ERR, WRITE|ERR (a full hang-up included: a write
    # fails now) and HUP|ERR, and canon() turns epoll bits into READ, WRITE,
    # HUP and ERR. No Python work per event here.

    def wait_raw(self, timeout):
        return self._ep.poll(_clamp(timeout), POLL_BATCH)

    def drain_wake(self):
        self._waker.drain()

    @staticmethod
    def canon(ev):
        """READ/WRITE/HUP/ERR of epoll's bits."""
        f = 0
        if ev & _EPOLLIN:
            f = READ
        if ev & _EPOLLOUT:
            f |= WRITE
        if ev & (_EPOLLRDHUP | _EPOLLHUP):
            f |= HUP
            if ev & _EPOLLHUP:  # both directions are down: a write fails now
                f |= WRITE
        if ev & _EPOLLERR:
            f |= ERR
        return f

    def close(self):
        try:
            self._ep.close()
        except OSError:
            pass
        self._waker.close()


# --- kqueue ----------------------------------------------------------------------

class KqueuePoller:
    """BSD/macOS kqueue, edge-triggered (EV_CLEAR): a read and a write filter
    per socket, added at bind."""

    name = "kqueue"
    edge = True

    def __init__(self):
        self._kq = select.kqueue()
        self._tokens = {}
        try:
            self._waker = _Waker()
            self._kq.control([select.kevent(self._waker.fd, select.KQ_FILTER_READ,
                                            select.KQ_EV_ADD)], 0, 0)
        except BaseException:
            self._kq.close()
            raise
        self.wake = self._waker.wake

    def settle(self, timeout=1.0):
        """Nothing to wait for: a kevent() wait holds no file reference."""

    def fileno(self):
        """goaio.aio hook: the kqueue descriptor (readable while events wait)."""
        return self._kq.fileno()

    def _changes(self, fd, flags, how):
        out = []
        if flags & READ:
            out.append(select.kevent(fd, select.KQ_FILTER_READ, how))
        if flags & WRITE:
            out.append(select.kevent(fd, select.KQ_FILTER_WRITE, how))
        return out

    def register(self, fd, token, flags):
        self._tokens[fd] = token
        try:
            self._kq.control(self._changes(fd, flags, select.KQ_EV_ADD | select.KQ_EV_CLEAR), 0, 0)
        except BaseException:
            self._tokens.pop(fd, None)
            raise

    def modify(self, fd, token, flags):
        self._tokens[fd] = token
        for f in (READ, WRITE):
            how = select.KQ_EV_ADD | select.KQ_EV_CLEAR if flags & f else select.KQ_EV_DELETE
            try:
                self._kq.control(self._changes(fd, f, how), 0, 0)
            except OSError as exc:
                if exc.errno != errno.ENOENT:  # deleting a filter never added
                    raise

    def unregister(self, fd, token, forget=False):
        if self._tokens.get(fd) is token:
            del self._tokens[fd]
            if not forget:
                for change in self._changes(fd, READ | WRITE, select.KQ_EV_DELETE):
                    try:
                        self._kq.control([change], 0, 0)
                    except (OSError, ValueError):
                        pass

    def wait(self, timeout):
        events = self._kq.control(None, POLL_BATCH, _clamp(timeout))
        if not events:
            return []
        get = self._tokens.get
        wfd = self._waker.fd
        merged = {}
        woke = False
        for kev in events:
            fd = kev.ident
            if fd == wfd:
                woke = True
                continue
            token = get(fd)
            if token is None:
                continue
            f = READ if kev.filter == select.KQ_FILTER_READ else WRITE
            if kev.flags & select.KQ_EV_EOF:
                f |= HUP
                if kev.fflags:  # the socket's pending error
                    f |= ERR
            if kev.flags & select.KQ_EV_ERROR:
                f |= ERR
            key = id(token)
            if key in merged:
                merged[key][1] |= f
            else:
                merged[key] = [token, f]
        out = [(t, f) for t, f in merged.values()]
        if woke:
            self._waker.drain()
            out.append((WAKE, READ))
        return out

    def close(self):
        try:
            self._kq.close()
        except OSError:
            pass
        self._waker.close()


# --- level-triggered: poll and select --------------------------------------------

class _LevelPoller:
    """What poll and select share: the interest table (fd -> [token, flags]),
    and waking a running wait when interest grows."""

    edge = False

    def __init__(self):
        self._lock = threading.Lock()
        self._fds = {}
        self._waiting = False
        self._rounds = 0                    # waits ended (settle() waits for one)
        self._ended = threading.Condition(self._lock)
        self._waker = _Waker()
        self.wake = self._waker.wake

    def register(self, fd, token, flags):
        with self._lock:
            self._fds[fd] = [token, 0]
        if flags:
            self.modify(fd, token, flags)

    def modify(self, fd, token, flags):
        with self._lock:
            entry = self._fds.get(fd)
            if entry is None or entry[0] is not token:
                return
            old = entry[1]
            if old == flags:
                return
            entry[1] = flags
            self._set(fd, old, flags)
            grew = flags & ~old and self._waiting
        if grew:
            self.wake()

    def unregister(self, fd, token, forget=False):
        with self._lock:
            entry = self._fds.get(fd)
            if entry is None or entry[0] is not token:
                return
            del self._fds[fd]
            if entry[1]:
                self._set(fd, entry[1], 0)
            busy = self._waiting
        # A poll()/select() in progress holds a reference to every file it
        # watches: the fd's socket would stay open (a listener listening, a
        # peer seeing no FIN) until that wait ends. End it now.
        if busy:
            self.wake()

    def _wait_ended(self):
        with self._lock:
            self._waiting = False
            self._rounds += 1
            self._ended.notify_all()

    def settle(self, timeout=1.0):
        """Return once a wait that was running (and may hold files just
        unregistered and closed) has ended; at most ``timeout`` seconds."""
        with self._lock:
            if not self._waiting:
                return
            started = self._rounds
        self.wake()
        with self._lock:
            self._ended.wait_for(lambda: self._rounds != started, timeout)

    def _set(self, fd, old, new):
        """Tell the OS object (lock held)."""

    def close(self):
        self._waker.close()


class PollPoller(_LevelPoller):
    """POSIX poll(), level-triggered. An fd asked for nothing is left out of
    the poll set, so a hung-up idle socket (POLLHUP is always reported) does
    not spin."""

    name = "poll"

    def __init__(self):
        super().__init__()
        self._poll = select.poll()
        self._poll.register(self._waker.fd, select.POLLIN)
        self._pmask = {READ: select.POLLIN, WRITE: select.POLLOUT,
                       READ | WRITE: select.POLLIN | select.POLLOUT}

    def _set(self, fd, old, new):
        if not new:
            try:
                self._poll.unregister(fd)
            except KeyError:
                pass
        elif old:
            self._poll.modify(fd, self._pmask[new])
        else:
            self._poll.register(fd, self._pmask[new])

    def wait(self, timeout):
        with self._lock:
            self._waiting = True
        try:
            events = self._poll.poll(_clamp(timeout) * 1000.0)
        finally:
            self._wait_ended()
        if not events:
            return []
        wfd = self._waker.fd
        fds = self._fds
        out = []
        for fd, ev in events:
            if fd == wfd:
                self._waker.drain()
                out.append((WAKE, READ))
                continue
            entry = fds.get(fd)
            if entry is None:
                continue
            f = 0
            if ev & select.POLLIN:
                f = READ
            if ev & select.POLLOUT:
                f |= WRITE
            if ev & select.POLLHUP:
                f |= HUP | WRITE
            if ev & (select.POLLERR | select.POLLNVAL):
                f |= ERR
            out.append((entry[0], f))
        return out


class SelectPoller(_LevelPoller):
    """select(), level-triggered: where nothing better exists (Windows).
    It cannot watch fds at or above FD_SETSIZE (1024 on most systems) except on
    Windows, where the limit is on the number of sockets."""

    name = "select"
    #: the first fd number select() refuses
    FD_LIMIT = None if _WINDOWS else 1024

    def register(self, fd, token, flags):
        if self.FD_LIMIT is not None and fd >= self.FD_LIMIT:
            raise ValueError(f"fd {fd} is too large for select() (FD_SETSIZE={self.FD_LIMIT}); "
                             "the 'select' poller cannot watch it")
        super().register(fd, token, flags)

    def wait(self, timeout):
        wfd = self._waker.fd
        with self._lock:
            rd = [wfd]
            wr = []
            for fd, (_, f) in self._fds.items():
                if f & READ:
                    rd.append(fd)
                if f & WRITE:
                    wr.append(fd)
            self._waiting = True
        try:
            try:
                r, w, _ = select.select(rd, wr, [], _clamp(timeout))
            except (OSError, ValueError) as exc:
                if isinstance(exc, OSError) and exc.errno != errno.EBADF:
                    raise
                # an fd was closed behind our back: report it, not the rest
                return self._bad(rd, wr)
        finally:
            self._wait_ended()
        out = []
        got = {}
        for fd in r:
            if fd == wfd:
                self._waker.drain()
                out.append((WAKE, READ))
            else:
                got[fd] = READ
        for fd in w:
            got[fd] = got.get(fd, 0) | WRITE
        fds = self._fds
        for fd, f in got.items():
            entry = fds.get(fd)
            if entry is not None:
                out.append((entry[0], f))
        return out

    def _bad(self, rd, wr):
        """The entries whose fd select() refuses, as ERR events."""
        out = []
        fds = self._fds
        for fd in set(rd) | set(wr):
            try:
                select.select([fd], [], [], 0)
            except (OSError, ValueError):
                entry = fds.get(fd)
                if entry is not None:
                    out.append((entry[0], ERR | READ | WRITE))
        return out


_CLASSES = {"epoll": EpollPoller, "kqueue": KqueuePoller, "poll": PollPoller, "select": SelectPoller}


def available():
    """The pollers this platform has, best first."""
    return [n for n in POLLERS if hasattr(select, n)]


def make_poller():
    """A new poller: the one ``GOAIO_PURE_POLLER`` names, else the best here."""
    raw = os.environ.get("GOAIO_PURE_POLLER")
    name = (raw or "").strip().lower()
    have = available()
    if not name:
        if not have:
            raise OSError("goaio: the select module offers no poller here")
        name = have[0]
    elif name not in _CLASSES:
        raise ValueError(f"GOAIO_PURE_POLLER={raw!r} is not valid; use one of: "
                         f"{', '.join(POLLERS)} (or leave it unset)")
    elif name not in have:
        raise OSError(f"GOAIO_PURE_POLLER={raw!r}: select.{name} does not exist on this "
                      f"platform (available: {', '.join(have) or 'none'})")
    return _CLASSES[name]()
