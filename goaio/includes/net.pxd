# C declarations of the socket helpers of listeners and connects (includes/net.h:
# thin wrappers of the system calls, no logic beyond them).
from goaio.includes.posix cimport socklen_t

cdef extern from "includes/net.h" nogil:
    ctypedef struct goaio_sa_t:
        pass
    int goaio_socket(int family)
    int goaio_accept(int lfd)
    int goaio_family(const goaio_sa_t *sa)
    bint goaio_is_inet(int family)
    int goaio_af_unix()
    int goaio_connect(int fd, const goaio_sa_t *sa, socklen_t len)
    int goaio_bind(int fd, const goaio_sa_t *sa, socklen_t len)
    int goaio_sock_error(int fd)
    bint goaio_has_peer(int fd)
    void goaio_set_nodelay(int fd)
    int goaio_shutdown_wr(int fd)
    bint goaio_connect_pending(int e, int family)
    bint goaio_accept_aborted(int e)
    bint goaio_accept_exhausted(int e)
    socklen_t goaio_sa_inet(goaio_sa_t *sa, int family, const char *host, int port,
                            unsigned int flowinfo, unsigned int scope_id)
    socklen_t goaio_sa_unix(goaio_sa_t *sa, const char *path, size_t n)
    enum:
        EADDRNOTAVAIL
        EAFNOSUPPORT
        ENAMETOOLONG
