/* Test-only emulation of kqueue()/kevent() over epoll, for Linux.
 *
 * Built only into the GOAIO_KQUEUE_EMULATION=1 build of goaio._kqueue (see
 * kqueue_emu.h). What it reproduces, and where real kqueue differs, is in
 * docs/kqueue.md; tests/test_kqueue_emulation.py checks it.
 *
 * Model
 *   * An emulated kqueue is an epoll fd (its number is the kqueue's number), an
 *     eventfd that wakes its waiters, a table of knotes and an active queue.
 *   * Each fd with knotes is one epoll registration (edge-triggered) whose data
 *     is (generation << 32 | fd). A new registration of the fd number bumps the
 *     generation, so epoll events of a former one are dropped.
 *   * The kernel removes an fd's knotes when the fd is closed. The emulation
 *     cannot see close(), so it remembers which file (st_dev, st_ino) the knotes
 *     were added for and drops them when the fd is closed or now names another
 *     file -- before using them, and before any change to that fd.
 *   * Like the kernel's scan, delivery re-checks the filter (poll() with no
 *     wait): an event queued for data that was read meanwhile is not returned,
 *     and data, EV_EOF and fflags describe the socket at the time of delivery.
 *   * Epoll events become one kevent per filter, each with its own udata.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "kqueue_emu.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <linux/sockios.h>

enum { K_READ = 0, K_WRITE = 1, K_USER = 2 };

#define EVFD_TAG UINT64_MAX   /* epoll data of the kqueue's own eventfd */
/* the flags a knote keeps (and returns in its events): not the actions */
#define KEPT_FLAGS(f) ((uint16_t)((f) & ~(EV_ADD | EV_DELETE | EV_ENABLE | EV_DISABLE)))

typedef struct {
    int active;
    int queued;          /* on the active queue (at most once) */
    uint16_t flags;
    void *udata;
} filt_t;

typedef struct {
    int used;
    uint32_t gen;
    dev_t dev;           /* the file the knotes were added for */
    ino_t ino;
    uint32_t epmask;     /* the epoll registration, 0: none */
    filt_t f[2];         /* K_READ, K_WRITE */
} fdnote_t;

typedef struct {
    int used;
    int triggered;
    uintptr_t ident;
    filt_t f;
} unote_t;

typedef struct {
    int kind;
    uint32_t gen;
    uintptr_t ident;
} qent_t;

typedef struct emu_kq {
    int epfd;            /* -1 once its number was closed behind the emulation's back */
    int evfd;
    int refs;            /* the registry's, and one per kevent() in progress (g_lock) */
    int no_user;
    pthread_mutex_t lock;
    fdnote_t *fds;
    int nfds;
    unote_t *users;
    int nusers;
    qent_t *q;           /* the active queue: q[qhead .. qtail) */
    size_t qhead, qtail, qcap;
} emu_kq;

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static emu_kq **g_kqs;   /* by kqueue number */
static int g_nkqs;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* ------------------------------------------------------------ registry */

static void kq_free(emu_kq *q)
{
    if (q->epfd >= 0)
        close(q->epfd);
    close(q->evfd);
    pthread_mutex_destroy(&q->lock);
    free(q->fds);
    free(q->users);
    free(q->q);
    free(q);
}

static emu_kq *kq_get(int kq)
{
    emu_kq *q = NULL;
    pthread_mutex_lock(&g_lock);
    if (kq >= 0 && kq < g_nkqs && g_kqs[kq] != NULL) {
        q = g_kqs[kq];
        q->refs++;
    }
    pthread_mutex_unlock(&g_lock);
    return q;
}

static void kq_put(emu_kq *q)
{
    int last;
    pthread_mutex_lock(&g_lock);
    last = --q->refs == 0;
    pthread_mutex_unlock(&g_lock);
    if (last)
        kq_free(q);
}

/* The kernel does not pass a kqueue to a child process: in the child its number
 * is free. Drop every emulated kqueue there (the memory is left: a parent thread
 * may have held a lock at fork time). */
static void atfork_child(void)
{
    int i;
    pthread_mutex_init(&g_lock, NULL);
    for (i = 0; i < g_nkqs; i++) {
        emu_kq *q = g_kqs[i];
        if (q == NULL)
            continue;
        g_kqs[i] = NULL;
        if (q->epfd >= 0)
            close(q->epfd);
        close(q->evfd);
    }
}

static void emu_init(void)
{
    pthread_atfork(NULL, NULL, atfork_child);
}

/* ------------------------------------------------------------ active queue */

static void q_push(emu_kq *q, int kind, uintptr_t ident, uint32_t gen)
{
    if (q->qtail == q->qcap && q->qhead > 0) {
        memmove(q->q, q->q + q->qhead, (q->qtail - q->qhead) * sizeof *q->q);
        q->qtail -= q->qhead;
        q->qhead = 0;
    }
    if (q->qtail == q->qcap) {
        size_t cap = q->qcap ? q->qcap * 2 : 64;
        qent_t *nq = realloc(q->q, cap * sizeof *nq);
        if (nq == NULL)
            return;      /* out of memory: the event is lost (the caller unmarks it) */
        q->q = nq;
        q->qcap = cap;
    }
    q->q[q->qtail].kind = kind;
    q->q[q->qtail].gen = gen;
    q->q[q->qtail].ident = ident;
    q->qtail++;
}

static void enqueue_fd(emu_kq *q, int fd, fdnote_t *n, int k)
{
    size_t before = q->qtail - q->qhead;
    if (n->f[k].queued)
        return;
    q_push(q, k, (uintptr_t)fd, n->gen);
    n->f[k].queued = q->qtail - q->qhead > before;
}

static void enqueue_user(emu_kq *q, unote_t *u)
{
    size_t before = q->qtail - q->qhead;
    if (u->f.queued)
        return;
    q_push(q, K_USER, u->ident, 0);
    u->f.queued = q->qtail - q->qhead > before;
}

static void wake_waiters(emu_kq *q)
{
    uint64_t one = 1;
    ssize_t r = write(q->evfd, &one, sizeof one);
    (void)r;             /* EAGAIN: the counter is full, waiters are woken anyway */
}

/* ------------------------------------------------------------ fd knotes */

static fdnote_t *note_at(emu_kq *q, int fd)
{
    return fd >= 0 && fd < q->nfds ? &q->fds[fd] : NULL;
}

static int note_grow(emu_kq *q, int fd)
{
    int n;
    fdnote_t *nf;
    if (fd < q->nfds)
        return 0;
    n = q->nfds ? q->nfds : 64;
    while (n <= fd)
        n *= 2;
    nf = realloc(q->fds, (size_t)n * sizeof *nf);
    if (nf == NULL)
        return ENOMEM;
    memset(nf + q->nfds, 0, (size_t)(n - q->nfds) * sizeof *nf);
    q->fds = nf;
    q->nfds = n;
    return 0;
}

/* The fd was closed (and maybe reused) since its knotes were added: the kernel
 * dropped them at close(). An epoll registration of the old file may survive
 * (a dup keeps it open): its events carry the old generation and are ignored. */
static void note_forget(fdnote_t *n)
{
    memset(n->f, 0, sizeof n->f);
    n->used = 0;
    n->epmask = 0;
}

static int same_file(int fd, const fdnote_t *n)
{
    struct stat st;
    return fstat(fd, &st) == 0 && st.st_dev == n->dev && st.st_ino == n->ino;
}

/* Make the epoll registration of fd match its active filters. */
static int note_sync(emu_kq *q, int fd, fdnote_t *n)
{
    struct epoll_event ev;
    uint32_t want = 0;
    if (n->f[K_READ].active)
        want |= EPOLLIN | EPOLLRDHUP;
    if (n->f[K_WRITE].active)
        want |= EPOLLOUT;
    memset(&ev, 0, sizeof ev);
    ev.events = want | EPOLLET;
    ev.data.u64 = ((uint64_t)n->gen << 32) | (uint32_t)fd;
    if (want == 0) {
        if (n->epmask)
            epoll_ctl(q->epfd, EPOLL_CTL_DEL, fd, &ev);
        note_forget(n);
        return 0;
    }
    if (n->epmask == 0) {
        if (epoll_ctl(q->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
            /* this very file at this number is still registered (a forgotten note) */
            if (errno != EEXIST || epoll_ctl(q->epfd, EPOLL_CTL_MOD, fd, &ev) < 0)
                return errno;
        }
    } else if (epoll_ctl(q->epfd, EPOLL_CTL_MOD, fd, &ev) < 0) {
        if (errno != ENOENT || epoll_ctl(q->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
            return errno;
    }
    n->epmask = want;
    return 0;
}

static short poll_now(int fd)
{
    struct pollfd p;
    p.fd = fd;
    p.events = POLLIN | POLLOUT | POLLRDHUP;
    p.revents = 0;
    if (poll(&p, 1, 0) < 0)
        return 0;
    return p.revents;
}

static int filter_ready(short re, int k)
{
    if (re & POLLNVAL)
        return 0;
    if (k == K_READ)
        return (re & (POLLIN | POLLRDHUP | POLLHUP | POLLERR)) != 0;
    return (re & (POLLOUT | POLLHUP | POLLERR)) != 0;
}

static intptr_t write_space(int fd)
{
    int sndbuf, outq;
    socklen_t len = sizeof sndbuf;
    if (getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, &len) < 0 || ioctl(fd, SIOCOUTQ, &outq) < 0)
        return 0;
    return sndbuf > outq ? sndbuf - outq : 0;
}

/* The event of filter k of fd as the kernel's scan would return it; 0 when the
 * filter is not ready any more. */
static int fd_event(int fd, fdnote_t *n, int k, struct kevent *out)
{
    short re = poll_now(fd);
    int eof, avail = 0;
    uint32_t err = 0;
    intptr_t data;
    if (!filter_ready(re, k))
        return 0;
    if (k == K_READ) {
        /* EOF (peer shut down its side) is reported with the bytes still
         * readable; the reader must drain them before acting on EV_EOF. */
        eof = (re & (POLLRDHUP | POLLHUP)) != 0;
        if (ioctl(fd, FIONREAD, &avail) < 0)
            avail = 0;
        data = avail;
    } else {
        /* the send side is shut: Linux shows it only once both sides are */
        eof = (re & POLLHUP) != 0;
        data = write_space(fd);
    }
    /* The kernel puts so_error in fflags with EV_EOF. Linux cannot read a
     * socket's error without clearing it (SO_ERROR and recv both take it), so
     * the emulation names the error of a reset, which is what loopback tests
     * produce, and leaves the real one for the next system call. */
    if (eof && (re & POLLERR))
        err = ECONNRESET;
    EV_SET(out, (uintptr_t)fd, k == K_READ ? EVFILT_READ : EVFILT_WRITE,
           n->f[k].flags | (eof ? EV_EOF : 0), err, data, n->f[k].udata);
    return 1;
}

static int apply_fd(emu_kq *q, const struct kevent *c, int k)
{
    struct stat st;
    fdnote_t *n, prev_note;
    int fd, err;
    if (c->ident > INT_MAX)
        return EBADF;
    fd = (int)c->ident;
    if (fstat(fd, &st) < 0)
        return EBADF;
    n = note_at(q, fd);
    if (n != NULL && n->used && (n->dev != st.st_dev || n->ino != st.st_ino))
        note_forget(n);
    if (c->flags & EV_DELETE) {
        if (n == NULL || !n->used || !n->f[k].active)
            return ENOENT;
        n->f[k].active = 0;
        n->f[k].queued = 0;
        note_sync(q, fd, n);   /* the knote is gone whatever epoll says */
        return 0;
    }
    if (!(c->flags & EV_ADD)) {
        if (n == NULL || !n->used || !n->f[k].active)
            return ENOENT;
        n->f[k].udata = c->udata;   /* as the kernel: every change sets udata */
        return 0;
    }
    if (note_grow(q, fd))
        return ENOMEM;
    n = &q->fds[fd];
    if (!n->used) {
        note_forget(n);
        n->used = 1;
        n->gen++;
        n->dev = st.st_dev;
        n->ino = st.st_ino;
    }
    prev_note = *n;
    n->f[k].active = 1;
    n->f[k].flags = KEPT_FLAGS(c->flags);
    n->f[k].udata = c->udata;
    err = note_sync(q, fd, n);
    if (err) {
        *n = prev_note;
        n->f[k].active = 0;
        if (!n->f[K_READ].active && !n->f[K_WRITE].active)
            note_forget(n);
        return err;
    }
    /* A filter that is ready when added (or changed) is reported: epoll's
     * ADD and MOD queue an edge for a file that is ready. */
    return 0;
}

/* ------------------------------------------------------------ user knotes */

static unote_t *user_find(emu_kq *q, uintptr_t ident)
{
    int i;
    for (i = 0; i < q->nusers; i++)
        if (q->users[i].used && q->users[i].ident == ident)
            return &q->users[i];
    return NULL;
}

static unote_t *user_new(emu_kq *q, uintptr_t ident)
{
    int i;
    unote_t *nu;
    for (i = 0; i < q->nusers; i++)
        if (!q->users[i].used && !q->users[i].f.queued)
            break;
    if (i == q->nusers) {
        nu = realloc(q->users, (size_t)(q->nusers + 1) * sizeof *nu);
        if (nu == NULL)
            return NULL;
        q->users = nu;
        q->nusers++;
    }
    memset(&q->users[i], 0, sizeof q->users[i]);
    q->users[i].used = 1;
    q->users[i].ident = ident;
    return &q->users[i];
}

static int apply_user(emu_kq *q, const struct kevent *c)
{
    unote_t *u = user_find(q, c->ident);
    if (c->flags & EV_DELETE) {
        if (u == NULL)
            return ENOENT;
        u->used = 0;
        u->f.queued = 0;
        return 0;
    }
    if (u == NULL) {
        if (!(c->flags & EV_ADD))
            return ENOENT;
        if ((u = user_new(q, c->ident)) == NULL)
            return ENOMEM;
    }
    if (c->flags & EV_ADD)
        u->f.flags = KEPT_FLAGS(c->flags);
    u->f.udata = c->udata;          /* every change sets udata, NOTE_TRIGGER too */
    if (c->fflags & NOTE_TRIGGER) {
        u->triggered = 1;
        enqueue_user(q, u);
        wake_waiters(q);
    }
    return 0;
}

static int apply(emu_kq *q, const struct kevent *c)
{
    if (c->flags & (EV_DISABLE | EV_ONESHOT | EV_DISPATCH))
        return EINVAL;   /* not emulated */
    switch (c->filter) {
    case EVFILT_READ:
        return apply_fd(q, c, K_READ);
    case EVFILT_WRITE:
        return apply_fd(q, c, K_WRITE);
    case EVFILT_USER:
        return q->no_user ? EINVAL : apply_user(q, c);
    default:
        return EINVAL;
    }
}

/* ------------------------------------------------------------ scan */

/* Return up to nev events from the active queue (q.lock held). */
static int deliver(emu_kq *q, struct kevent *ev, int nev)
{
    size_t todo = q->qtail - q->qhead;   /* entries requeued now wait for the next call */
    int n = 0;
    while (todo > 0 && n < nev) {
        qent_t e = q->q[q->qhead++];
        todo--;
        if (e.kind == K_USER) {
            unote_t *u = user_find(q, e.ident);
            if (u == NULL || !u->f.queued)
                continue;
            u->f.queued = 0;
            if (!u->triggered)
                continue;
            EV_SET(&ev[n], u->ident, EVFILT_USER, u->f.flags, 0, 0, u->f.udata);
            n++;
            if (u->f.flags & EV_CLEAR)
                u->triggered = 0;
            else
                enqueue_user(q, u);
            continue;
        }
        {
            int fd = (int)e.ident;
            fdnote_t *fn = note_at(q, fd);
            filt_t *f;
            if (fn == NULL || !fn->used || fn->gen != e.gen)
                continue;
            f = &fn->f[e.kind];
            if (!f->active || !f->queued)
                continue;
            f->queued = 0;
            if (!same_file(fd, fn)) {
                note_forget(fn);   /* closed since: the kernel dropped the knotes */
                continue;
            }
            if (!fd_event(fd, fn, e.kind, &ev[n]))
                continue;
            n++;
            if (!(f->flags & EV_CLEAR))
                enqueue_fd(q, fd, fn, e.kind);   /* level-triggered: stays active */
        }
    }
    if (q->qhead == q->qtail)
        q->qhead = q->qtail = 0;
    return n;
}

/* Turn epoll events into queued knotes (q.lock held). */
static void harvest(emu_kq *q, const struct epoll_event *eps, int r)
{
    int i;
    for (i = 0; i < r; i++) {
        uint64_t d = eps[i].data.u64, v;
        uint32_t e = eps[i].events;
        fdnote_t *fn;
        int fd;
        if (d == EVFD_TAG) {
            while (read(q->evfd, &v, sizeof v) == (ssize_t)sizeof v)
                ;
            continue;
        }
        fd = (int)(uint32_t)d;
        fn = note_at(q, fd);
        if (fn == NULL || !fn->used || fn->gen != (uint32_t)(d >> 32))
            continue;
        if ((e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) && fn->f[K_READ].active)
            enqueue_fd(q, fd, fn, K_READ);
        if ((e & (EPOLLOUT | EPOLLHUP | EPOLLERR)) && fn->f[K_WRITE].active)
            enqueue_fd(q, fd, fn, K_WRITE);
    }
}

static int scan(emu_kq *q, struct kevent *ev, int nev, int64_t deadline)
{
    struct epoll_event eps[64];
    int n, r, ms, waited = 0;
    int64_t left;
    for (;;) {
        pthread_mutex_lock(&q->lock);
        n = deliver(q, ev, nev);
        pthread_mutex_unlock(&q->lock);
        if (n > 0)
            return n;
        ms = -1;
        if (deadline >= 0) {
            left = deadline - now_ns();
            if (waited && left <= 0)
                return 0;
            /* rounded up: the timeout never expires early */
            ms = left <= 0 ? 0 : (int)((left + 999999) / 1000000 > INT_MAX ? INT_MAX : (left + 999999) / 1000000);
        }
        r = epoll_wait(q->epfd, eps, 64, ms);
        if (r < 0)
            return -1;   /* EINTR: a signal interrupts kevent() too */
        waited = 1;
        pthread_mutex_lock(&q->lock);
        harvest(q, eps, r);
        pthread_mutex_unlock(&q->lock);
    }
}

/* ------------------------------------------------------------ the API */

int kqueue(void)
{
    struct epoll_event ev;
    emu_kq *q, *stale = NULL;
    const char *s;
    int e;
    pthread_once(&g_once, emu_init);
    q = calloc(1, sizeof *q);
    if (q == NULL) {
        errno = ENOMEM;
        return -1;
    }
    q->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (q->epfd < 0)
        goto fail;
    q->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (q->evfd < 0)
        goto fail_ep;
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    ev.data.u64 = EVFD_TAG;
    if (epoll_ctl(q->epfd, EPOLL_CTL_ADD, q->evfd, &ev) < 0)
        goto fail_ev;
    pthread_mutex_init(&q->lock, NULL);
    s = getenv(GOAIO_KQUEUE_EMU_NO_EVFILT_USER);
    q->no_user = s != NULL && *s != '\0' && strcmp(s, "0") != 0;
    q->refs = 1;
    pthread_mutex_lock(&g_lock);
    if (q->epfd >= g_nkqs) {
        int n = g_nkqs ? g_nkqs : 64;
        emu_kq **nk;
        while (n <= q->epfd)
            n *= 2;
        nk = realloc(g_kqs, (size_t)n * sizeof *nk);
        if (nk == NULL) {
            pthread_mutex_unlock(&g_lock);
            pthread_mutex_destroy(&q->lock);
            errno = ENOMEM;
            goto fail_ev;
        }
        memset(nk + g_nkqs, 0, (size_t)(n - g_nkqs) * sizeof *nk);
        g_kqs = nk;
        g_nkqs = n;
    }
    /* a kqueue whose number was closed with a plain close(): its number is ours now */
    stale = g_kqs[q->epfd];
    g_kqs[q->epfd] = q;
    if (stale != NULL) {
        stale->epfd = -1;
        if (--stale->refs > 0)
            stale = NULL;
    }
    pthread_mutex_unlock(&g_lock);
    if (stale != NULL)
        kq_free(stale);
    return q->epfd;

fail_ev:
    e = errno;
    close(q->evfd);
    errno = e;
fail_ep:
    e = errno;
    close(q->epfd);
    errno = e;
fail:
    e = errno;
    free(q);
    errno = e;
    return -1;
}

int goaio_emu_kq_close(int kq)
{
    emu_kq *q = NULL;
    int last = 0;
    pthread_mutex_lock(&g_lock);
    if (kq >= 0 && kq < g_nkqs && g_kqs[kq] != NULL) {
        q = g_kqs[kq];
        g_kqs[kq] = NULL;
        last = --q->refs == 0;
    }
    pthread_mutex_unlock(&g_lock);
    if (q == NULL)
        return close(kq);
    /* a kevent() still in progress keeps the number until it returns */
    if (last)
        kq_free(q);
    return 0;
}

int kevent(int kq, const struct kevent *changelist, int nchanges,
           struct kevent *eventlist, int nevents, const struct timespec *timeout)
{
    emu_kq *q;
    int i, err, nout = 0, r, e;
    int64_t deadline = -1;
    if (nchanges < 0 || nevents < 0 || (nchanges > 0 && changelist == NULL)
        || (nevents > 0 && eventlist == NULL)) {
        errno = EINVAL;
        return -1;
    }
    if (timeout != NULL && (timeout->tv_sec < 0 || timeout->tv_nsec < 0 || timeout->tv_nsec >= 1000000000L)) {
        errno = EINVAL;
        return -1;
    }
    q = kq_get(kq);
    if (q == NULL) {
        errno = EBADF;
        return -1;
    }
    pthread_mutex_lock(&q->lock);
    for (i = 0; i < nchanges; i++) {
        struct kevent c = changelist[i];   /* the two lists may be one array */
        err = apply(q, &c);
        if (err == 0 && !(c.flags & EV_RECEIPT))
            continue;
        if (nout == nevents) {
            /* no room for the EV_ERROR entry: kevent() fails with the error
             * and the rest of the changelist is not applied */
            pthread_mutex_unlock(&q->lock);
            kq_put(q);
            if (err) {
                errno = err;
                return -1;
            }
            return nout;
        }
        /* as macOS: EV_ERROR is added to the change's flags; udata is kept */
        eventlist[nout] = c;
        eventlist[nout].flags |= EV_ERROR;
        eventlist[nout].data = err;
        nout++;
    }
    pthread_mutex_unlock(&q->lock);
    /* errors or receipts were returned: no events are collected in this call */
    if (nout > 0 || nevents == 0) {
        kq_put(q);
        return nout;
    }
    if (timeout != NULL)
        deadline = now_ns() + (int64_t)timeout->tv_sec * 1000000000LL + timeout->tv_nsec;
    r = scan(q, eventlist, nevents, deadline);
    e = errno;
    kq_put(q);
    errno = e;
    return r;
}
