/* goaio bench: a single-threaded epoll TLS echo server on OpenSSL, the
 * machine's TLS ceiling for the bench's TLS rows (echo_epoll.c's TLS twin).
 *
 *   echo_tls_epoll PORT CERT KEY      (PORT 0 picks a free one)
 *
 * Level-triggered epoll, non-blocking sockets and SSL objects, TCP_NODELAY,
 * SSL_MODE_RELEASE_BUFFERS (an idle connection keeps no record buffer).
 * Each readable connection: the handshake step, or SSL_read what is there
 * and SSL_write it back; a write that would block keeps its bytes (the only
 * per-connection buffer, while it lasts), waits for EPOLLOUT and stops
 * reading that connection meanwhile. Prints
 * "c tls echo server listening on 127.0.0.1:PORT" when ready; SIGINT and
 * SIGTERM end it with status 0.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

struct conn {
    int fd;
    int handshaken;
    SSL *ssl;
    unsigned char *pending; /* a write that would block, retried as is */
    int pending_len;
};

static volatile sig_atomic_t stopping;
static int ep;
static unsigned char buf[16384];

static void on_signal(int sig) {
    (void)sig;
    stopping = 1;
}

static void drop(struct conn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    SSL_free(c->ssl);
    close(c->fd);
    free(c->pending);
    free(c);
    ERR_clear_error();
}

static void watch(struct conn *c, int out) {
    struct epoll_event ev = {.events = out ? EPOLLOUT : EPOLLIN, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Writes buf[0..n); returns 0 when written, 1 when it would block (kept
 * as pending), -1 on error. */
static int echo_out(struct conn *c, const unsigned char *data, int n) {
    int r = SSL_write(c->ssl, data, n);
    if (r > 0) return 0;
    int e = SSL_get_error(c->ssl, r);
    if (e != SSL_ERROR_WANT_WRITE && e != SSL_ERROR_WANT_READ) return -1;
    if (data != c->pending) {
        c->pending = malloc((size_t)n);
        if (!c->pending) return -1;
        memcpy(c->pending, data, (size_t)n);
        c->pending_len = n;
    }
    watch(c, 1);
    return 1;
}

static void serve(struct conn *c) {
    if (c->pending) {
        int r = echo_out(c, c->pending, c->pending_len);
        if (r < 0) {
            drop(c);
            return;
        }
        if (r > 0) return;
        free(c->pending);
        c->pending = NULL;
        watch(c, 0);
    }
    if (!c->handshaken) {
        int r = SSL_do_handshake(c->ssl);
        if (r != 1) {
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ) return;
            if (e == SSL_ERROR_WANT_WRITE) {
                watch(c, 1);
                return;
            }
            drop(c);
            return;
        }
        c->handshaken = 1;
        watch(c, 0);
    }
    for (;;) {
        int n = SSL_read(c->ssl, buf, sizeof buf);
        if (n <= 0) {
            int e = SSL_get_error(c->ssl, n);
            if (e == SSL_ERROR_WANT_READ) return;
            if (e == SSL_ERROR_WANT_WRITE) {
                watch(c, 1);
                return;
            }
            drop(c); /* close_notify, EOF or an error */
            return;
        }
        int r = echo_out(c, buf, n);
        if (r < 0) {
            drop(c);
            return;
        }
        if (r > 0) return; /* no more reading until it is written */
    }
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s PORT CERT KEY\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx || SSL_CTX_use_certificate_chain_file(ctx, argv[2]) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, argv[3], SSL_FILETYPE_PEM) != 1) {
        fprintf(stderr, "echo_tls_epoll: cannot load %s / %s\n", argv[2], argv[3]);
        ERR_print_errors_fp(stderr);
        return 1;
    }
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[1]))};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ls < 0 || bind(ls, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(ls, 4096) < 0 ||
        getsockname(ls, (struct sockaddr *)&addr, &len) < 0) {
        perror("echo_tls_epoll: listen");
        return 1;
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &lev);
    printf("c tls echo server listening on 127.0.0.1:%d\n", ntohs(addr.sin_port));
    fflush(stdout);
    struct epoll_event evs[256];
    while (!stopping) {
        int n = epoll_wait(ep, evs, 256, 500);
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c) {
                serve(c);
                continue;
            }
            for (;;) {
                int fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (fd < 0) break;
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                c = calloc(1, sizeof *c);
                if (!c || !(c->ssl = SSL_new(ctx))) {
                    free(c);
                    close(fd);
                    continue;
                }
                c->fd = fd;
                SSL_set_fd(c->ssl, fd);
                SSL_set_accept_state(c->ssl);
                struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
            }
        }
    }
    return 0;
}
