/* Test-only emulation of kqueue()/kevent() over epoll, for Linux.
 *
 * Linked only into the GOAIO_KQUEUE_EMULATION=1 build of goaio._kqueue, so the
 * kqueue backend can run the whole test suite on a Linux machine. It is never
 * part of a plain build. The struct layout and constants are those of macOS.
 *
 * It covers what goaio's poller uses -- EVFILT_READ / EVFILT_WRITE on sockets
 * and pipes (EV_ADD, EV_DELETE, EV_CLEAR, level-triggered without it, EV_EOF
 * with data and fflags), EVFILT_USER with NOTE_TRIGGER, EV_RECEIPT, EV_ERROR
 * entries for failed changes, the timeout -- and keeps the real behaviours a
 * backend must cope with. docs/kqueue.md lists what it covers and where real
 * kqueue differs.
 */
#ifndef GOAIO_KQUEUE_EMU_H
#define GOAIO_KQUEUE_EMU_H

#include <stdint.h>
#include <time.h>

#define GOAIO_EMU_HIDDEN __attribute__((visibility("hidden")))

struct kevent {
    uintptr_t ident;   /* fd, or the user event's number */
    int16_t filter;
    uint16_t flags;
    uint32_t fflags;
    intptr_t data;
    void *udata;       /* returned unchanged in every event of this knote */
};

#define EV_SET(kevp, a, b, c, d, e, f) do {     \
        struct kevent *goaio_kev__ = (kevp);    \
        goaio_kev__->ident = (a);               \
        goaio_kev__->filter = (b);              \
        goaio_kev__->flags = (c);               \
        goaio_kev__->fflags = (d);              \
        goaio_kev__->data = (e);                \
        goaio_kev__->udata = (f);               \
    } while (0)

/* filters */
#define EVFILT_READ   (-1)
#define EVFILT_WRITE  (-2)
#define EVFILT_USER   (-10)

/* actions and flags */
#define EV_ADD        0x0001
#define EV_DELETE     0x0002
#define EV_ENABLE     0x0004
#define EV_DISABLE    0x0008   /* not emulated: EINVAL */
#define EV_ONESHOT    0x0010   /* not emulated: EINVAL */
#define EV_CLEAR      0x0020
#define EV_RECEIPT    0x0040
#define EV_DISPATCH   0x0080   /* not emulated: EINVAL */
#define EV_ERROR      0x4000
#define EV_EOF        0x8000

/* EVFILT_USER */
#define NOTE_FFNOP       0x00000000
#define NOTE_TRIGGER     0x01000000
#define NOTE_FFLAGSMASK  0x00ffffff

/* Environment switch read by kqueue(): make EVFILT_USER registrations fail with
 * EINVAL, as on a kernel that lacks it, to test a backend's fallback. */
#define GOAIO_KQUEUE_EMU_NO_EVFILT_USER "GOAIO_KQUEUE_EMU_NO_EVFILT_USER"

GOAIO_EMU_HIDDEN int kqueue(void);
GOAIO_EMU_HIDDEN int kevent(int kq, const struct kevent *changelist, int nchanges,
                            struct kevent *eventlist, int nevents,
                            const struct timespec *timeout);
/* close() for an emulated kqueue: the emulation cannot see a plain close(). */
GOAIO_EMU_HIDDEN int goaio_emu_kq_close(int kq);

#endif
