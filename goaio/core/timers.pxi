# core/timers.pxi -- the deadline heap (svc_t.heap, guarded by s.tlock). An
# entry holds a cref on its connection; a connection has at most one live
# entry that matters (c.timer_at), stale ones are dropped when popped.

cdef void heap_push_locked(svc_t *s, int64_t at, conn_t *c) noexcept nogil:
    """Add an entry for c at `at` (s.tlock held)."""
    cdef Py_ssize_t i, parent
    cdef tentry_t *nh
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


cdef tentry_t heap_pop_locked(svc_t *s) noexcept nogil:
    """Remove the earliest entry (s.tlock held; the heap is not empty)."""
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


cdef void schedule_timer_locked(svc_t *s, conn_t *c, int64_t at) noexcept nogil:
    """Make sure the heap checks c at `at` (c.lock held; takes s.tlock)."""
    cdef bint wake = False
    if at == 0 or (c.timer_at != 0 and c.timer_at <= at):
        return
    c.timer_at = at
    pthread_mutex_lock(&s.tlock)
    heap_push_locked(s, at, c)
    if s.poll_until != 0 and at < s.poll_until:
        s.poll_until = at
        wake = True
    pthread_mutex_unlock(&s.tlock)
    if wake:
        poller_wake(&s.poller)


cdef void expire_conn_locked(svc_t *s, conn_t *c, int64_t now, oplist_t *done) noexcept nogil:
    """Complete the ops of c whose deadline passed (c.lock held)."""
    cdef int64_t nxt = 0
    while c.rq.head != NULL and c.rq.head.deadline != 0 and c.rq.head.deadline <= now:
        finish_op_locked(c, opq_pop_locked(&c.rq), ERR_RTIMEOUT, done)
    if c.sq.head != NULL and c.sq.head.deadline != 0 and c.sq.head.deadline <= now:
        # Every send queued behind a timed-out one fails too, so the stream
        # holds exactly the bytes reported and the user can resend in order.
        opq_fail_locked(c, &c.sq, ERR_STIMEOUT, done)
        if c.shut == 1:
            c.shut = 0      # a pending shutdown went with them: nothing was shut down
    if c.rq.head != NULL and c.rq.head.deadline != 0:
        nxt = c.rq.head.deadline
    if c.sq.head != NULL and c.sq.head.deadline != 0 and (nxt == 0 or c.sq.head.deadline < nxt):
        nxt = c.sq.head.deadline
    if nxt != 0:
        schedule_timer_locked(s, c, nxt)


cdef void expire_timers(svc_t *s, oplist_t *done) noexcept nogil:
    """Run the entries that are due and queue their completions (no lock held
    on entry: takes s.tlock, then each c.lock in turn, never both)."""
    cdef int64_t now = goaio_now_ns()
    cdef tentry_t e
    cdef conn_t *c
    while True:
        pthread_mutex_lock(&s.tlock)
        if s.heap_len == 0 or s.heap[0].at > now:
            pthread_mutex_unlock(&s.tlock)
            return
        e = heap_pop_locked(s)
        pthread_mutex_unlock(&s.tlock)
        c = e.conn
        if c.kind != CK_STREAM:     # a listener's back-off, a connect's timeout
            record_expire(s, c, e.at, now, done)
            conn_decref_nogil(c)
            continue
        pthread_mutex_lock(&c.lock)
        if not c.closed and c.timer_at == e.at:
            c.timer_at = 0
            expire_conn_locked(s, c, now, done)
            cq_push(s, done, True)
        pthread_mutex_unlock(&c.lock)
        conn_decref_nogil(c)
