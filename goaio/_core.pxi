# The compiled proactor core, shared by every compiled backend (_epoll, _kqueue).
# Only the poller (poller_t, pevent_t, poller_* functions, poller_prepare_fd)
# differs per OS and is included before this file.
#
# Threads and locks
#   * The IO path runs without the GIL: polling, readv/writev/send, completing
#     operations and queueing them. Python objects are touched only by a thread
#     that holds the GIL: when an operation is posted (references taken, buffers
#     pinned with Py_buffer) and when its result is handed over or discarded
#     (references released).
#   * Locks: svc.lock (completion queue, leader/follower state), c.lock (one per
#     connection: its queues and flags; every system call on the fd is made with
#     it held), svc.reg_lock (the id -> connection table), svc.tlock (timer heap),
#     pool.lock (free buffers). Order: c.lock -> tlock, c.lock -> pool.lock; svc.lock
#     and reg_lock are never held with another lock.
#   * A thread holding a C lock never waits for the GIL (it drops the lock first),
#     so a thread holding the GIL may block on any of them.
#   * conn.close sets c.closed under c.lock and closes the fd afterwards: every
#     system call checks c.closed under the same lock, so no thread is inside a
#     syscall on the fd when it is closed and a reused fd number is never touched.

cimport cython

import os as _os
import threading as _threading
import warnings as _warnings
import weakref as _weakref
import atexit as _atexit

from goaio._errors import (ConnClosed, ServiceClosed, Busy, RecvTimeout, SendTimeout,
                           EmptyBuffer, oserror as _oserror)
from goaio import _common

cdef object _check_socket = _common.check_socket
cdef object _make_option = _common.make_option
cdef object _bound_fds = _common.bound_fds
cdef Py_ssize_t DEFAULT_RECV_BUFF_SIZE = _common.DEFAULT_RECV_BUFF_SIZE

cdef enum:
    OP_RECV = 1
    OP_RECV_FULL = 2
    OP_SEND = 3

    OPF_NEEDBUF = 1      # recv(ctx, None) with a share_buff: buffer taken when data is ready
    OPF_NONEBUF = 2      # posted with None: a failed result carries buff=None
    OPF_POOLBUF = 4      # buffobj is a BufferPool buffer (borrowed, index in pool_idx)

    ERR_EOF = -1
    ERR_RTIMEOUT = -2
    ERR_STIMEOUT = -3
    ERR_EMPTY = -4
    ERR_OBJ = -5         # errobj holds the exception (close reason, acquire() error)
    ERR_CLOSED = -6      # closed without a reason: a fresh ConnClosed

    IDLE_NS = 20000000   # a worker polls only when no collector did for this long


cdef struct stash_t:
    PyObject *obj        # owned
    PyObject *share      # owned: the share_buff it came from (to give it back), or NULL
    Py_buffer view


cdef struct op_t:
    op_t *next
    conn_t *conn
    int kind
    int flags
    int err
    int nviews
    int iovcnt
    int pool_idx
    PyObject *pyconn     # owned: keeps the AIOConn alive while the op is pending
    PyObject *context    # owned
    PyObject *buffobj    # owned (borrowed for OPF_POOLBUF)
    PyObject *errobj     # owned or NULL
    stash_t *stash
    Py_buffer *views
    iovec *iov           # current position
    iovec *iovs          # heap array for lists, else NULL
    Py_ssize_t total
    Py_ssize_t done
    int64_t deadline
    iovec iov0
    Py_buffer view0      # last: a share-buffer receive is allocated without it


cdef struct oplist_t:
    op_t *head
    op_t *tail
    long n


cdef struct pool_t:
    pthread_mutex_t lock
    PyObject **bufs      # every buffer made (borrowed from BufferPool._all)
    char *out            # 1 while handed out
    int *free            # stack of free indexes
    Py_ssize_t nfree
    Py_ssize_t nbufs
    Py_ssize_t cap
    Py_ssize_t nout
    Py_ssize_t size


cdef struct conn_t:
    long cref            # atomic: the AIOConn, poll dispatches and timer entries
    uint64_t id
    int fd
    char closed
    char readable
    char writable
    char eof
    char hup             # the poller reported a hang-up: read on until EOF
    char acquiring       # a thread is getting a share buffer with the lock dropped
    int rq_len
    int rq_max
    int sq_len
    int sq_max
    op_t *rq_head
    op_t *rq_tail
    op_t *sq_head
    op_t *sq_tail
    int64_t recv_timeout
    int64_t send_timeout
    int64_t timer_at     # earliest deadline with an entry in the timer heap, 0 if none
    pool_t *pool         # BufferPool fast path, or NULL
    PyObject *share_buff # owned; released with the record (so a worker may use it
                         # while it holds a cref, whatever the AIOConn does)
    PyObject *pyobj      # borrowed: the AIOConn, NULL once it is closed
    stash_t *stash       # owned: buffer taken from a Python share_buff, not yet used
    PyObject *stash_exc  # owned: exception raised by share_buff.acquire()
    pthread_mutex_t lock


cdef struct tentry_t:
    int64_t at
    conn_t *conn


cdef struct svc_t:
    pthread_mutex_t lock
    pthread_cond_t cq_cond
    pthread_cond_t w_cond
    op_t *cq_head
    op_t *cq_tail
    long cq_len
    int closed
    int polling
    int poller_is_worker
    int kicked
    int nwaiting
    int64_t last_collector
    long live_ops        # atomic
    poller_t poller
    pthread_mutex_t reg_lock
    conn_t **slots
    uint32_t *gens
    uint32_t *free_slots
    uint32_t nfree_slots
    uint32_t nslots
    long nconns
    pthread_mutex_t tlock
    tentry_t *heap
    Py_ssize_t heap_len
    Py_ssize_t heap_cap
    int64_t poll_until   # deadline the current poller sleeps to (0: not sleeping)


# ---------------------------------------------------------------- small helpers

cdef inline void oplist_add(oplist_t *l, op_t *op) noexcept nogil:
    op.next = NULL
    if l.tail == NULL:
        l.head = op
    else:
        l.tail.next = op
    l.tail = op
    l.n += 1


cdef void cond_init(pthread_cond_t *c) noexcept nogil:
    cdef pthread_condattr_t a
    pthread_condattr_init(&a)
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC)
    pthread_cond_init(c, &a)
    pthread_condattr_destroy(&a)


cdef void cond_wait_until(pthread_cond_t *c, pthread_mutex_t *m, int64_t until) noexcept nogil:
    """Wait on c until the monotonic time `until` (ns); until < 0 waits forever."""
    cdef timespec ts
    if until < 0:
        pthread_cond_wait(c, m)
        return
    ts.tv_sec = <long>(until // 1000000000)
    ts.tv_nsec = <long>(until % 1000000000)
    pthread_cond_timedwait(c, m, &ts)


# Python work reached from the IO path goes through these `with gil` functions:
# they take the GIL on entry and drop it, every Python temporary cleared, on
# exit. A nogil function that held Python locals itself would have Cython take
# the GIL at its exit to clear them, possibly while holding a C lock (deadlock).

cdef void py_decref(PyObject *o) noexcept with gil:
    Py_DECREF(<object>o)


cdef void conn_decref(conn_t *c) noexcept nogil:
    """Drop a reference to a connection record; the last one frees it.
    Never called with a C lock held: it may take the GIL."""
    if goaio_atomic_dec(&c.cref) == 0:
        if c.share_buff != NULL:
            py_decref(c.share_buff)
        pthread_mutex_destroy(&c.lock)
        PyMem_RawFree(c)


# ---------------------------------------------------------------- buffer pool (C side)

cdef int pool_pop(pool_t *p, PyObject **obj, char **data) noexcept nogil:
    """Take a free buffer without the GIL; -1 when the pool must grow."""
    cdef int idx
    pthread_mutex_lock(&p.lock)
    if p.nfree == 0:
        pthread_mutex_unlock(&p.lock)
        return -1
    p.nfree -= 1
    idx = p.free[p.nfree]
    p.out[idx] = 1
    p.nout += 1
    obj[0] = p.bufs[idx]
    # The buffer is ours alone while it is out of the free stack; read its
    # address now (a user may have resized it to the same length meanwhile).
    data[0] = goaio_bytearray_data(p.bufs[idx])
    pthread_mutex_unlock(&p.lock)
    return idx


cdef void pool_push(pool_t *p, int idx) noexcept nogil:
    pthread_mutex_lock(&p.lock)
    if p.out[idx]:
        p.out[idx] = 0
        p.nout -= 1
        p.free[p.nfree] = idx
        p.nfree += 1
    pthread_mutex_unlock(&p.lock)


cdef class BufferPool:
    """A thread-safe pool of ``bytearray(buffer_size)`` that grows on demand.

    ``acquire()`` hands out a free buffer (making new ones when none is free);
    ``release(buff)`` takes it back. Releasing a buffer the pool did not hand
    out, or one already released, is ``ValueError``. The compiled core takes
    buffers from it without the GIL.
    """
    cdef pool_t *p
    cdef list _all
    cdef dict _index
    cdef readonly Py_ssize_t buffer_size

    def __init__(self, buffer_size=65536):
        pass

    def __cinit__(self, buffer_size=65536, *args, **kwargs):
        _common._check_int("buffer_size", buffer_size, 1)
        self.buffer_size = buffer_size
        self._all = []
        self._index = {}
        self.p = <pool_t *>PyMem_RawMalloc(sizeof(pool_t))
        if self.p == NULL:
            raise MemoryError()
        memset(self.p, 0, sizeof(pool_t))
        pthread_mutex_init(&self.p.lock, NULL)
        self.p.size = buffer_size

    def __dealloc__(self):
        if self.p != NULL:
            pthread_mutex_destroy(&self.p.lock)
            PyMem_RawFree(self.p.bufs)
            PyMem_RawFree(self.p.out)
            PyMem_RawFree(self.p.free)
            PyMem_RawFree(self.p)
            self.p = NULL

    cdef int _grow(self) except -1:
        """Add buffers (GIL held): a quarter more, at least 4."""
        # Python work (which may release the GIL) is done before the C lock is
        # taken: a thread holding a C lock must never wait for the GIL.
        cdef pool_t *p = self.p
        cdef Py_ssize_t first = len(self._all)
        cdef Py_ssize_t add = max(4, first // 4), i, newcap = first + add
        cdef PyObject **nb
        cdef char *no
        cdef int *nf
        for i in range(add):
            b = bytearray(self.buffer_size)
            self._index[id(b)] = first + i
            self._all.append(b)
        pthread_mutex_lock(&p.lock)
        if newcap > p.cap:
            nb = <PyObject **>PyMem_RawRealloc(p.bufs, newcap * sizeof(PyObject *))
            if nb != NULL:
                p.bufs = nb
            no = <char *>PyMem_RawRealloc(p.out, newcap)
            if no != NULL:
                p.out = no
            nf = <int *>PyMem_RawRealloc(p.free, newcap * sizeof(int))
            if nf != NULL:
                p.free = nf
            if nb == NULL or no == NULL or nf == NULL:
                pthread_mutex_unlock(&p.lock)
                del self._all[first:]
                raise MemoryError()
            p.cap = newcap
        for i in range(first, newcap):
            p.bufs[i] = <PyObject *>self._all[i]
            p.out[i] = 0
            p.free[p.nfree] = <int>i
            p.nfree += 1
        p.nbufs = newcap
        pthread_mutex_unlock(&p.lock)
        return 0

    def acquire(self):
        """Take a buffer from the pool."""
        cdef PyObject *obj
        cdef char *data
        while pool_pop(self.p, &obj, &data) < 0:
            self._grow()
        return <object>obj

    def release(self, buff):
        """Give back a buffer that ``acquire()`` handed out."""
        cdef object i = self._index.get(id(buff))
        cdef int idx
        if i is None or self._all[i] is not buff:
            raise ValueError("buffer was not handed out by this pool, or was already released")
        idx = i
        if not self.p.out[idx]:
            raise ValueError("buffer was not handed out by this pool, or was already released")
        if len(buff) != self.buffer_size:
            raise ValueError("a pool buffer must not be resized")
        pool_push(self.p, idx)

    @property
    def outstanding(self):
        """How many buffers are handed out and not yet released."""
        return self.p.nout

    @property
    def free(self):
        """How many buffers wait in the pool."""
        return self.p.nfree

    def __repr__(self):
        return f"<BufferPool buffer_size={self.buffer_size} out={self.outstanding} free={self.free}>"


# ---------------------------------------------------------------- results

@cython.final
@cython.freelist(64)
cdef class AIOResult:
    """The completion of one posted operation."""
    cdef public object conn
    cdef public object context
    cdef public object buff
    cdef public Py_ssize_t bytes_transferred
    cdef public object err

    def __init__(self, conn, context, buff, bytes_transferred, err):
        self.conn = conn
        self.context = context
        self.buff = buff
        self.bytes_transferred = bytes_transferred
        self.err = err

    def __repr__(self):
        return (f"<AIOResult context={self.context!r} bytes_transferred={self.bytes_transferred}"
                f" err={self.err!r}>")


cdef object make_err(op_t *op):
    cdef int e = op.err
    if e == 0:
        return None
    if e == ERR_EOF:
        return EOFError("connection closed by peer")
    if e == ERR_RTIMEOUT:
        return RecvTimeout("recv timed out")
    if e == ERR_STIMEOUT:
        return SendTimeout("send timed out")
    if e == ERR_EMPTY:
        return EmptyBuffer("empty send buffer")
    if e == ERR_OBJ:
        return <object>op.errobj
    if e == ERR_CLOSED:
        return ConnClosed("the connection was closed")
    return _oserror(e)


cdef void op_release(op_t *op, bint give_back):
    """Drop every reference an op holds (GIL held) and free it.

    give_back: a share buffer attached to the op goes back to its pool."""
    cdef int i
    cdef stash_t *st = op.stash
    for i in range(op.nviews):
        PyBuffer_Release(&op.views[i])
    if st != NULL:
        if give_back and st.share != NULL:
            (<object>st.share).release(<object>st.obj)
        Py_XDECREF(st.share)
        Py_XDECREF(st.obj)
        PyMem_RawFree(st)
    if op.flags & OPF_POOLBUF:
        if give_back:
            pool_push(op.conn.pool, op.pool_idx)
    elif st == NULL:
        Py_XDECREF(op.buffobj)      # (a stash owns the buffer it lends to buffobj)
    Py_XDECREF(op.errobj)
    Py_XDECREF(op.context)
    Py_XDECREF(op.pyconn)
    if op.views != &op.view0 and op.stash == NULL:
        PyMem_RawFree(op.views)
    PyMem_RawFree(op.iovs)
    PyMem_RawFree(op)


cdef AIOResult make_result(svc_t *s, op_t *op):
    """Hand an op over as an AIOResult (GIL held); frees the op."""
    cdef AIOResult r = AIOResult.__new__(AIOResult)
    cdef bint ok = op.err == 0
    r.conn = <object>op.pyconn
    r.context = <object>op.context
    if ok or not (op.flags & OPF_NONEBUF):
        r.buff = <object>op.buffobj if op.buffobj != NULL else None
    else:
        r.buff = None
    r.bytes_transferred = op.done
    r.err = make_err(op)
    if ok and (op.flags & OPF_POOLBUF):
        op.flags &= ~OPF_POOLBUF     # the user owns it now (r.buff holds the reference)
        op.buffobj = NULL
    op_release(op, not ok)
    return r


# ---------------------------------------------------------------- completion queue

cdef void cq_push(svc_t *s, oplist_t *l, bint from_poller=False) noexcept nogil:
    """Queue completions; wake a collector waiting for them (the one sleeping
    in the poll, unless we are that poller, or one waiting on cq_cond)."""
    cdef bint wake = False
    if l.head == NULL:
        return
    pthread_mutex_lock(&s.lock)
    if s.cq_tail == NULL:
        s.cq_head = l.head
    else:
        s.cq_tail.next = l.head
    s.cq_tail = l.tail
    s.cq_len += l.n
    goaio_atomic_sub(&s.live_ops, l.n)   # counted from posting to completion
    if s.nwaiting > 0:
        pthread_cond_signal(&s.cq_cond)
    elif s.polling and not from_poller and not s.poller_is_worker and not s.kicked:
        s.kicked = 1
        wake = True
    pthread_mutex_unlock(&s.lock)
    if wake:
        poller_wake(&s.poller)
    l.head = l.tail = NULL
    l.n = 0


cdef op_t *cq_pop_locked(svc_t *s, long maxn) noexcept nogil:
    """Detach up to maxn ops from the queue (s.lock held); a NULL-terminated chain."""
    cdef op_t *head = s.cq_head
    cdef op_t *last = head
    cdef long k = 1
    while k < maxn and last.next != NULL:
        last = last.next
        k += 1
    s.cq_head = last.next
    if s.cq_head == NULL:
        s.cq_tail = NULL
    last.next = NULL
    s.cq_len -= k
    return head


# ---------------------------------------------------------------- registry

cdef int reg_add(svc_t *s, conn_t *c) noexcept nogil:
    cdef uint32_t idx, ncap, i
    cdef conn_t **ns
    cdef uint32_t *ng
    cdef uint32_t *nf
    pthread_mutex_lock(&s.reg_lock)
    if s.nfree_slots == 0:
        ncap = s.nslots * 2 if s.nslots else 64
        ns = <conn_t **>PyMem_RawRealloc(s.slots, ncap * sizeof(conn_t *))
        if ns != NULL:
            s.slots = ns
        ng = <uint32_t *>PyMem_RawRealloc(s.gens, ncap * sizeof(uint32_t))
        if ng != NULL:
            s.gens = ng
        nf = <uint32_t *>PyMem_RawRealloc(s.free_slots, ncap * sizeof(uint32_t))
        if nf != NULL:
            s.free_slots = nf
        if ns == NULL or ng == NULL or nf == NULL:
            pthread_mutex_unlock(&s.reg_lock)
            return ENOMEM
        i = ncap
        while i > s.nslots:
            i -= 1
            s.slots[i] = NULL
            s.gens[i] = 1
            s.free_slots[s.nfree_slots] = i
            s.nfree_slots += 1
        s.nslots = ncap
    s.nfree_slots -= 1
    idx = s.free_slots[s.nfree_slots]
    s.slots[idx] = c
    # The id is (generation << 32 | slot): a stale event for a closed connection
    # whose slot (or fd number) was reused carries the old generation and is dropped.
    c.id = (<uint64_t>s.gens[idx] << 32) | idx
    s.nconns += 1
    pthread_mutex_unlock(&s.reg_lock)
    return 0


cdef void reg_remove(svc_t *s, conn_t *c) noexcept nogil:
    cdef uint32_t idx = <uint32_t>c.id
    pthread_mutex_lock(&s.reg_lock)
    if idx < s.nslots and s.slots[idx] == c:
        s.slots[idx] = NULL
        s.gens[idx] += 1
        if s.gens[idx] == 0:
            s.gens[idx] = 1
        s.free_slots[s.nfree_slots] = idx
        s.nfree_slots += 1
        s.nconns -= 1
    pthread_mutex_unlock(&s.reg_lock)


cdef conn_t *reg_lookup(svc_t *s, uint64_t id) noexcept nogil:
    """The live connection registered under id, with a reference taken, or NULL."""
    cdef uint32_t idx = <uint32_t>id
    cdef conn_t *c = NULL
    pthread_mutex_lock(&s.reg_lock)
    if idx < s.nslots and s.gens[idx] == <uint32_t>(id >> 32):
        c = s.slots[idx]
        if c != NULL:
            goaio_atomic_inc(&c.cref)
    pthread_mutex_unlock(&s.reg_lock)
    return c


# ---------------------------------------------------------------- timers

cdef void heap_push(svc_t *s, int64_t at, conn_t *c) noexcept nogil:
    cdef Py_ssize_t i, parent
    cdef tentry_t *nh
    cdef tentry_t e
    if s.heap_len == s.heap_cap:
        nh = <tentry_t *>PyMem_RawRealloc(s.heap, (s.heap_cap * 2 + 16) * sizeof(tentry_t))
        if nh == NULL:
            return        # no memory: the op keeps its deadline and is checked at the next entry
        s.heap = nh
        s.heap_cap = s.heap_cap * 2 + 16
    goaio_atomic_inc(&c.cref)
    i = s.heap_len
    s.heap_len += 1
    while i > 0:
        parent = (i - 1) >> 1
        if s.heap[parent].at <= at:
            break
        s.heap[i] = s.heap[parent]
        i = parent
    s.heap[i].at = at
    s.heap[i].conn = c


cdef tentry_t heap_pop(svc_t *s) noexcept nogil:
    cdef tentry_t top = s.heap[0]
    cdef tentry_t last
    cdef Py_ssize_t i = 0, child, n
    s.heap_len -= 1
    n = s.heap_len
    if n > 0:
        last = s.heap[n]
        while True:
            child = 2 * i + 1
            if child >= n:
                break
            if child + 1 < n and s.heap[child + 1].at < s.heap[child].at:
                child += 1
            if s.heap[child].at >= last.at:
                break
            s.heap[i] = s.heap[child]
            i = child
        s.heap[i] = last
    return top


cdef void schedule_timer(svc_t *s, conn_t *c, int64_t at) noexcept nogil:
    """Make sure the heap checks c at `at` (c.lock held)."""
    cdef bint wake = False
    if at == 0 or (c.timer_at != 0 and c.timer_at <= at):
        return
    c.timer_at = at
    pthread_mutex_lock(&s.tlock)
    heap_push(s, at, c)
    if s.poll_until != 0 and at < s.poll_until:
        s.poll_until = at
        wake = True
    pthread_mutex_unlock(&s.tlock)
    if wake:
        poller_wake(&s.poller)


cdef void expire_conn(svc_t *s, conn_t *c, int64_t now, oplist_t *done) noexcept nogil:
    """Complete the ops of c whose deadline passed (c.lock held)."""
    cdef op_t *op
    cdef int64_t nxt = 0
    while c.rq_head != NULL and c.rq_head.deadline != 0 and c.rq_head.deadline <= now:
        op = c.rq_head
        c.rq_head = op.next
        if c.rq_head == NULL:
            c.rq_tail = NULL
        c.rq_len -= 1
        finish_op(c, op, ERR_RTIMEOUT, done)
    if c.sq_head != NULL and c.sq_head.deadline != 0 and c.sq_head.deadline <= now:
        # Every send queued behind a timed-out one fails too, so the stream
        # holds exactly the bytes reported and the user can resend in order.
        while c.sq_head != NULL:
            op = c.sq_head
            c.sq_head = op.next
            c.sq_len -= 1
            finish_op(c, op, ERR_STIMEOUT, done)
        c.sq_tail = NULL
    if c.rq_head != NULL and c.rq_head.deadline != 0:
        nxt = c.rq_head.deadline
    if c.sq_head != NULL and c.sq_head.deadline != 0 and (nxt == 0 or c.sq_head.deadline < nxt):
        nxt = c.sq_head.deadline
    if nxt != 0:
        schedule_timer(s, c, nxt)


cdef void expire_timers(svc_t *s, oplist_t *done) noexcept nogil:
    cdef int64_t now = goaio_now_ns()
    cdef tentry_t e
    cdef conn_t *c
    while True:
        pthread_mutex_lock(&s.tlock)
        if s.heap_len == 0 or s.heap[0].at > now:
            pthread_mutex_unlock(&s.tlock)
            return
        e = heap_pop(s)
        pthread_mutex_unlock(&s.tlock)
        c = e.conn
        pthread_mutex_lock(&c.lock)
        if not c.closed and c.timer_at == e.at:
            c.timer_at = 0
            expire_conn(s, c, now, done)
            cq_push(s, done, True)
        pthread_mutex_unlock(&c.lock)
        conn_decref(c)


cdef int64_t next_timer(svc_t *s) noexcept nogil:
    cdef int64_t at = 0
    pthread_mutex_lock(&s.tlock)
    if s.heap_len:
        at = s.heap[0].at
    pthread_mutex_unlock(&s.tlock)
    return at


# ---------------------------------------------------------------- the IO path

cdef inline void finish_op(conn_t *c, op_t *op, int err, oplist_t *done) noexcept nogil:
    op.err = err
    if err != 0 and (op.flags & OPF_POOLBUF):
        # A failed share-buffer receive: the buffer goes straight back.
        pool_push(c.pool, op.pool_idx)
        op.flags &= ~OPF_POOLBUF
        op.buffobj = NULL
        op.iovcnt = 0
    oplist_add(done, op)


cdef void fail_queue(conn_t *c, bint recvq, int err, oplist_t *done) noexcept nogil:
    cdef op_t *op
    if recvq:
        while c.rq_head != NULL:
            op = c.rq_head
            c.rq_head = op.next
            finish_op(c, op, err, done)
        c.rq_tail = NULL
        c.rq_len = 0
    else:
        while c.sq_head != NULL:
            op = c.sq_head
            c.sq_head = op.next
            finish_op(c, op, err, done)
        c.sq_tail = NULL
        c.sq_len = 0


cdef inline void advance(op_t *op, Py_ssize_t n) noexcept nogil:
    while n > 0 and op.iovcnt > 0:
        if <size_t>n >= op.iov.iov_len:
            n -= op.iov.iov_len
            op.iov += 1
            op.iovcnt -= 1
        else:
            op.iov.iov_base = <char *>op.iov.iov_base + n
            op.iov.iov_len -= n
            n = 0
    # skip zero-length entries so the next call never passes an empty iovec first
    while op.iovcnt > 0 and op.iov.iov_len == 0:
        op.iov += 1
        op.iovcnt -= 1


cdef void stash_free(stash_t *st, bint give_back):
    """Release a stash (GIL held, no C lock held: it may run Python code)."""
    PyBuffer_Release(&st.view)
    if st.share != NULL:
        if give_back:
            (<object>st.share).release(<object>st.obj)
        Py_DECREF(<object>st.share)
    Py_DECREF(<object>st.obj)
    PyMem_RawFree(st)


cdef stash_t *py_take_stash(PyObject *sb, PyObject **exc_out) noexcept with gil:
    """share_buff.acquire() (or a fresh bytearray when it returns None), pinned.
    NULL with the exception in exc_out (a new reference) on failure."""
    cdef stash_t *st = NULL
    try:
        obj = (<object>sb).acquire()
        share = <object>sb
        if obj is None:
            obj = bytearray(DEFAULT_RECV_BUFF_SIZE)
            share = None
        st = <stash_t *>PyMem_RawMalloc(sizeof(stash_t))
        if st == NULL:
            raise MemoryError()
        memset(st, 0, sizeof(stash_t))
        try:
            PyObject_GetBuffer(obj, &st.view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS)
        except BaseException as e:
            PyMem_RawFree(st)
            st = NULL
            if share is not None:
                share.release(obj)
            if isinstance(e, (BufferError, ValueError)):
                raise TypeError(f"share_buff.acquire() returned an unusable buffer: {e}") from None
            raise
        Py_INCREF(obj)
        st.obj = <PyObject *>obj
        if share is not None:
            Py_INCREF(share)
            st.share = <PyObject *>share
        if st.view.len == 0:
            stash_free(st, True)
            st = NULL
            raise EmptyBuffer("share_buff.acquire() returned an empty buffer")
    except BaseException as e:
        Py_INCREF(e)
        exc_out[0] = <PyObject *>e
        return NULL
    return st


cdef void py_drop(stash_t *st, PyObject *exc) noexcept with gil:
    """Give back a stash nobody will use, drop an exception nobody will see."""
    if st != NULL:
        stash_free(st, True)
    if exc != NULL:
        Py_DECREF(<object>exc)


cdef PyObject *py_grow_pool(PyObject *pool) noexcept with gil:
    """Grow a BufferPool; NULL, or the exception raised (a new reference)."""
    try:
        (<BufferPool>pool)._grow()
    except BaseException as e:
        Py_INCREF(e)
        return <PyObject *>e
    return NULL


cdef int take_python_buffer(conn_t *c) noexcept nogil:
    """Get a buffer from a Python share_buff for the head receive (c.lock held).

    Drops c.lock while it holds the GIL (a thread holding a C lock never waits
    for the GIL); leaves the buffer in c.stash or the exception acquire() raised
    in c.stash_exc. Returns 0 when the caller must re-examine the connection,
    -1 when another thread is already at it."""
    cdef stash_t *st
    cdef PyObject *exc = NULL
    if c.acquiring:
        return -1
    c.acquiring = 1
    pthread_mutex_unlock(&c.lock)
    # c.share_buff is owned by c, which our caller holds a cref on
    st = py_take_stash(c.share_buff, &exc)
    pthread_mutex_lock(&c.lock)
    if c.closed:
        # closed meanwhile: give it back (Python code, so without c.lock)
        pthread_mutex_unlock(&c.lock)
        py_drop(st, exc)
        pthread_mutex_lock(&c.lock)
    else:
        c.stash = st
        c.stash_exc = exc
    c.acquiring = 0
    return 0


cdef void drop_stash(conn_t *c, stash_t *st) noexcept nogil:
    """Give an unused Python share buffer back (c.lock held; dropped meanwhile)."""
    pthread_mutex_unlock(&c.lock)
    py_drop(st, NULL)
    pthread_mutex_lock(&c.lock)


cdef int attach_buffer(svc_t *s, conn_t *c, op_t *op, oplist_t *done) noexcept nogil:
    """Give the head recv(ctx, None) a share buffer (c.lock held).
    1: attached; 0: re-examine the connection; -1: stop processing.
    Where it must drop c.lock it first queues what completed so far, so a
    close meanwhile cannot put its results ahead of them."""
    cdef PyObject *obj
    cdef PyObject *exc
    cdef char *data
    cdef int idx
    cdef stash_t *st
    if c.stash_exc != NULL:
        op.errobj = c.stash_exc
        c.stash_exc = NULL
        c.rq_head = op.next
        if c.rq_head == NULL:
            c.rq_tail = NULL
        c.rq_len -= 1
        finish_op(c, op, ERR_OBJ, done)
        return 0
    if c.pool != NULL:
        idx = pool_pop(c.pool, &obj, &data)
        if idx >= 0:
            op.pool_idx = idx
            op.buffobj = obj
            op.flags |= OPF_POOLBUF
            op.iov0.iov_base = data
            op.iov0.iov_len = c.pool.size
            op.iov = &op.iov0
            op.iovcnt = 1
            op.total = c.pool.size
            return 1
        if c.acquiring:
            return -1
        cq_push(s, done)
        c.acquiring = 1
        pthread_mutex_unlock(&c.lock)
        exc = py_grow_pool(c.share_buff)
        pthread_mutex_lock(&c.lock)
        if exc != NULL:
            if c.closed:
                pthread_mutex_unlock(&c.lock)
                py_drop(NULL, exc)
                pthread_mutex_lock(&c.lock)
            else:
                c.stash_exc = exc
        c.acquiring = 0
        return 0
    if c.stash == NULL:
        cq_push(s, done)
        return take_python_buffer(c)
    st = c.stash
    c.stash = NULL
    op.stash = st
    op.buffobj = st.obj          # lent by the stash, which owns the reference
    op.views = &st.view
    op.nviews = 1
    op.iov0.iov_base = st.view.buf
    op.iov0.iov_len = st.view.len
    op.iov = &op.iov0
    op.iovcnt = 1
    op.total = st.view.len
    return 1


cdef void detach_buffer(conn_t *c, op_t *op) noexcept nogil:
    """Undo attach_buffer after EAGAIN (c.lock held): idle receives hold no buffer."""
    cdef stash_t *st = op.stash
    if op.flags & OPF_POOLBUF:
        pool_push(c.pool, op.pool_idx)
        op.flags &= ~OPF_POOLBUF
    op.stash = NULL
    op.views = &op.view0
    op.nviews = 0
    op.buffobj = NULL
    op.iovcnt = 0
    op.total = 0
    if st != NULL:
        drop_stash(c, st)


cdef void process_recv(svc_t *s, conn_t *c, oplist_t *done) noexcept nogil:
    """Run the receive queue of c as far as the socket allows (c.lock held)."""
    cdef op_t *op
    cdef ssize_t n
    cdef size_t want
    cdef int e, r
    while c.rq_head != NULL and not c.closed:
        op = c.rq_head
        if c.eof:
            c.rq_head = op.next
            if c.rq_head == NULL:
                c.rq_tail = NULL
            c.rq_len -= 1
            finish_op(c, op, ERR_EOF, done)
            continue
        if not c.readable:
            return
        if (op.flags & OPF_NEEDBUF) and op.buffobj == NULL:
            r = attach_buffer(s, c, op, done)
            if r < 0:
                return
            if r == 0:
                continue
        if op.iovcnt == 1:
            want = op.iov.iov_len
            n = recv(c.fd, op.iov.iov_base, want, 0)
        else:
            want = 0
            for r in range(op.iovcnt if op.iovcnt < IOV_MAX else IOV_MAX):
                want += op.iov[r].iov_len
            n = readv(c.fd, op.iov, op.iovcnt if op.iovcnt < IOV_MAX else IOV_MAX)
        if n > 0:
            op.done += n
            if <size_t>n < want and not c.hup:
                # A short read drained the socket and new data raises a new
                # edge; but a FIN that came with the data raised its edge
                # already, so after a hang-up we read on until EOF.
                c.readable = 0
            if op.kind == OP_RECV or op.done >= op.total:
                c.rq_head = op.next
                if c.rq_head == NULL:
                    c.rq_tail = NULL
                c.rq_len -= 1
                finish_op(c, op, 0, done)
            else:
                advance(op, n)
            continue
        if n == 0:
            c.eof = 1
            continue
        e = errno
        if e == EINTR:
            continue
        if goaio_would_block(e):
            c.readable = 0
            if op.flags & OPF_NEEDBUF:
                cq_push(s, done)        # (detach_buffer may drop c.lock)
                detach_buffer(c, op)
            return
        fail_queue(c, True, e, done)
        return


cdef void process_send(svc_t *s, conn_t *c, oplist_t *done) noexcept nogil:
    """Run the send queue of c as far as the socket allows (c.lock held)."""
    cdef op_t *op
    cdef ssize_t n
    cdef size_t want
    cdef int e, i, cnt
    cdef msghdr msg
    while c.sq_head != NULL and not c.closed:
        op = c.sq_head
        if op.total == 0:
            c.sq_head = op.next
            if c.sq_head == NULL:
                c.sq_tail = NULL
            c.sq_len -= 1
            finish_op(c, op, ERR_EMPTY, done)
            continue
        if not c.writable:
            return
        if op.iovcnt == 1:
            want = op.iov.iov_len
            n = send(c.fd, op.iov.iov_base, want, MSG_NOSIGNAL | MSG_DONTWAIT)
        else:
            cnt = op.iovcnt if op.iovcnt < IOV_MAX else IOV_MAX
            want = 0
            for i in range(cnt):
                want += op.iov[i].iov_len
            memset(&msg, 0, sizeof(msg))
            msg.msg_iov = op.iov
            msg.msg_iovlen = cnt
            n = sendmsg(c.fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT)
        if n >= 0:
            op.done += n
            if <size_t>n < want:
                c.writable = 0    # the socket buffer is full; EPOLLOUT comes when it drains
            if op.done >= op.total:
                c.sq_head = op.next
                if c.sq_head == NULL:
                    c.sq_tail = NULL
                c.sq_len -= 1
                finish_op(c, op, 0, done)
            else:
                advance(op, n)
            continue
        e = errno
        if e == EINTR:
            continue
        if goaio_would_block(e):
            c.writable = 0
            return
        c.sq_head = op.next
        if c.sq_head == NULL:
            c.sq_tail = NULL
        c.sq_len -= 1
        finish_op(c, op, e, done)


cdef void poll_once(svc_t *s, int64_t until) noexcept nogil:
    """One poll round: wait for events until `until` (ns, -1: no limit, 0: don't
    wait) or the next timer, run the connections that became ready and the
    expired timers, and queue their completions in one go."""
    cdef pevent_t evs[POLL_BATCH]
    cdef int n, i, ms
    cdef int64_t now, t
    cdef conn_t *c
    cdef oplist_t done
    done.head = done.tail = NULL
    done.n = 0
    pthread_mutex_lock(&s.tlock)
    t = s.heap[0].at if s.heap_len else 0
    if t != 0 and (until < 0 or t < until):
        until = t
    s.poll_until = until if until > 0 else (0 if until == 0 else 0x7FFFFFFFFFFFFFFF)
    pthread_mutex_unlock(&s.tlock)
    if until < 0:
        ms = -1
    elif until == 0:
        ms = 0
    else:
        now = goaio_now_ns()
        # round up: a timer must never fire early
        ms = <int>((until - now + 999999) // 1000000) if until > now else 0
    n = poller_wait(&s.poller, evs, POLL_BATCH, ms)
    pthread_mutex_lock(&s.tlock)
    s.poll_until = 0
    pthread_mutex_unlock(&s.tlock)
    for i in range(n):
        c = reg_lookup(s, evs[i].id)
        if c == NULL:
            continue
        pthread_mutex_lock(&c.lock)
        if evs[i].flags & PF_READ:
            c.readable = 1
        if evs[i].flags & PF_WRITE:
            c.writable = 1
        if evs[i].flags & PF_HUP:
            c.hup = 1
        if c.rq_head != NULL:
            process_recv(s, c, &done)
        if c.sq_head != NULL:
            process_send(s, c, &done)
        # queued before c.lock is released: completions of one connection
        # enter the queue in the order they happened, whichever thread made them
        cq_push(s, &done, True)
        pthread_mutex_unlock(&c.lock)
        conn_decref(c)
    expire_timers(s, &done)


cdef void worker_loop(svc_t *s) noexcept nogil:
    """A service thread: polls when no collector has for IDLE_NS, so IO and
    timeouts progress while nobody collects."""
    cdef int64_t now, t
    pthread_mutex_lock(&s.lock)
    while not s.closed:
        now = goaio_now_ns()
        if s.polling:
            cond_wait_until(&s.w_cond, &s.lock, now + 20 * IDLE_NS)
            continue
        if now - s.last_collector < IDLE_NS:
            cond_wait_until(&s.w_cond, &s.lock, s.last_collector + IDLE_NS)
            continue
        s.polling = 1
        s.poller_is_worker = 1
        s.kicked = 0
        pthread_mutex_unlock(&s.lock)
        poll_once(s, now + 200000000)
        pthread_mutex_lock(&s.lock)
        s.polling = 0
        s.poller_is_worker = 0
        if s.nwaiting > 0:
            pthread_cond_signal(&s.cq_cond)
    pthread_mutex_unlock(&s.lock)


cdef int cq_take(svc_t *s, long maxn, int64_t until, op_t **out) noexcept nogil:
    """Collect up to maxn results, polling ourselves while the queue is empty
    and nobody else polls (leader/follower). until: -1 forever, else a
    monotonic deadline in ns. Returns 1 if the service is closed."""
    cdef int64_t now
    pthread_mutex_lock(&s.lock)
    s.last_collector = goaio_now_ns()
    while True:
        if s.closed:
            pthread_mutex_unlock(&s.lock)
            return 1
        if s.cq_head != NULL:
            out[0] = cq_pop_locked(s, maxn)
            if s.cq_head != NULL and s.nwaiting > 0:
                pthread_cond_signal(&s.cq_cond)
            break
        now = goaio_now_ns()
        if until >= 0 and now >= until and until != 0:
            break
        if not s.polling:
            s.polling = 1
            s.poller_is_worker = 0
            s.kicked = 0
            pthread_mutex_unlock(&s.lock)
            poll_once(s, until)
            pthread_mutex_lock(&s.lock)
            s.polling = 0
            s.last_collector = goaio_now_ns()
            if s.nwaiting > 0:
                pthread_cond_signal(&s.cq_cond)
            if until == 0 and s.cq_head == NULL:
                break
            continue
        if until == 0:
            break
        if s.poller_is_worker and not s.kicked:
            # a worker is in the poll: make it hand the role over to us
            s.kicked = 1
            poller_wake(&s.poller)
        s.nwaiting += 1
        cond_wait_until(&s.cq_cond, &s.lock, until)
        s.nwaiting -= 1
    s.last_collector = goaio_now_ns()
    pthread_mutex_unlock(&s.lock)
    return 0


# ---------------------------------------------------------------- posting

cdef int get_view(object b, Py_buffer *v, bint writable) except -1:
    if not PyObject_CheckBuffer(b):
        raise TypeError(f"a bytes-like object is required, not {type(b).__name__!r}")
    # (numpy reports a non-contiguous array with ValueError: made BufferError)
    if not writable:
        try:
            PyObject_GetBuffer(b, v, PyBUF_C_CONTIGUOUS)
        except ValueError as e:
            raise BufferError(str(e)) from None
        return 0
    try:
        PyObject_GetBuffer(b, v, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS)
    except (BufferError, ValueError):
        try:
            PyObject_GetBuffer(b, v, PyBUF_C_CONTIGUOUS)
        except (BufferError, ValueError) as e:
            raise BufferError(str(e)) from None
        PyBuffer_Release(v)
        raise TypeError(f"a writable buffer is required, not a read-only {type(b).__name__!r}") from None
    return 0


cdef op_t *op_new(int kind, bint pinned=True) except NULL:
    """A new op; one that pins no buffer of its own (a share-buffer receive,
    which waits idle the longest) is allocated without the inline Py_buffer."""
    cdef size_t size = sizeof(op_t) if pinned else sizeof(op_t) - sizeof(Py_buffer)
    cdef op_t *op = <op_t *>PyMem_RawMalloc(size)
    if op == NULL:
        raise MemoryError()
    memset(op, 0, size)
    op.kind = kind
    op.views = &op.view0
    op.iov = &op.iov0
    return op


cdef int fill_buffers(op_t *op, object buff, bint writable) except -1:
    """Pin buff (a buffer or a list of buffers) for the op's whole life."""
    cdef Py_ssize_t n, i
    cdef Py_buffer *v
    if type(buff) is list:
        n = len(<list>buff)
        if n == 0:
            if writable:
                raise EmptyBuffer("empty list of buffers")
            op.buffobj = <PyObject *>buff
            Py_INCREF(buff)
            op.iovcnt = 0
            return 0
        op.views = <Py_buffer *>PyMem_RawMalloc(n * sizeof(Py_buffer))
        op.iovs = <iovec *>PyMem_RawMalloc(n * sizeof(iovec))
        if op.views == NULL or op.iovs == NULL:
            raise MemoryError()
        for i in range(n):
            get_view((<list>buff)[i], &op.views[i], writable)
            op.nviews = i + 1
            op.iovs[i].iov_base = op.views[i].buf
            op.iovs[i].iov_len = op.views[i].len
            op.total += op.views[i].len
        op.iov = op.iovs
        op.iovcnt = <int>n
    else:
        get_view(buff, &op.view0, writable)
        op.nviews = 1
        op.iov0.iov_base = op.view0.buf
        op.iov0.iov_len = op.view0.len
        op.iovcnt = 1
        op.total = op.view0.len
    op.buffobj = <PyObject *>buff
    Py_INCREF(buff)
    if op.total == 0:
        if writable:
            raise EmptyBuffer("zero-length receive buffer")
        op.iovcnt = 0
    else:
        advance(op, 0)   # skip leading zero-length items
    return 0


cdef inline int64_t to_ns(double seconds) noexcept nogil:
    return <int64_t>(seconds * 1e9 + 0.5)


# ---------------------------------------------------------------- Python objects

@cython.final
cdef class AIOConn:
    """A socket bound to an AIOService; post recv/recv_full/send on it."""
    cdef conn_t *c
    cdef AIOService _svc
    cdef object _sock
    cdef public object user_data
    cdef object __weakref__

    def __init__(self):
        raise TypeError("AIOConn objects are made by AIOService.bind()")

    def __dealloc__(self):
        if self.c != NULL:
            conn_decref(self.c)
            self.c = NULL

    def __del__(self):
        if self.c != NULL and not self.c.closed:
            # Taken out of the service first (no GIL release before this), so
            # svc.close() can never see a dying connection.
            self.c.pyobj = NULL
            fd = self.c.fd
            self._close(None)
            # A connection of a service being closed is not leaked: the
            # service closes it anyway (results dropped meanwhile, say).
            if not self._svc.s.closed:
                _warnings.warn(f"unclosed goaio connection fd={fd}", ResourceWarning, source=self)

    def __repr__(self):
        return f"<goaio.AIOConn fd={self.fd}{' closed' if self.closed else ''}>"

    @property
    def fd(self):
        """The socket's fd; -1 once the connection is closed."""
        return -1 if self.c.closed else self.c.fd

    @property
    def closed(self):
        return bool(self.c.closed)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    cdef inline int _check_open(self) except -1:
        if self._svc.s.closed:
            raise ServiceClosed("the service is closed")
        if self.c.closed:
            raise ConnClosed("the connection is closed")
        return 0

    cdef object _post(self, op_t *op, object context):
        """Queue op (GIL held) and run it at once when the socket is ready."""
        cdef conn_t *c = self.c
        cdef svc_t *s = self._svc.s
        cdef oplist_t done
        cdef int rc = 0, kind
        done.head = done.tail = NULL
        done.n = 0
        op.conn = c
        op.context = <PyObject *>context
        Py_INCREF(context)
        op.pyconn = <PyObject *>self
        Py_INCREF(self)
        with nogil:
            pthread_mutex_lock(&c.lock)
            if c.closed:
                rc = 1
            elif op.kind == OP_SEND:
                if c.sq_len >= c.sq_max:
                    rc = 2
                else:
                    if c.send_timeout:
                        op.deadline = goaio_now_ns() + c.send_timeout
                        schedule_timer(s, c, op.deadline)
                    if c.sq_tail == NULL:
                        c.sq_head = op
                    else:
                        c.sq_tail.next = op
                    c.sq_tail = op
                    c.sq_len += 1
                    goaio_atomic_inc(&s.live_ops)
                    if c.sq_head == op:
                        process_send(s, c, &done)
            else:
                if c.rq_len >= c.rq_max:
                    rc = 2
                else:
                    if c.recv_timeout:
                        op.deadline = goaio_now_ns() + c.recv_timeout
                        schedule_timer(s, c, op.deadline)
                    if c.rq_tail == NULL:
                        c.rq_head = op
                    else:
                        c.rq_tail.next = op
                    c.rq_tail = op
                    c.rq_len += 1
                    goaio_atomic_inc(&s.live_ops)
                    if c.rq_head == op and (c.readable or c.eof):
                        process_recv(s, c, &done)
            cq_push(s, &done)
            pthread_mutex_unlock(&c.lock)
        if rc:
            kind = op.kind           # (read before the op is freed)
            op_release(op, False)
            if rc == 1:
                raise ConnClosed("the connection is closed")
            raise Busy("the send queue is full" if kind == OP_SEND else "the receive queue is full")

    def recv(self, context, buff=None):
        """Read some bytes into buff (or a share buffer when buff is None)."""
        cdef op_t *op
        self._check_open()
        op = op_new(OP_RECV, buff is not None or self.c.share_buff == NULL)
        try:
            if buff is None:
                if self.c.share_buff != NULL:
                    op.flags = OPF_NEEDBUF | OPF_NONEBUF
                else:
                    op.flags = OPF_NONEBUF
                    fill_buffers(op, bytearray(DEFAULT_RECV_BUFF_SIZE), True)
            else:
                fill_buffers(op, buff, True)
        except BaseException:
            op_release(op, False)
            raise
        self._post(op, context)

    def recv_full(self, context, buff):
        """Fill buff completely (or fail with EOF, an error or a timeout)."""
        cdef op_t *op
        self._check_open()
        if buff is None:
            raise TypeError("recv_full needs a buffer")
        op = op_new(OP_RECV_FULL)
        try:
            fill_buffers(op, buff, True)
        except BaseException:
            op_release(op, False)
            raise
        self._post(op, context)

    def send(self, context, buff):
        """Write every byte of buff (a bytes-like object or a list of them)."""
        cdef op_t *op
        self._check_open()
        op = op_new(OP_SEND)
        try:
            fill_buffers(op, buff, False)
        except BaseException:
            op_release(op, False)
            raise
        self._post(op, context)

    cdef _set_timeout(self, seconds, bint recvq):
        cdef conn_t *c = self.c
        cdef int64_t ns = to_ns(_common.check_conn_timeout(seconds))
        cdef int64_t at
        cdef op_t *op
        with nogil:
            pthread_mutex_lock(&c.lock)
            at = goaio_now_ns() + ns if ns else 0
            if recvq:
                c.recv_timeout = ns
                op = c.rq_head
            else:
                c.send_timeout = ns
                op = c.sq_head
            while op != NULL:
                op.deadline = at
                op = op.next
            if at and not c.closed and (c.rq_head if recvq else c.sq_head) != NULL:
                schedule_timer(self._svc.s, c, at)
            pthread_mutex_unlock(&c.lock)

    def set_recv_timeout(self, seconds):
        """Receives must complete within `seconds` (None or 0: no limit)."""
        self._set_timeout(seconds, True)

    def set_send_timeout(self, seconds):
        """Sends must complete within `seconds` (None or 0: no limit)."""
        self._set_timeout(seconds, False)

    def close(self, reason=None):
        """Close the connection and its socket; pending operations complete
        with `reason` (an exception instance; default ConnClosed())."""
        if reason is not None and not isinstance(reason, BaseException):
            raise TypeError("reason must be an exception instance or None")
        self._close(reason)

    cdef _close(self, reason):
        cdef conn_t *c = self.c
        cdef svc_t *s = self._svc.s
        cdef oplist_t done
        cdef op_t *op
        cdef int fd
        cdef stash_t *st
        cdef PyObject *exc
        if c.closed:
            return
        done.head = done.tail = NULL
        done.n = 0
        pthread_mutex_lock(&c.lock)     # GIL held: fine, no c.lock holder waits for it
        if c.closed:
            pthread_mutex_unlock(&c.lock)
            return
        c.closed = 1
        # every pending op gets the reason itself, or by default a fresh
        # ConnClosed made when its result is (no Python code under c.lock)
        fail_queue(c, True, ERR_CLOSED if reason is None else ERR_OBJ, &done)
        fail_queue(c, False, ERR_CLOSED if reason is None else ERR_OBJ, &done)
        if reason is not None:
            op = done.head
            while op != NULL:
                op.errobj = <PyObject *>reason
                Py_INCREF(reason)
                op = op.next
        cq_push(s, &done)
        fd = c.fd
        st = c.stash
        c.stash = NULL
        exc = c.stash_exc
        c.stash_exc = NULL
        c.pyobj = NULL
        pthread_mutex_unlock(&c.lock)
        with nogil:
            reg_remove(s, c)
        # Close the fd only if the socket object still owned it: had the user
        # closed the socket behind our back, the number may already belong to
        # another file. EPOLL_CTL_DEL comes before close(); the fd number leaves
        # the bound registry while still open, so no socket can get it before.
        try:
            mine = self._sock.detach() == fd
        except OSError:
            mine = False
        if mine:
            with nogil:
                poller_del(&s.poller, fd)
        _bound_fds.discard(fd)
        if mine:
            close(fd)
        if st != NULL:
            stash_free(st, True)
        Py_XDECREF(exc)


cdef set _live_services = set()


@cython.final
cdef class AIOService:
    """A proactor service: `workers` threads do the IO of the connections bound
    to it; completions are collected with get_complete_status*(), from any thread."""
    cdef svc_t *s
    cdef list _threads
    cdef object _close_lock
    cdef int _workers
    cdef object __weakref__

    def __cinit__(self, workers=1):
        cdef int err
        self._workers = _common.check_workers(workers)
        self._threads = []
        self._close_lock = _threading.Lock()
        self.s = <svc_t *>PyMem_RawMalloc(sizeof(svc_t))
        if self.s == NULL:
            raise MemoryError()
        memset(self.s, 0, sizeof(svc_t))
        pthread_mutex_init(&self.s.lock, NULL)
        pthread_mutex_init(&self.s.reg_lock, NULL)
        pthread_mutex_init(&self.s.tlock, NULL)
        cond_init(&self.s.cq_cond)
        cond_init(&self.s.w_cond)
        err = poller_open(&self.s.poller)
        if err:
            self.s.closed = 2
            raise _oserror(err)
        self.s.last_collector = 0
        for i in range(self._workers):
            t = _threading.Thread(target=self._worker_main, name=f"goaio-worker-{i}", daemon=True)
            self._threads.append(t)
        for t in self._threads:
            t.start()
        _live_services.add(_weakref.ref(self))

    def _worker_main(self):
        with nogil:
            worker_loop(self.s)

    def __dealloc__(self):
        cdef svc_t *s = self.s
        if s == NULL:
            return
        self.s = NULL
        if s.closed != 2:
            # never closed: threads hold a reference, so this is only reached
            # after close() or when __cinit__ failed
            poller_close(&s.poller)
        pthread_mutex_destroy(&s.lock)
        pthread_mutex_destroy(&s.reg_lock)
        pthread_mutex_destroy(&s.tlock)
        pthread_cond_destroy(&s.cq_cond)
        pthread_cond_destroy(&s.w_cond)
        PyMem_RawFree(s.slots)
        PyMem_RawFree(s.gens)
        PyMem_RawFree(s.free_slots)
        PyMem_RawFree(s.heap)
        PyMem_RawFree(s)

    def __repr__(self):
        return f"<goaio.AIOService workers={self._workers}{' closed' if self.s.closed else ''}>"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __iter__(self):
        while True:
            try:
                yield self.get_complete_status()
            except ServiceClosed:
                return

    @property
    def closed(self):
        return bool(self.s.closed)

    def bind(self, sock, option=None, **kwargs):
        """Bind a connected stream socket; returns its AIOConn."""
        cdef AIOConn conn
        cdef conn_t *c
        cdef int err
        if self.s.closed:
            raise ServiceClosed("the service is closed")
        fd = _check_socket(sock)
        _bound_fds.add(fd)
        try:
            option = _make_option(option, kwargs)
            sock.setblocking(False)
            err = poller_prepare_fd(fd)     # per-OS socket setup (macOS: SO_NOSIGPIPE)
            if err:
                raise _oserror(err)
            conn = AIOConn.__new__(AIOConn)
            c = <conn_t *>PyMem_RawMalloc(sizeof(conn_t))
            if c == NULL:
                raise MemoryError()
            memset(c, 0, sizeof(conn_t))
            pthread_mutex_init(&c.lock, NULL)
            c.cref = 1
            conn.c = c
            conn._svc = self
            conn._sock = sock
            conn.user_data = option.user_data
            c.fd = fd
            # A send is tried at once (EAGAIN clears the flag). Readability comes
            # from the poller: registering reports data already there, and no
            # share buffer is ever taken on a guess.
            c.readable = 0
            c.writable = 1
            c.rq_max = option.recvq_size
            c.sq_max = option.sendq_size
            share = option.share_buff
            if share is not None:
                Py_INCREF(share)
                c.share_buff = <PyObject *>share
                if type(share) is BufferPool:
                    c.pool = (<BufferPool>share).p
            c.pyobj = <PyObject *>conn
            with nogil:
                err = reg_add(self.s, c)
            if err:
                raise _oserror(err)
            with nogil:
                err = poller_add(&self.s.poller, c.fd, c.id)
            if err:
                with nogil:
                    reg_remove(self.s, c)
                c.closed = 1
                raise _oserror(err)
        except BaseException:
            _bound_fds.discard(fd)
            raise
        if self.s.closed:
            conn._close(None)
            raise ServiceClosed("the service is closed")
        return conn

    cdef object _collect(self, long maxn, timeout):
        cdef svc_t *s = self.s
        cdef int64_t until
        cdef op_t *head = NULL
        cdef op_t *op
        cdef int closed = 0
        cdef double t = -1.0
        if timeout is not None:
            t = _common.check_timeout(timeout)
        if s.closed:
            raise ServiceClosed("the service is closed")
        # fast path: results are waiting (a thread holding the GIL may take
        # s.lock: no holder of it ever waits for the GIL)
        pthread_mutex_lock(&s.lock)
        if s.cq_head != NULL:
            head = cq_pop_locked(s, maxn)
            s.last_collector = goaio_now_ns()
        pthread_mutex_unlock(&s.lock)
        if head == NULL:
            until = -1 if t < 0 else (0 if t == 0 else goaio_now_ns() + to_ns(t))
            with nogil:
                closed = cq_take(s, maxn, until, &head)
            if closed:
                raise ServiceClosed("the service is closed")
        if maxn == 1 and head != NULL and head.next == NULL:
            return make_result(s, head)
        out = []
        while head != NULL:
            op = head
            head = op.next
            out.append(make_result(s, op))
        return out

    def get_complete_status(self, timeout=None):
        """The next result; None if `timeout` seconds passed first (0: don't wait)."""
        r = self._collect(1, timeout)
        if type(r) is list:
            return r[0] if r else None
        return r

    def get_complete_statuses(self, max_results=64, timeout=None):
        """Up to max_results results (at least one unless `timeout` expired: [])."""
        cdef long m = _common.check_max_results(max_results)
        r = self._collect(m, timeout)
        if type(r) is not list:
            return [r]
        return r

    def _stats(self):
        """Debug counters: live operations, registered connections, threads."""
        return {
            "live_ops": self.s.live_ops,
            "conns": self.s.nconns,
            "threads": sum(1 for t in self._threads if t.is_alive()),
            "queued": self.s.cq_len,
            "timers": self.s.heap_len,
        }

    def close(self):
        """Close every connection, discard uncollected results, stop the threads."""
        cdef svc_t *s = self.s
        cdef op_t *head
        cdef op_t *op
        cdef conn_t *c
        cdef tentry_t *heap
        cdef Py_ssize_t n, k
        cdef uint32_t i
        with self._close_lock:
            if s.closed:
                return
            with nogil:
                pthread_mutex_lock(&s.lock)
                s.closed = 1
                pthread_cond_broadcast(&s.cq_cond)
                pthread_cond_broadcast(&s.w_cond)
                pthread_mutex_unlock(&s.lock)
                poller_wake(&s.poller)
            for t in self._threads:
                if t is not _threading.current_thread():
                    t.join()
            # a collector may still be inside a poll round: wait for it to leave
            with nogil:
                pthread_mutex_lock(&s.lock)
                while s.polling:
                    pthread_mutex_unlock(&s.lock)
                    poller_wake(&s.poller)
                    usleep(1000)
                    pthread_mutex_lock(&s.lock)
                pthread_mutex_unlock(&s.lock)
            conns = []
            pthread_mutex_lock(&s.reg_lock)
            for i in range(s.nslots):
                c = s.slots[i]
                if c != NULL and c.pyobj != NULL:
                    conns.append(<object>c.pyobj)
            pthread_mutex_unlock(&s.reg_lock)
            for conn in conns:
                (<AIOConn>conn)._close(ServiceClosed("the service was closed"))
            conns = None
            # discard what nobody collected (share buffers go back to their pools)
            with nogil:
                pthread_mutex_lock(&s.lock)
                head = s.cq_head
                s.cq_head = s.cq_tail = NULL
                s.cq_len = 0
                pthread_mutex_unlock(&s.lock)
            while head != NULL:
                op = head
                head = op.next
                op_release(op, True)
            with nogil:
                pthread_mutex_lock(&s.tlock)
                heap = s.heap
                n = s.heap_len
                s.heap = NULL
                s.heap_len = s.heap_cap = 0
                pthread_mutex_unlock(&s.tlock)
                for k in range(n):
                    conn_decref(heap[k].conn)
                PyMem_RawFree(heap)
                poller_close(&s.poller)
            s.closed = 2
            self._threads = []
            _live_services.discard(_weakref.ref(self))


def _after_fork_in_child():
    """In a forked child the service threads are gone, the locks may be held
    forever and the poller is shared with the parent: every inherited service
    counts as closed (ServiceClosed), its connections as closed (their sockets
    are left to the user), and its poller fds are closed in the child only."""
    cdef AIOService svc
    cdef svc_t *s
    cdef conn_t *c
    cdef uint32_t i
    for r in list(_live_services):
        svc = r()
        if svc is None or svc.s == NULL or svc.s.closed:
            continue
        s = svc.s
        s.closed = 2
        for i in range(s.nslots):
            c = s.slots[i]
            if c != NULL and not c.closed:
                c.closed = 1
                _bound_fds.discard(c.fd)
        poller_close(&s.poller)
        svc._threads = []
    _live_services.clear()


if hasattr(_os, "register_at_fork"):
    _os.register_at_fork(after_in_child=_after_fork_in_child)


def _close_live_services():
    for r in list(_live_services):
        svc = r()
        if svc is not None:
            svc.close()


_atexit.register(_close_live_services)
