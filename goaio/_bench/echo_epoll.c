/* goaio bench: the machine's ceiling, a single-threaded level-triggered epoll
 * echo server in C. It shows how fast the load client can go at all, so a
 * figure close to this one means the client, not the server, was the limit.
 *
 *   echo_epoll PORT      (binds 127.0.0.1; PORT 0 picks a free port)
 *
 * Prints "C epoll echo server listening on 127.0.0.1:PORT" when ready.
 * A reply the socket does not take at once is kept and the connection stops
 * being read until it has gone out, so no byte is ever dropped.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF 65536

struct pending { char *data; size_t off, len; };
static struct pending *out; /* indexed by fd */
static int out_cap, ep;

static void drop(int fd) {
    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
    close(fd);
    if (fd < out_cap) { free(out[fd].data); memset(&out[fd], 0, sizeof out[fd]); }
}

/* Sends the kept reply; returns 1 when nothing is left. */
static int flush_out(int fd) {
    struct pending *p = &out[fd];
    while (p->off < p->len) {
        ssize_t n = send(fd, p->data + p->off, p->len - p->off, MSG_NOSIGNAL);
        if (n > 0) p->off += (size_t)n;
        else if (n < 0 && errno == EINTR) continue;
        else if (n < 0 && errno == EAGAIN) return 0;
        else { drop(fd); return -1; }
    }
    free(p->data);
    memset(p, 0, sizeof *p);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
    return 1;
}

static void echo(int fd, char *buf) {
    for (;;) {
        ssize_t r = recv(fd, buf, BUF, 0);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) { drop(fd); return; }
        if (r < 0) { if (errno == EINTR) continue; return; }
        ssize_t off = 0;
        while (off < r) {
            ssize_t n = send(fd, buf + off, (size_t)(r - off), MSG_NOSIGNAL);
            if (n > 0) { off += n; continue; }
            if (n < 0 && errno == EINTR) continue;
            if (n < 0 && errno == EAGAIN) break;
            drop(fd);
            return;
        }
        if (off < r) { /* keep the rest, wait for EPOLLOUT, stop reading */
            if (fd >= out_cap) {
                int cap = out_cap ? out_cap : 1024;
                while (cap <= fd) cap *= 2;
                out = realloc(out, (size_t)cap * sizeof *out);
                memset(out + out_cap, 0, (size_t)(cap - out_cap) * sizeof *out);
                out_cap = cap;
            }
            out[fd].len = (size_t)(r - off);
            out[fd].off = 0;
            out[fd].data = malloc(out[fd].len);
            memcpy(out[fd].data, buf + off, out[fd].len);
            struct epoll_event ev = {.events = EPOLLOUT, .data.fd = fd};
            epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
            return;
        }
        if (r < BUF) return; /* drained */
    }
}

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 0, one = 1;
    signal(SIGPIPE, SIG_IGN);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    socklen_t len = sizeof sa;
    if (bind(ls, (struct sockaddr *)&sa, sizeof sa) || listen(ls, 4096) ||
        getsockname(ls, (struct sockaddr *)&sa, &len)) {
        perror("echo_epoll");
        return 1;
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    printf("C epoll echo server listening on 127.0.0.1:%d\n", ntohs(sa.sin_port));
    fflush(stdout);
    char *buf = malloc(BUF);
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                int c;
                while ((c = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct epoll_event ce = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
                }
            } else if (evs[i].events & EPOLLOUT) {
                if (flush_out(fd) == 1) echo(fd, buf);
            } else {
                echo(fd, buf);
            }
        }
    }
}
