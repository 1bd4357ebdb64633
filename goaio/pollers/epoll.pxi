# The epoll poller: the only part of the compiled core that is Linux-specific.
# Interface used by the core (core/engine.pxi) (all nogil, no Python):
#   poller_open(p) -> 0 or errno      poller_close(p)
#   poller_add(p, fd, id) -> 0/errno  poller_del(p, fd) -> 0/errno
#   poller_wait(p, out, maxev, timeout_ms) -> number of pevent_t written, or -errno
#   poller_wake(p)                    (makes a poller_wait in another thread return)
#   poller_prepare_fd(fd) -> 0/errno  (per-OS socket setup at bind; nothing on Linux)
# Connections are registered under their generation-tagged id, never the fd.

from goaio.includes.epoll cimport *


cdef struct poller_t:
    int epfd
    int wakefd

cdef struct pevent_t:
    uint64_t id
    uint32_t flags

cdef int poller_open(poller_t *p) noexcept nogil:
    cdef epoll_event ev
    p.epfd = epoll_create1(EPOLL_CLOEXEC)
    if p.epfd < 0:
        return errno
    p.wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
    if p.wakefd < 0:
        close(p.epfd)
        return errno
    ev.events = EPOLLIN | EPOLLET
    ev.data.u64 = GOAIO_WAKE_ID
    if epoll_ctl(p.epfd, EPOLL_CTL_ADD, p.wakefd, &ev) < 0:
        close(p.wakefd)
        close(p.epfd)
        return errno
    return 0

cdef void poller_close(poller_t *p) noexcept nogil:
    if p.wakefd >= 0:
        close(p.wakefd)
        p.wakefd = -1
    if p.epfd >= 0:
        close(p.epfd)
        p.epfd = -1

cdef int poller_add(poller_t *p, int fd, uint64_t id) noexcept nogil:
    cdef epoll_event ev
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
    ev.data.u64 = id
    if epoll_ctl(p.epfd, EPOLL_CTL_ADD, fd, &ev) < 0:
        return errno
    return 0

cdef int poller_del(poller_t *p, int fd) noexcept nogil:
    cdef epoll_event ev
    if epoll_ctl(p.epfd, EPOLL_CTL_DEL, fd, &ev) < 0:
        return errno
    return 0

cdef int poller_prepare_fd(int fd) noexcept nogil:
    return 0    # every send passes MSG_NOSIGNAL: no SIGPIPE to switch off

cdef int poller_fd(poller_t *p) noexcept nogil:
    return p.epfd    # goaio.aio hook: readable while events wait

cdef void poller_wake(poller_t *p) noexcept nogil:
    cdef uint64_t one = 1
    write(p.wakefd, &one, 8)

cdef int poller_wait(poller_t *p, pevent_t *out, int maxev, int timeout_ms) noexcept nogil:
    cdef epoll_event evs[POLL_BATCH_MAX]
    cdef int n, i, k = 0
    cdef uint32_t e, f
    cdef uint64_t junk
    if maxev > POLL_BATCH_MAX:
        maxev = POLL_BATCH_MAX
    n = epoll_wait(p.epfd, evs, maxev, timeout_ms)
    if n < 0:
        return -errno
    for i in range(n):
        if evs[i].data.u64 == GOAIO_WAKE_ID:
            read(p.wakefd, &junk, 8)
            continue
        e = evs[i].events
        f = 0
        if e & EPOLLIN:
            f |= PF_READ
        if e & EPOLLOUT:
            f |= PF_WRITE
        # Hang-up and error: make both directions try their system call, which
        # reports the data left, then EOF or the error (reads come first).
        if e & (EPOLLRDHUP | EPOLLHUP | EPOLLERR):
            f |= PF_READ | PF_HUP
            if e & (EPOLLHUP | EPOLLERR):
                f |= PF_WRITE
        out[k].id = evs[i].data.u64
        out[k].flags = f
        k += 1
    return k
