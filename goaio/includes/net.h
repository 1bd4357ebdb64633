/* Socket helpers of the compiled core's listeners and connects
 * (core/listener.pxi, core/connect.pxi): every call here is a plain system
 * call wrapper, safe without the GIL. */
#ifndef GOAIO_NET_H
#define GOAIO_NET_H

#include "compat.h"
#include <string.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>

#if defined(__APPLE__) || defined(__FreeBSD__) || defined(__NetBSD__) || defined(__OpenBSD__) || defined(__DragonFly__)
#define GOAIO_SA_LEN 1
#else
#define GOAIO_SA_LEN 0
#endif

typedef struct sockaddr_storage goaio_sa_t;

static inline int goaio_nonblock_cloexec(int fd) {
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 || fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
        return -1;
    return 0;
}

/* A new non-blocking, close-on-exec stream socket; -1 with errno. */
static inline int goaio_socket(int family) {
#ifdef SOCK_NONBLOCK
    return socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
#else
    int fd = socket(family, SOCK_STREAM, 0);
    if (fd >= 0 && goaio_nonblock_cloexec(fd) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
#endif
}

/* accept() a non-blocking, close-on-exec socket; -1 with errno. */
static inline int goaio_accept(int lfd) {
#if defined(__linux__)
    return accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
#else
    int fd = accept(lfd, NULL, NULL);
    if (fd >= 0 && goaio_nonblock_cloexec(fd) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
#endif
}

static inline int goaio_family(const goaio_sa_t *sa) { return sa->ss_family; }
static inline int goaio_is_inet(int family) { return family == AF_INET || family == AF_INET6; }
static inline int goaio_af_unix(void) { return AF_UNIX; }

static inline int goaio_connect(int fd, const goaio_sa_t *sa, socklen_t len) {
    return connect(fd, (const struct sockaddr *)sa, len);
}

static inline int goaio_bind(int fd, const goaio_sa_t *sa, socklen_t len) {
    return bind(fd, (const struct sockaddr *)sa, len);
}

/* SO_ERROR of fd (or errno when getsockopt fails). */
static inline int goaio_sock_error(int fd) {
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        return errno ? errno : EBADF;
    return err;
}

/* 1 if the socket has a peer (connected and not reset), else 0 (errno). */
static inline int goaio_has_peer(int fd) {
    goaio_sa_t sa;
    socklen_t len = sizeof(sa);
    return getpeername(fd, (struct sockaddr *)&sa, &len) == 0;
}

static inline void goaio_set_nodelay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static inline int goaio_shutdown_wr(int fd) { return shutdown(fd, SHUT_WR); }

/* A connect() result that means "in progress": wait for writability.
 * EAGAIN only for TCP (a Unix connect says EAGAIN when the queue is full). */
static inline int goaio_connect_pending(int e, int family) {
    return e == EINPROGRESS || e == EALREADY || e == EINTR
        || (family != AF_UNIX && (e == EAGAIN || e == EWOULDBLOCK));
}

/* accept() errors: a connection that died in the queue (skip it) ... */
static inline int goaio_accept_aborted(int e) {
#ifdef EPROTO
    if (e == EPROTO) return 1;
#endif
    return e == ECONNABORTED;
}

/* ... and "no descriptor or memory to give now" (back off) */
static inline int goaio_accept_exhausted(int e) {
    return e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM;
}

/* Fill sa for a numeric IPv4/IPv6 host; its length, or 0 if host is not one. */
static inline socklen_t goaio_sa_inet(goaio_sa_t *sa, int family, const char *host,
                                      int port, unsigned int flowinfo, unsigned int scope_id) {
    memset(sa, 0, sizeof(*sa));
    if (family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)sa;
        if (inet_pton(AF_INET, host, &a->sin_addr) != 1)
            return 0;
        a->sin_family = AF_INET;
        a->sin_port = htons((unsigned short)port);
#if GOAIO_SA_LEN
        a->sin_len = sizeof(*a);
#endif
        return sizeof(*a);
    }
    if (family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)sa;
        if (inet_pton(AF_INET6, host, &a->sin6_addr) != 1)
            return 0;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((unsigned short)port);
        a->sin6_flowinfo = htonl(flowinfo);
        a->sin6_scope_id = scope_id;
#if GOAIO_SA_LEN
        a->sin6_len = sizeof(*a);
#endif
        return sizeof(*a);
    }
    return 0;
}

/* Fill sa for a Unix socket path of n bytes; its length, or 0 if too long. */
static inline socklen_t goaio_sa_unix(goaio_sa_t *sa, const char *path, size_t n) {
    struct sockaddr_un *a = (struct sockaddr_un *)sa;
    memset(sa, 0, sizeof(*sa));
    if (n >= sizeof(a->sun_path))
        return 0;
    a->sun_family = AF_UNIX;
    memcpy(a->sun_path, path, n);
#if GOAIO_SA_LEN
    a->sun_len = (unsigned char)(offsetof(struct sockaddr_un, sun_path) + n + 1);
#endif
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (path[0] != 0 ? 1 : 0));
}

#endif
