/* The lock of a connection record (conn_t.lock), and of the C locks never
 * used with a condition variable (a pool's, the registry's, the timer heap's).
 *
 * Every connection has one, idle ones included, so its size counts (issue 13):
 * on Linux it is a 4-byte futex word (the three-state mutex of Drepper's
 * "Futexes Are Tricky": 0 free, 1 held, 2 held with waiters), against
 * pthread_mutex_t's 40 bytes; elsewhere it is a pthread_mutex_t. It is a plain
 * mutex: never recursive, never used with a condition variable, never taken by
 * a thread that already holds it. A wait interrupted by a signal waits again.
 */
#ifndef GOAIO_CONNLOCK_H
#define GOAIO_CONNLOCK_H

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

typedef struct { int v; } goaio_lock_t;

static inline void goaio_lock_init(goaio_lock_t *m) { m->v = 0; }
static inline void goaio_lock_destroy(goaio_lock_t *m) { (void)m; }

static inline void goaio_lock(goaio_lock_t *m) {
    int c = 0;
    if (__atomic_compare_exchange_n(&m->v, &c, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
        return;
    if (c != 2)
        c = __atomic_exchange_n(&m->v, 2, __ATOMIC_ACQUIRE);
    while (c != 0) {
        syscall(SYS_futex, &m->v, FUTEX_WAIT_PRIVATE, 2, NULL, NULL, 0);
        c = __atomic_exchange_n(&m->v, 2, __ATOMIC_ACQUIRE);
    }
}

static inline void goaio_unlock(goaio_lock_t *m) {
    if (__atomic_fetch_sub(&m->v, 1, __ATOMIC_RELEASE) != 1) {
        __atomic_store_n(&m->v, 0, __ATOMIC_RELEASE);
        syscall(SYS_futex, &m->v, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
    }
}

#else
#include <pthread.h>

typedef pthread_mutex_t goaio_lock_t;

static inline void goaio_lock_init(goaio_lock_t *m) { pthread_mutex_init(m, NULL); }
static inline void goaio_lock_destroy(goaio_lock_t *m) { pthread_mutex_destroy(m); }
static inline void goaio_lock(goaio_lock_t *m) { pthread_mutex_lock(m); }
static inline void goaio_unlock(goaio_lock_t *m) { pthread_mutex_unlock(m); }
#endif

#endif
