/* goaio bench: closed-loop TCP echo load client, in C so that the client is
 * never what limits the server under test.
 *
 *   loadgen HOST PORT CONNS SIZE SECONDS [WARMUP]
 *
 * Every connection sends a SIZE-byte message, reads until the whole echo is
 * back, checks every byte and starts over (closed loop). Message n of
 * connection c is pattern[key .. key+SIZE) with pattern[j] = 31*j mod 256 and
 * key = (37*c + 101*n) mod 256: consecutive messages differ in every byte, so
 * a stale or misrouted echo is caught, and sending needs no copy.
 *
 * SECONDS > 0 (timed): runs WARMUP seconds (default 0.5) uncounted, then
 * SECONDS counted; prints "progress t=T msgs=N" four times a second (T from
 * the start of the counted part, negative in the warm-up; N every round trip
 * so far) and at the end one "result k=v ..." line. SECONDS = 0 (command mode): connects,
 * prints "ready", then obeys stdin lines "run K" (exactly K round trips in
 * all, then one result line) and "quit".
 *
 * The protocol is shared with the Python client (goaio/_bench/client.py).
 * Exit status: 0 if no byte was wrong and no connection failed, 1 otherwise,
 * 2 for a usage or connect error.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
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

#define RUN_LIMIT_NS (120ull * 1000000000ull) /* a command-mode run never lasts longer */
#define DRAIN_NS (2ull * 1000000000ull)        /* time given to in-flight echoes at the end */
#define TICK_NS (250ull * 1000000ull)

struct peer {
    int fd;
    int busy;      /* a message is in flight */
    int out_armed; /* EPOLLOUT is registered: a send is partial */
    unsigned seq, key;
    size_t sent, got;
    uint64_t t0;
};

static struct peer *peers;
static int npeers, live, inflight, ep;
static size_t msg_size;
static unsigned char *pattern, *rbuf;
static size_t rbuf_cap;
static unsigned long long counted, completed, bad_bytes, errors; /* completed: warm-up included */

static void set_events(struct peer *p, int idx, int out) {
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.u32 = (uint32_t)idx};
    epoll_ctl(ep, EPOLL_CTL_MOD, p->fd, &ev);
    p->out_armed = out;
}

static void fail(struct peer *p) {
    errors++;
    if (p->busy) inflight--;
    p->busy = 0;
    epoll_ctl(ep, EPOLL_CTL_DEL, p->fd, NULL);
    close(p->fd);
    p->fd = -1;
    live--;
}

/* Writes what the socket takes; arms EPOLLOUT while the message is partial. */
static void pump_send(struct peer *p, int idx) {
    while (p->sent < msg_size) {
        ssize_t n = send(p->fd, pattern + p->key + p->sent, msg_size - p->sent, MSG_NOSIGNAL);
        if (n > 0) {
            p->sent += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!p->out_armed) set_events(p, idx, 1);
            return;
        } else {
            fail(p);
            return;
        }
    }
    if (p->out_armed) set_events(p, idx, 0);
}

static void start_round(struct peer *p, int idx, uint64_t now) {
    p->key = (37u * (unsigned)idx + 101u * p->seq) & 255u;
    p->sent = p->got = 0;
    p->t0 = now;
    p->busy = 1;
    inflight++;
    pump_send(p, idx);
}

/* Reads what is there. Returns 1 when the whole echo is back and correct
 * (or wrong: wrong bytes are counted, the round still ends), 0 otherwise. */
static int pump_recv(struct peer *p) {
    for (;;) {
        size_t want = p->busy ? msg_size - p->got : rbuf_cap;
        if (want > rbuf_cap) want = rbuf_cap;
        ssize_t n = recv(p->fd, rbuf, want, 0);
        if (n > 0) {
            if (!p->busy) { /* bytes nobody asked for */
                bad_bytes += (unsigned long long)n;
                continue;
            }
            const unsigned char *expect = pattern + p->key + p->got;
            if (memcmp(rbuf, expect, (size_t)n) != 0)
                for (ssize_t i = 0; i < n; i++) bad_bytes += rbuf[i] != expect[i];
            p->got += (size_t)n;
            if (p->got == msg_size) return 1;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return 0;
        } else { /* EOF or error */
            fail(p);
            return 0;
        }
    }
}

static void print_result(double seconds, const char *extra) {
    double p50, p99;
    percentiles(&p50, &p99);
    double rps = seconds > 0 ? counted / seconds : 0;
    printf("result rps=%.1f MBps=%.3f p50_us=%.1f p99_us=%.1f msgs=%llu bad_bytes=%llu errors=%llu "
           "unfinished=%d live=%d%s\n",
           rps, rps * (double)msg_size / 1e6, p50, p99, counted, bad_bytes, errors, inflight, live, extra);
    fflush(stdout);
}

/* One event-loop pass. `may_start` says whether a finished connection starts
 * its next message; `count_from`/`count_to` bound the completions counted. */
typedef int (*may_start_fn)(void);

static void serve_events(int timeout_ms, may_start_fn may_start, uint64_t count_from, uint64_t count_to) {
    struct epoll_event evs[512];
    int n = epoll_wait(ep, evs, 512, timeout_ms);
    for (int e = 0; e < n; e++) {
        int idx = (int)evs[e].data.u32;
        struct peer *p = &peers[idx];
        if (p->fd < 0) continue;
        if ((evs[e].events & EPOLLOUT) && p->busy && p->sent < msg_size) pump_send(p, idx);
        if (p->fd < 0 || !(evs[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) continue;
        if (!pump_recv(p)) continue;
        uint64_t t1 = now_ns();
        completed++;
        if (t1 >= count_from && t1 < count_to) {
            counted++;
            record(t1 - p->t0);
        }
        p->busy = 0;
        inflight--;
        p->seq++;
        if (may_start()) start_round(p, idx, t1);
    }
}

/* --- timed mode --- */
static uint64_t t_end;
static int timed_may_start(void) { return now_ns() < t_end; }

static int run_timed(double seconds, double warmup) {
    uint64_t t_start = now_ns();
    uint64_t t_count = t_start + (uint64_t)(warmup * 1e9);
    t_end = t_count + (uint64_t)(seconds * 1e9);
    for (int i = 0; i < npeers; i++) start_round(&peers[i], i, t_start);
    uint64_t next_tick = t_start + TICK_NS;
    for (;;) {
        uint64_t now = now_ns();
        if (now >= next_tick) {
            printf("progress t=%.3f msgs=%llu\n", ((double)now - (double)t_count) / 1e9, completed);
            fflush(stdout);
            next_tick += TICK_NS;
        }
        if (live == 0 || (now >= t_end && (inflight == 0 || now >= t_end + DRAIN_NS))) break;
        serve_events(10, timed_may_start, t_count, t_end);
    }
    print_result(seconds, "");
    return (bad_bytes || errors) ? 1 : 0;
}

/* --- command mode --- */
static unsigned long long run_target, run_started;
static int cmd_may_start(void) {
    if (run_started >= run_target) return 0;
    run_started++;
    return 1;
}

static int run_commands(void) {
    char line[128];
    int status = 0;
    printf("ready\n");
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
        unsigned long long k;
        if (strncmp(line, "quit", 4) == 0) break;
        if (sscanf(line, "run %llu", &k) != 1 || k == 0) {
            printf("error bad command\n");
            fflush(stdout);
            continue;
        }
        counted = bad_bytes = errors = 0;
        lat_n = 0;
        run_target = k;
        run_started = 0;
        uint64_t t0 = now_ns(), deadline = t0 + RUN_LIMIT_NS;
        for (int i = 0; i < npeers; i++)
            if (peers[i].fd >= 0 && cmd_may_start()) start_round(&peers[i], i, t0);
        while (inflight > 0 && live > 0 && now_ns() < deadline)
            serve_events(50, cmd_may_start, 0, UINT64_MAX);
        double el = (now_ns() - t0) / 1e9;
        char extra[64];
        snprintf(extra, sizeof extra, " elapsed_s=%.6f", el);
        print_result(el, extra);
        if (bad_bytes || errors || counted != k) status = 1;
    }
    return status;
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: %s HOST PORT CONNS SIZE SECONDS [WARMUP]\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[2]);
    npeers = atoi(argv[3]);
    msg_size = (size_t)atol(argv[4]);
    double seconds = atof(argv[5]), warmup = argc > 6 ? atof(argv[6]) : 0.5;
    struct sockaddr_storage ss;
    socklen_t sslen;
    if (npeers < 1 || msg_size < 1 || seconds < 0 || warmup < 0 || parse_addr(argv[1], port, &ss, &sslen)) {
        fprintf(stderr, "loadgen: bad arguments (HOST must be a numeric address)\n");
        return 2;
    }
    raise_nofile();
    pattern = malloc(msg_size + 256);
    rbuf_cap = msg_size < 65536 ? 65536 : msg_size;
    rbuf = malloc(rbuf_cap);
    peers = calloc((size_t)npeers, sizeof *peers);
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (!pattern || !rbuf || !peers || ep < 0) {
        perror("loadgen: setup");
        return 2;
    }
    for (size_t j = 0; j < msg_size + 256; j++) pattern[j] = (unsigned char)(31u * j);
    for (int i = 0; i < npeers; i++) {
        int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
        if (fd < 0 || connect(fd, (struct sockaddr *)&ss, sslen) < 0) {
            fprintf(stderr, "loadgen: connect #%d: %s\n", i, strerror(errno));
            return 2;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        peers[i].fd = fd;
    }
    live = npeers;
    return seconds > 0 ? run_timed(seconds, warmup) : run_commands();
}
