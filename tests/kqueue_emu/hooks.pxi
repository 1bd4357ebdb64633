# tests/kqueue_emu/hooks.pxi -- test hooks of goaio._kqueue, compiled only into
# the emulation build (tests/kqueue_emu/_kqueue.pyx, GOAIO_KQUEUE_EMULATION=1).
# Private: tests/test_kqueue_emulation.py drives kevent() and the poller's event
# translation through these, the same on real kqueue and on the emulation.

#: True when built over the test-only emulation (Linux).
_EMULATED = bool(GOAIO_KQUEUE_EMULATED)

#: The constants the tests need.
_KQ = {
    "EVFILT_READ": EVFILT_READ, "EVFILT_WRITE": EVFILT_WRITE, "EVFILT_USER": EVFILT_USER,
    "EV_ADD": EV_ADD, "EV_DELETE": EV_DELETE, "EV_CLEAR": EV_CLEAR, "EV_RECEIPT": EV_RECEIPT,
    "EV_EOF": EV_EOF, "EV_ERROR": EV_ERROR, "NOTE_TRIGGER": NOTE_TRIGGER,
    "HAVE_EVFILT_USER": bool(GOAIO_HAVE_EVFILT_USER),
    "PF_READ": PF_READ, "PF_WRITE": PF_WRITE, "PF_HUP": PF_HUP, "WAKE_ID": GOAIO_WAKE_ID,
}


def _kq_open():
    """A new kqueue (an fd number); close it with _kq_close()."""
    cdef int kq = kqueue()
    if kq < 0:
        raise _oserror(errno)
    return kq


def _kq_close(int kq):
    goaio_kq_close(kq)


def _kevent(int kq, changes=(), int nevents=0, timeout=None):
    """One kevent() call. changes: (ident, filter, flags, fflags, data, udata)
    tuples; returns the events as such tuples; OSError when it fails."""
    cdef int nch = len(changes), i, r, err = 0
    cdef kevent_t *buf = <kevent_t *>PyMem_RawMalloc((nch + nevents + 1) * sizeof(kevent_t))
    cdef timespec ts
    cdef timespec *tsp = NULL
    if buf == NULL:
        raise MemoryError()
    try:
        for i, (ident, filt, flags, fflags, data, udata) in enumerate(changes):
            goaio_kev_set(&buf[i], ident, filt, flags, fflags, data, udata)
        if timeout is not None:
            ts.tv_sec = <long>int(timeout)
            ts.tv_nsec = <long>((timeout - int(timeout)) * 1e9)
            tsp = &ts
        with nogil:
            r = kevent(kq, buf, nch, buf + nch, nevents, tsp)
            if r < 0:
                err = errno
        if r < 0:
            raise _oserror(err)
        return [(buf[nch + i].ident, buf[nch + i].filter, buf[nch + i].flags, buf[nch + i].fflags,
                 buf[nch + i].data, goaio_kev_udata(&buf[nch + i])) for i in range(r)]
    finally:
        PyMem_RawFree(buf)


def _translate(events):
    """The poller's translation of kevents (tuples as _kevent returns) into
    (id, PF_* flags) pairs, as poll_once sees them."""
    cdef int n = len(events), i, k
    cdef kevent_t *evs = <kevent_t *>PyMem_RawMalloc((n + 1) * sizeof(kevent_t))
    cdef pevent_t *out = <pevent_t *>PyMem_RawMalloc((n + 1) * sizeof(pevent_t))
    cdef poller_t p
    p.kq = p.wake_r = p.wake_w = -1
    try:
        if evs == NULL or out == NULL:
            raise MemoryError()
        for i, (ident, filt, flags, fflags, data, udata) in enumerate(events):
            goaio_kev_set(&evs[i], ident, filt, flags, fflags, data, udata)
        k = poller_translate(&p, evs, n, out)
        return [(out[i].id, out[i].flags) for i in range(k)]
    finally:
        PyMem_RawFree(evs)
        PyMem_RawFree(out)


def _poller_probe(double wait=1.0):
    """Open a poller as a service does; return how it wakes ("user" or "pipe")
    and whether a poller_wake() ends a poller_wait() of `wait` seconds at once."""
    cdef poller_t p
    cdef pevent_t out[4]
    cdef int err, n
    cdef int64_t t0, dt
    err = poller_open(&p)
    if err:
        raise _oserror(err)
    try:
        mode = "pipe" if p.wake_r >= 0 else "user"
        with nogil:
            poller_wake(&p)
            t0 = goaio_now_ns()
            n = poller_wait(&p, out, 4, <int>(wait * 1000))
            dt = goaio_now_ns() - t0
        return {"wake": mode, "events": n, "woke_in": dt / 1e9}
    finally:
        poller_close(&p)
