# C declarations of kqueue/kevent (no logic here): the system's on macOS/BSD, the
# test-only emulation over epoll in the GOAIO_KQUEUE_EMULATION build on Linux
# (includes/kqueue.h chooses).
from libc.stdint cimport int64_t, uint64_t, uintptr_t
from goaio.includes.posix cimport timespec, socklen_t

cdef extern from "includes/kqueue.h" nogil:
    # struct kevent; udata (void * or intptr_t, per system) only through the helpers
    cdef struct kevent_t "kevent":
        uintptr_t ident
        short filter
        unsigned short flags
        unsigned int fflags
        int64_t data

    int kqueue()
    int kevent(int kq, const kevent_t *changelist, int nchanges,
               kevent_t *eventlist, int nevents, const timespec *timeout)
    int goaio_kq_close(int kq)
    void goaio_kev_set(kevent_t *ev, uintptr_t ident, int filter, unsigned flags,
                       unsigned fflags, int64_t data, uint64_t udata)
    uint64_t goaio_kev_udata(const kevent_t *ev)

    enum:
        EVFILT_READ
        EVFILT_WRITE
        EVFILT_USER
        EV_ADD
        EV_DELETE
        EV_CLEAR
        EV_RECEIPT
        EV_EOF
        EV_ERROR
        NOTE_TRIGGER
        GOAIO_KQUEUE_EMULATED
        GOAIO_HAVE_EVFILT_USER
        GOAIO_HAVE_EV_RECEIPT
        GOAIO_HAVE_SO_NOSIGPIPE

    # the macOS SIGPIPE hook (SO_NOSIGPIPE at bind)
    int setsockopt(int fd, int level, int name, const void *value, socklen_t len)
    enum:
        SOL_SOCKET
        SO_NOSIGPIPE
        EINVAL
