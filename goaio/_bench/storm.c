/* goaio bench: the accept-storm client, in C so that the client is not what
 * limits the server under test.
 *
 *   storm HOST PORT TOTAL CONCURRENCY SIZE
 *
 * Opens TOTAL connections to HOST:PORT, CONCURRENCY at a time (closed loop:
 * as soon as one finishes the next is opened). Each connection does a
 * non-blocking connect, then, if SIZE > 0, one round trip (sends SIZE bytes,
 * reads until SIZE bytes are back and checks them), then closes. With
 * SIZE = 0 it closes as soon as the connect has completed. Prints one line
 *   result conns=N errors=E bad_bytes=B seconds=S cps=C cpu_s=T
 * (T: the client's own user + system CPU time, getrusage: near S means the
 * client, not the server, was the limit).
 * Exit status 0 if every connection succeeded, 1 otherwise, 2 on usage.
 * Bounded: gives up after 120 s.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define LIMIT_NS (120ull * 1000000000ull)

struct slot {
    int fd;
    int connected;
    int reading; /* registered for EPOLLIN */
    size_t sent, got;
};

static struct sockaddr_in addr;
static int ep;
static size_t size;
static unsigned char msg[65536], rbuf[65536];
static unsigned long long started, done, errors, bad;

static unsigned long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static int open_one(struct slot *s, int idx) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    s->fd = fd;
    s->connected = 0;
    s->reading = 0;
    s->sent = s->got = 0;
    started++;
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        close(fd);
        s->fd = -1;
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = (unsigned)idx};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    return 0;
}

static void finish(struct slot *s, int ok) {
    close(s->fd); /* closing also takes it out of the epoll set */
    s->fd = -1;
    if (ok)
        done++;
    else
        errors++;
}

/* Advance one connection; returns 1 when it is finished. */
static int step(struct slot *s, unsigned events) {
    if (!s->connected) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err || (events & (EPOLLERR | EPOLLHUP))) {
            finish(s, 0);
            return 1;
        }
        s->connected = 1;
        if (size == 0) {
            finish(s, 1);
            return 1;
        }
    }
    while (s->sent < size) {
        ssize_t n = send(s->fd, msg + s->sent, size - s->sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN) return 0;
            finish(s, 0);
            return 1;
        }
        s->sent += (size_t)n;
    }
    for (;;) {
        ssize_t n = recv(s->fd, rbuf, size - s->got, 0);
        if (n < 0) {
            if (errno == EAGAIN) return 0;
            finish(s, 0);
            return 1;
        }
        if (n == 0) {
            finish(s, 0);
            return 1;
        }
        for (ssize_t i = 0; i < n; i++)
            if (rbuf[i] != msg[s->got + (size_t)i]) bad++;
        s->got += (size_t)n;
        if (s->got == size) {
            finish(s, 1);
            return 1;
        }
    }
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: storm HOST PORT TOTAL CONCURRENCY SIZE\n");
        return 2;
    }
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) {
        fprintf(stderr, "storm: HOST must be an IPv4 address\n");
        return 2;
    }
    unsigned long long total = strtoull(argv[3], NULL, 10);
    int conc = atoi(argv[4]);
    size = (size_t)strtoull(argv[5], NULL, 10);
    if (conc < 1 || size > sizeof msg) {
        fprintf(stderr, "storm: CONCURRENCY >= 1, SIZE <= %zu\n", sizeof msg);
        return 2;
    }
    for (size_t i = 0; i < sizeof msg; i++) msg[i] = (unsigned char)(31 * i + 7);
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct slot *slots = calloc((size_t)conc, sizeof *slots);
    struct epoll_event *evs = calloc((size_t)conc, sizeof *evs);
    unsigned long long t0 = now_ns();
    int live = 0;
    for (int i = 0; i < conc && started < total; i++) {
        if (open_one(&slots[i], i) == 0)
            live++;
        else
            errors++;
    }
    while (live > 0 && now_ns() - t0 < LIMIT_NS) {
        int n = epoll_wait(ep, evs, conc, 1000);
        for (int k = 0; k < n; k++) {
            int i = (int)evs[k].data.u32;
            struct slot *s = &slots[i];
            if (s->fd < 0) continue;
            int was_connected = s->connected;
            if (step(s, evs[k].events)) {
                live--;
                while (started < total) {
                    if (open_one(s, i) == 0) {
                        live++;
                        break;
                    }
                    errors++;
                }
            } else if (s->sent == size && (!was_connected || !s->reading)) {
                /* the message is out: wait for the echo */
                struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (unsigned)i};
                epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
                s->reading = 1;
            }
        }
    }
    double secs = (double)(now_ns() - t0) / 1e9;
    errors += (unsigned long long)live; /* unfinished at the limit */
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
                 ru.ru_stime.tv_usec / 1e6;
    printf("result conns=%llu errors=%llu bad_bytes=%llu seconds=%.6f cps=%.1f cpu_s=%.6f\n", done, errors,
           bad, secs, done / (secs > 0 ? secs : 1e-9), cpu);
    return errors || bad ? 1 : 0;
}
