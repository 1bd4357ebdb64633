/* Small C helpers shared by the compiled backends. */
#ifndef GOAIO_COMPAT_H
#define GOAIO_COMPAT_H

#include <Python.h>
#include <stdint.h>
#include <time.h>
#include <limits.h>
#include <sys/uio.h>

/* The poller id of the wake-up fd; connection ids never reach it. */
#define GOAIO_WAKE_ID UINT64_MAX

#ifndef IOV_MAX
#define IOV_MAX 1024
#endif

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0 /* macOS: SO_NOSIGPIPE is set on the socket instead */
#endif

static inline int64_t goaio_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Reference counts of the C connection records: touched by threads that do
 * not hold the GIL, so they are atomic. */
static inline long goaio_atomic_inc(long *p) { return __atomic_add_fetch(p, 1, __ATOMIC_ACQ_REL); }
static inline long goaio_atomic_dec(long *p) { return __atomic_sub_fetch(p, 1, __ATOMIC_ACQ_REL); }
static inline long goaio_atomic_sub(long *p, long n) { return __atomic_sub_fetch(p, n, __ATOMIC_ACQ_REL); }

#include <errno.h>
#define goaio_would_block(e) ((e) == EAGAIN || (e) == EWOULDBLOCK)

#endif
