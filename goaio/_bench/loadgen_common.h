/* goaio bench: what the two closed-loop clients (loadgen.c, loadgen_tls.c)
 * share: the clock, the latency record and its percentiles, the numeric
 * address parser and the descriptor limit. Included once by each client. */
#ifndef GOAIO_LOADGEN_COMMON_H
#define GOAIO_LOADGEN_COMMON_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>

static uint32_t *lat; /* round-trip times in ns (saturating) */
static size_t lat_n, lat_cap;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void record(uint64_t ns) {
    if (lat_n == lat_cap) {
        size_t cap = lat_cap ? lat_cap * 2 : 65536;
        uint32_t *v = realloc(lat, cap * sizeof *v);
        if (!v) return; /* keep the figures we have */
        lat = v;
        lat_cap = cap;
    }
    lat[lat_n++] = ns > UINT32_MAX ? UINT32_MAX : (uint32_t)ns;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* p50 and p99 of the recorded round trips, in µs (0 when none). */
static void percentiles(double *p50, double *p99) {
    *p50 = *p99 = 0;
    if (!lat_n) return;
    qsort(lat, lat_n, sizeof *lat, cmp_u32);
    size_t i99 = lat_n * 99 / 100;
    if (i99 >= lat_n) i99 = lat_n - 1;
    *p50 = lat[lat_n / 2] / 1e3;
    *p99 = lat[i99] / 1e3;
}

/* A numeric IPv4 or IPv6 HOST and PORT into *ss; -1 for anything else (the
 * bench never resolves names). */
static int parse_addr(const char *host, int port, struct sockaddr_storage *ss, socklen_t *len) {
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        *len = sizeof *a4;
        return 0;
    }
    if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        *len = sizeof *a6;
        return 0;
    }
    return -1;
}

/* As many descriptors as allowed: CONNS may be thousands. */
static void raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

#endif
