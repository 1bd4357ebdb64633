/* goaio bench: closed-loop TLS echo load client (OpenSSL), in C so that the
 * client is never what limits the TLS server under test.
 *
 *   loadgen_tls [-H] [-a ALPN] HOST PORT CONNS SIZE SECONDS [WARMUP]
 *   loadgen_tls -i HOST PORT CONNS
 *
 * Echo mode (default): CONNS TLS connections are opened and handshaken first;
 * then each sends a SIZE-byte message (one SSL_write), reads until the whole
 * echo is back, checks every byte and starts over (closed loop), as
 * loadgen.c does over plain TCP, with the same message pattern: message n
 * of connection c is pattern[key .. key+SIZE) with pattern[j] = 31*j mod 256
 * and key = (37*c + 101*n) mod 256.
 *
 * Handshake mode (-H): every round trip is made on a new connection: a
 * non-blocking connect, a full TLS handshake (the client keeps no session,
 * so none is resumed), one SIZE-byte echo checked byte for byte, then
 * close_notify and close. CONNS such connections are in flight at once;
 * rps is then handshakes (complete round trips) per second, and the latency
 * is from connect() to the last byte of the echo.
 *
 * Both timed modes run WARMUP seconds (default 0.5) uncounted, then SECONDS
 * counted; they print "progress t=T msgs=N" four times a second and one
 * "result k=v ..." line at the end (the fields of loadgen.c, plus
 * handshakes= and completed=, the round trips of the warm-up and the drain
 * included: the server's CPU time over the run divided by it is its CPU
 * per round trip). The harness (goaio/_bench/client.py) reads them.
 *
 * Idle mode (-i): opens CONNS connections one after another, handshakes
 * each and echoes one byte on it, prints "held N", then holds them silent
 * until stdin reaches EOF (or a "quit" line), then closes them. The bench
 * reads the server's memory meanwhile.
 *
 * The server's certificate is not verified (the bench makes a self-signed
 * one); SNI is "localhost"; -a sets the ALPN protocol offered.
 * Exit status: 0 if no byte was wrong and no connection failed, 1 otherwise,
 * 2 for a usage, setup or first-connect error.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "loadgen_common.h"

#define DRAIN_NS (2ull * 1000000000ull) /* time given to in-flight rounds at the end */
#define TICK_NS (250ull * 1000000ull)
#define IO_TIMEOUT_S 10                 /* blocking setup steps (echo and idle modes) */

enum { ST_FREE, ST_CONNECTING, ST_HANDSHAKE, ST_BUSY, ST_DONE };

struct peer {
    int fd;
    int state;
    int events; /* registered epoll events */
    SSL *ssl;
    unsigned seq, key;
    int written; /* the message of this round has been SSL_written */
    size_t got;
    uint64_t t0;
};

static struct peer *peers;
static int npeers, live, inflight, ep, handshake_mode;
static size_t msg_size;
static unsigned char *pattern, *rbuf;
static size_t rbuf_cap;
static unsigned long long counted, completed, bad_bytes, errors, handshakes;
static struct sockaddr_storage addr;
static socklen_t addr_len;
static SSL_CTX *ctx;
static uint64_t t_end;

static void arm(struct peer *p, int idx, int out) {
    int want = EPOLLIN | (out ? EPOLLOUT : 0);
    if (p->events == want) return;
    struct epoll_event ev = {.events = (uint32_t)want, .data.u32 = (uint32_t)idx};
    epoll_ctl(ep, p->events ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, p->fd, &ev);
    p->events = want;
}

static void drop(struct peer *p, int send_close_notify) {
    if (p->ssl) {
        if (send_close_notify) SSL_shutdown(p->ssl); /* one try, non-blocking */
        SSL_free(p->ssl);
        p->ssl = NULL;
    }
    if (p->fd >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, p->fd, NULL);
        close(p->fd);
    }
    p->fd = -1;
    p->events = 0;
    p->state = ST_FREE;
}

static void fail(struct peer *p, const char *what) {
    if (errors < 5) {
        unsigned long e = ERR_peek_error();
        char buf[256] = "";
        if (e) ERR_error_string_n(e, buf, sizeof buf);
        fprintf(stderr, "loadgen_tls: %s: %s %s\n", what, errno ? strerror(errno) : "", buf);
    }
    ERR_clear_error();
    errors++;
    if (p->state == ST_BUSY || p->state == ST_CONNECTING || p->state == ST_HANDSHAKE) inflight--;
    drop(p, 0);
    p->state = ST_DONE;
    live--;
}

static int tcp_socket(int nonblock) {
    int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0), one = 1;
    if (fd >= 0) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static SSL *new_ssl(int fd) {
    SSL *s = SSL_new(ctx);
    if (!s) return NULL;
    SSL_set_fd(s, fd);
    SSL_set_tlsext_host_name(s, "localhost");
    SSL_set_connect_state(s);
    return s;
}

static void begin_round(struct peer *p, int idx, uint64_t now) {
    p->key = (37u * (unsigned)idx + 101u * p->seq) & 255u;
    p->written = 0;
    p->got = 0;
    p->t0 = now;
    inflight++;
    if (handshake_mode) {
        p->fd = tcp_socket(1);
        if (p->fd < 0) {
            p->state = ST_CONNECTING;
            fail(p, "socket");
            return;
        }
        p->state = ST_CONNECTING;
        p->events = 0;
        if (connect(p->fd, (struct sockaddr *)&addr, addr_len) < 0 && errno != EINPROGRESS) {
            fail(p, "connect");
            return;
        }
        arm(p, idx, 1);
    } else {
        p->state = ST_BUSY;
    }
}

/* Drives one peer as far as it goes without blocking. Returns 1 when its
 * round trip has just completed (the echo is all back), 0 otherwise. */
static int advance(struct peer *p, int idx) {
    if (p->state == ST_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(p->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err) {
            errno = err;
            fail(p, "connect");
            return 0;
        }
        p->ssl = new_ssl(p->fd);
        if (!p->ssl) {
            fail(p, "SSL_new");
            return 0;
        }
        p->state = ST_HANDSHAKE;
    }
    if (p->state == ST_HANDSHAKE) {
        int r = SSL_do_handshake(p->ssl);
        if (r != 1) {
            int e = SSL_get_error(p->ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
                arm(p, idx, e == SSL_ERROR_WANT_WRITE);
                return 0;
            }
            errno = 0;
            fail(p, "handshake");
            return 0;
        }
        handshakes++;
        p->state = ST_BUSY;
    }
    if (p->state != ST_BUSY) return 0;
    if (!p->written) {
        errno = 0;
        int r = SSL_write(p->ssl, pattern + p->key, (int)msg_size);
        if (r <= 0) {
            int e = SSL_get_error(p->ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
                arm(p, idx, e == SSL_ERROR_WANT_WRITE); /* retried with the same arguments */
                return 0;
            }
            fail(p, "SSL_write");
            return 0;
        }
        p->written = 1;
        arm(p, idx, 0);
        /* the echo cannot be back yet: wait for EPOLLIN (no read that would
         * only say EAGAIN) unless OpenSSL already holds bytes */
        if (!SSL_has_pending(p->ssl)) return 0;
    }
    for (;;) {
        size_t want = msg_size - p->got;
        if (want > rbuf_cap) want = rbuf_cap;
        errno = 0;
        int n = SSL_read(p->ssl, rbuf, (int)want);
        if (n > 0) {
            const unsigned char *expect = pattern + p->key + p->got;
            if (memcmp(rbuf, expect, (size_t)n) != 0)
                for (int i = 0; i < n; i++) bad_bytes += rbuf[i] != expect[i];
            p->got += (size_t)n;
            if (p->got == msg_size) return 1;
            continue;
        }
        int e = SSL_get_error(p->ssl, n);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            arm(p, idx, e == SSL_ERROR_WANT_WRITE);
            return 0;
        }
        fail(p, e == SSL_ERROR_ZERO_RETURN ? "closed by the server" : "SSL_read");
        return 0;
    }
}

/* Bytes that arrive on an echo-mode connection between rounds. */
static void unsolicited(struct peer *p) {
    for (;;) {
        int n = SSL_read(p->ssl, rbuf, (int)rbuf_cap);
        if (n > 0) {
            bad_bytes += (unsigned long long)n;
            continue;
        }
        int e = SSL_get_error(p->ssl, n);
        if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) fail(p, "SSL_read (idle)");
        return;
    }
}

/* The round trip of peer idx has completed at t1: count it, start the next. */
static int finish_round(struct peer *p, int idx, uint64_t count_from, uint64_t count_to) {
    uint64_t t1 = now_ns();
    completed++;
    if (t1 >= count_from && t1 < count_to) {
        counted++;
        record(t1 - p->t0);
    }
    inflight--;
    p->seq++;
    if (handshake_mode) drop(p, 1);
    else p->state = ST_FREE;
    if (t1 >= t_end) {
        if (handshake_mode) p->state = ST_DONE;
        return 0;
    }
    begin_round(p, idx, t1);
    return p->state == ST_BUSY; /* echo mode: send the next message now */
}

static void serve_events(int timeout_ms, uint64_t count_from, uint64_t count_to) {
    struct epoll_event evs[512];
    int n = epoll_wait(ep, evs, 512, timeout_ms);
    for (int e = 0; e < n; e++) {
        int idx = (int)evs[e].data.u32;
        struct peer *p = &peers[idx];
        if (p->fd < 0) continue;
        if (p->state == ST_FREE) {
            unsolicited(p);
            continue;
        }
        while (advance(p, idx) && finish_round(p, idx, count_from, count_to)) {
        }
    }
}

static void print_result(double seconds) {
    double p50, p99;
    percentiles(&p50, &p99);
    double rps = seconds > 0 ? counted / seconds : 0;
    printf("result rps=%.1f MBps=%.3f p50_us=%.1f p99_us=%.1f msgs=%llu bad_bytes=%llu errors=%llu "
           "unfinished=%d live=%d handshakes=%llu completed=%llu\n",
           rps, rps * (double)msg_size / 1e6, p50, p99, counted, bad_bytes, errors, inflight, live,
           handshakes, completed);
    fflush(stdout);
}

static int run_timed(double seconds, double warmup) {
    uint64_t t_start = now_ns();
    uint64_t t_count = t_start + (uint64_t)(warmup * 1e9);
    t_end = t_count + (uint64_t)(seconds * 1e9);
    for (int i = 0; i < npeers; i++) {
        begin_round(&peers[i], i, t_start);
        while (peers[i].state == ST_BUSY && advance(&peers[i], i) && finish_round(&peers[i], i, t_count, t_end)) {
        }
    }
    uint64_t next_tick = t_start + TICK_NS;
    for (;;) {
        uint64_t now = now_ns();
        if (now >= next_tick) {
            printf("progress t=%.3f msgs=%llu\n", ((double)now - (double)t_count) / 1e9, completed);
            fflush(stdout);
            next_tick += TICK_NS;
        }
        if (live == 0 || (now >= t_end && (inflight == 0 || now >= t_end + DRAIN_NS))) break;
        serve_events(10, t_count, t_end);
    }
    print_result(seconds);
    return (bad_bytes || errors) ? 1 : 0;
}

/* A blocking connect + handshake (with a timeout), then non-blocking. */
static int open_blocking(struct peer *p, int i) {
    p->fd = tcp_socket(0);
    struct timeval tv = {.tv_sec = IO_TIMEOUT_S};
    if (p->fd < 0) return -1;
    setsockopt(p->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(p->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(p->fd, (struct sockaddr *)&addr, addr_len) < 0) {
        fprintf(stderr, "loadgen_tls: connect #%d: %s\n", i, strerror(errno));
        return -1;
    }
    p->ssl = new_ssl(p->fd);
    if (!p->ssl || SSL_connect(p->ssl) != 1) {
        char buf[256] = "";
        ERR_error_string_n(ERR_get_error(), buf, sizeof buf);
        fprintf(stderr, "loadgen_tls: handshake #%d: %s %s\n", i, buf, errno ? strerror(errno) : "");
        return -1;
    }
    handshakes++;
    return 0;
}

static int run_idle(void) {
    unsigned char b = 'x', r = 0;
    for (int i = 0; i < npeers; i++) {
        struct peer *p = &peers[i];
        if (open_blocking(p, i) < 0) return 2;
        if (SSL_write(p->ssl, &b, 1) != 1 || SSL_read(p->ssl, &r, 1) != 1 || r != b) {
            fprintf(stderr, "loadgen_tls: no echo on connection #%d\n", i);
            return 1;
        }
    }
    printf("held %d\n", npeers);
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin) && strncmp(line, "quit", 4) != 0) {
    }
    for (int i = 0; i < npeers; i++) drop(&peers[i], 1);
    return 0;
}

static int usage(const char *argv0) {
    fprintf(stderr, "usage: %s [-H] [-a ALPN] HOST PORT CONNS SIZE SECONDS [WARMUP]\n"
                    "       %s -i HOST PORT CONNS\n", argv0, argv0);
    return 2;
}

int main(int argc, char **argv) {
    int idle = 0, opt;
    const char *alpn = NULL;
    while ((opt = getopt(argc, argv, "Hia:")) != -1) {
        if (opt == 'H') handshake_mode = 1;
        else if (opt == 'i') idle = 1;
        else if (opt == 'a') alpn = optarg;
        else return usage(argv[0]);
    }
    argc -= optind - 1;
    argv += optind - 1;
    if (argc < (idle ? 4 : 6)) return usage(argv[0]);
    npeers = atoi(argv[3]);
    msg_size = idle ? 1 : (size_t)atol(argv[4]);
    double seconds = idle ? 0 : atof(argv[5]), warmup = !idle && argc > 6 ? atof(argv[6]) : 0.5;
    if (npeers < 1 || msg_size < 1 || msg_size > (1u << 30) || (!idle && seconds <= 0) || warmup < 0 ||
        parse_addr(argv[1], atoi(argv[2]), &addr, &addr_len)) {
        fprintf(stderr, "loadgen_tls: bad arguments (HOST must be a numeric address, SECONDS > 0)\n");
        return 2;
    }
    raise_nofile();
    ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) return 2;
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF); /* every handshake is a full one */
    if (alpn) {
        size_t len = strlen(alpn);
        unsigned char wire[256];
        if (len == 0 || len > 255) return usage(argv[0]);
        wire[0] = (unsigned char)len;
        memcpy(wire + 1, alpn, len);
        if (SSL_CTX_set_alpn_protos(ctx, wire, (unsigned)len + 1) != 0) return 2;
    }
    pattern = malloc(msg_size + 256);
    rbuf_cap = msg_size < 65536 ? 65536 : msg_size;
    if (rbuf_cap > (1u << 20)) rbuf_cap = 1u << 20;
    rbuf = malloc(rbuf_cap);
    peers = calloc((size_t)npeers, sizeof *peers);
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (!pattern || !rbuf || !peers || ep < 0) {
        perror("loadgen_tls: setup");
        return 2;
    }
    for (size_t j = 0; j < msg_size + 256; j++) pattern[j] = (unsigned char)(31u * j);
    for (int i = 0; i < npeers; i++) peers[i].fd = -1;
    live = npeers;
    if (idle) return run_idle();
    if (!handshake_mode) {
        for (int i = 0; i < npeers; i++) {
            struct peer *p = &peers[i];
            if (open_blocking(p, i) < 0) return 2;
            fcntl(p->fd, F_SETFL, fcntl(p->fd, F_GETFL) | O_NONBLOCK);
            arm(p, i, 0);
            p->state = ST_FREE;
        }
    }
    return run_timed(seconds, warmup);
}
