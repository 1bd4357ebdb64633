# The kqueue poller (macOS/BSD; on Linux only in the GOAIO_KQUEUE_EMULATION test
# build, over the emulation in tests/kqueue_emu/kqueue_emu.c). Same interface as
# pollers/epoll.pxi (all nogil, no Python):
#   poller_open(p) -> 0 or errno      poller_close(p)
#   poller_add(p, fd, id) -> 0/errno  poller_del(p, fd) -> 0/errno
#   poller_wait(p, out, maxev, timeout_ms) -> number of pevent_t written, or -errno
#   poller_wake(p)                    (makes a poller_wait in another thread return)
#   poller_prepare_fd(fd) -> 0/errno  (per-OS socket setup at bind: SO_NOSIGPIPE)
#
# Invariants
#   * A connection is registered with EVFILT_READ and EVFILT_WRITE, both EV_CLEAR
#     (edge-triggered, as the engine expects), and udata = its generation-tagged
#     id, never the fd: a stale event for a closed connection whose fd number was
#     reused carries the old generation and the engine drops it.
#   * Changes are applied with EV_RECEIPT, so every change answers with its own
#     EV_ERROR entry and kevent() never collects (and loses) readiness events
#     in a call made only to change the registration.
#   * EV_EOF is reported as PF_READ|PF_HUP: kqueue sets it with bytes still
#     readable (data), and the engine reads them all before it acts on EOF.

from posix.types cimport pid_t
from posix.unistd cimport getpid
from goaio.includes.kqueue cimport *

cdef enum:
    WAKE_IDENT = 0       # the EVFILT_USER knote (its own namespace, not an fd)


cdef struct poller_t:
    int kq
    int wake_r           # the wake pipe where EVFILT_USER is missing, else -1
    int wake_w
    pid_t pid            # a kqueue is not inherited by fork(): only its owner closes it

cdef struct pevent_t:
    uint64_t id
    uint32_t flags


cdef int kq_apply(int kq, kevent_t *ch, int n) noexcept nogil:
    """Apply n (<= 2) changes, every one of them; the first error, or 0."""
    cdef kevent_t res[2]
    cdef timespec zero
    cdef int i, r, err = 0
    zero.tv_sec = 0
    zero.tv_nsec = 0
    if GOAIO_HAVE_EV_RECEIPT:
        for i in range(n):
            ch[i].flags |= EV_RECEIPT
        r = kevent(kq, ch, n, res, n, &zero)
        if r < 0:
            return errno
        for i in range(r):
            if (res[i].flags & EV_ERROR) and res[i].data != 0 and err == 0:
                err = <int>res[i].data
        return err
    # Without EV_RECEIPT, a call with room for events could collect real ones:
    # one change per call, no event list (an error fails the call).
    for i in range(n):
        if kevent(kq, &ch[i], 1, NULL, 0, NULL) < 0 and err == 0:
            err = errno
    return err


cdef int wake_pipe_open(poller_t *p) noexcept nogil:
    cdef int fds[2]
    cdef int i
    cdef kevent_t ch
    if pipe(fds) < 0:
        return errno
    p.wake_r = fds[0]
    p.wake_w = fds[1]
    for i in range(2):
        fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK)
        fcntl(fds[i], F_SETFD, FD_CLOEXEC)
    goaio_kev_set(&ch, <uintptr_t>p.wake_r, EVFILT_READ, EV_ADD | EV_CLEAR, 0, 0, GOAIO_WAKE_ID)
    return kq_apply(p.kq, &ch, 1)


cdef int poller_open(poller_t *p) noexcept nogil:
    cdef kevent_t ch
    cdef int err = 0
    p.wake_r = p.wake_w = -1
    p.pid = getpid()
    p.kq = kqueue()
    if p.kq < 0:
        return errno
    fcntl(p.kq, F_SETFD, FD_CLOEXEC)
    if GOAIO_HAVE_EVFILT_USER:
        goaio_kev_set(&ch, WAKE_IDENT, EVFILT_USER, EV_ADD | EV_CLEAR, 0, 0, GOAIO_WAKE_ID)
        err = kq_apply(p.kq, &ch, 1)
        if err == 0:
            return 0
    # no EVFILT_USER here (at build time, or refused by this kernel)
    err = wake_pipe_open(p)
    if err:
        poller_close(p)
    return err


cdef void poller_close(poller_t *p) noexcept nogil:
    if p.wake_r >= 0:
        close(p.wake_r)
        close(p.wake_w)
        p.wake_r = p.wake_w = -1
    if p.kq >= 0:
        # In a forked child the kqueue's number is free (or someone else's).
        if p.pid == getpid():
            goaio_kq_close(p.kq)
        p.kq = -1


cdef int poller_add(poller_t *p, int fd, uint64_t id) noexcept nogil:
    cdef kevent_t ch[2]
    cdef int err
    goaio_kev_set(&ch[0], <uintptr_t>fd, EVFILT_READ, EV_ADD | EV_CLEAR, 0, 0, id)
    goaio_kev_set(&ch[1], <uintptr_t>fd, EVFILT_WRITE, EV_ADD | EV_CLEAR, 0, 0, id)
    err = kq_apply(p.kq, ch, 2)
    if err:
        poller_del(p, fd)    # one filter may have been added
    return err


cdef int poller_del(poller_t *p, int fd) noexcept nogil:
    # Failure is harmless (ENOENT for a filter never added; EBADF): closing the
    # fd, which the engine does next, removes its knotes anyway.
    cdef kevent_t ch[2]
    goaio_kev_set(&ch[0], <uintptr_t>fd, EVFILT_READ, EV_DELETE, 0, 0, 0)
    goaio_kev_set(&ch[1], <uintptr_t>fd, EVFILT_WRITE, EV_DELETE, 0, 0, 0)
    return kq_apply(p.kq, ch, 2)


cdef int poller_fd(poller_t *p) noexcept nogil:
    return p.kq      # goaio.aio hook: readable while events wait

cdef void poller_wake(poller_t *p) noexcept nogil:
    cdef kevent_t ch
    cdef char one = 1
    if p.wake_w >= 0:
        write(p.wake_w, &one, 1)    # EAGAIN: the pipe is full, a wake-up is pending anyway
        return
    # udata is set again by every change to a knote: keep the wake id
    goaio_kev_set(&ch, WAKE_IDENT, EVFILT_USER, 0, NOTE_TRIGGER, 0, GOAIO_WAKE_ID)
    kevent(p.kq, &ch, 1, NULL, 0, NULL)


cdef int poller_prepare_fd(int fd) noexcept nogil:
    cdef int one = 1
    if GOAIO_HAVE_SO_NOSIGPIPE:
        # macOS refuses socket options (EINVAL) on a socket already shut down
        # both ways (a peer that reset before bind); it binds anyway and its
        # operations fail with the kernel's error.
        if setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof(one)) < 0 and errno != EINVAL:
            return errno
    return 0


cdef int poller_translate(poller_t *p, kevent_t *evs, int n, pevent_t *out) noexcept nogil:
    """Turn n kevents into pevents (READ and WRITE of one connection merged when
    adjacent); returns how many were written."""
    cdef int i, k = 0
    cdef uint64_t id
    cdef uint32_t f
    cdef unsigned short fl
    cdef char junk[64]
    for i in range(n):
        id = goaio_kev_udata(&evs[i])
        fl = evs[i].flags
        if id == GOAIO_WAKE_ID:
            if p.wake_r >= 0 and not (fl & EV_ERROR):
                while read(p.wake_r, junk, sizeof(junk)) == sizeof(junk):
                    pass
            continue
        if fl & EV_ERROR:
            if evs[i].data == 0:
                continue        # a receipt: the change was applied
            # A change for this id failed: let both directions try their system
            # call, which reports the error. A stale id is dropped by the engine.
            f = PF_READ | PF_WRITE | PF_HUP
        elif evs[i].filter == EVFILT_READ:
            f = PF_READ
            if fl & EV_EOF:
                # bytes may still be readable (data): the engine reads them first
                f |= PF_HUP
                if evs[i].fflags != 0:
                    f |= PF_WRITE   # an error (reset): pending sends must see it too
        elif evs[i].filter == EVFILT_WRITE:
            f = PF_WRITE
            if fl & EV_EOF:
                f |= PF_READ | PF_HUP   # the send side is shut: reset or error
        else:
            continue
        if k > 0 and out[k - 1].id == id:
            out[k - 1].flags |= f
        else:
            out[k].id = id
            out[k].flags = f
            k += 1
    return k


cdef int poller_wait(poller_t *p, pevent_t *out, int maxev, int timeout_ms) noexcept nogil:
    cdef kevent_t evs[POLL_BATCH_MAX]
    cdef timespec ts
    cdef int n
    if maxev > POLL_BATCH_MAX:
        maxev = POLL_BATCH_MAX
    ts.tv_sec = timeout_ms // 1000
    ts.tv_nsec = (timeout_ms % 1000) * 1000000
    n = kevent(p.kq, NULL, 0, evs, maxev, &ts if timeout_ms >= 0 else NULL)
    if n < 0:
        return -errno
    return poller_translate(p, evs, n, out)
