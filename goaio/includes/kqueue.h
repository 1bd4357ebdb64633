/* The kqueue API for goaio._kqueue: the system's <sys/event.h> on macOS/BSD, or
 * the test-only emulation over epoll in the GOAIO_KQUEUE_EMULATION=1 build on
 * Linux. Also smooths over the kevent fields whose C types differ between
 * systems, and says which optional features the system has. */
#ifndef GOAIO_KQUEUE_H
#define GOAIO_KQUEUE_H

#include <stdint.h>
#include <errno.h>
#include <unistd.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <time.h>

#if defined(GOAIO_KQUEUE_EMULATION) && GOAIO_KQUEUE_EMULATION
#include "kqueue_emu.h"
#define GOAIO_KQUEUE_EMULATED 1
#define goaio_kq_close(kq) goaio_emu_kq_close(kq)
#else
#include <sys/event.h>
#include <sys/time.h>
#define GOAIO_KQUEUE_EMULATED 0
#define goaio_kq_close(kq) close(kq)
#endif

/* OpenBSD (before 7.x) has no EVFILT_USER: the poller then wakes with a pipe. */
#ifdef EVFILT_USER
#define GOAIO_HAVE_EVFILT_USER 1
#else
#define GOAIO_HAVE_EVFILT_USER 0
#define EVFILT_USER 0
#define NOTE_TRIGGER 0
#endif

#ifdef EV_RECEIPT
#define GOAIO_HAVE_EV_RECEIPT 1
#else
#define GOAIO_HAVE_EV_RECEIPT 0
#define EV_RECEIPT 0
#endif

/* macOS: sockets raise SIGPIPE unless SO_NOSIGPIPE is set (MSG_NOSIGNAL is
 * recent there). */
#ifdef SO_NOSIGPIPE
#define GOAIO_HAVE_SO_NOSIGPIPE 1
#else
#define GOAIO_HAVE_SO_NOSIGPIPE 0
#define SO_NOSIGPIPE 0
#endif

/* udata carries a 64-bit connection id. */
_Static_assert(sizeof(void *) >= sizeof(uint64_t), "goaio's kqueue backend needs a 64-bit udata");

/* EV_SET casts udata as each system needs (void * on macOS/FreeBSD, intptr_t on
 * older NetBSD) and clears FreeBSD's ext[] fields. */
static inline void goaio_kev_set(struct kevent *ev, uintptr_t ident, int filter, unsigned flags,
                                 unsigned fflags, int64_t data, uint64_t udata) {
    EV_SET(ev, ident, filter, flags, fflags, data, (void *)(uintptr_t)udata);
}

static inline uint64_t goaio_kev_udata(const struct kevent *ev) {
    return (uint64_t)(uintptr_t)ev->udata;
}

#endif
