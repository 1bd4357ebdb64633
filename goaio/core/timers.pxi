# core/timers.pxi -- the deadline heap (svc_t.heap, guarded by s.tlock). A
# connection has at most one entry (its index in c.heap_idx, -1 if none, also
# guarded by s.tlock), at c.timer_at; the entry holds a cref on it. A closed
# connection's entry leaves with it (timer_remove_locked), so neither the
# record nor its share_buff waits for the deadline.


cdef inline void heap_set_locked(svc_t *s, Py_ssize_t i, tentry_t e) noexcept nogil:
    s.heap[i] = e
    e.conn.heap_idx = i


cdef void heap_sift_up_locked(svc_t *s, Py_ssize_t i) noexcept nogil:
    """Move entry i towards the root while earlier than its parent (s.tlock held)."""
    cdef tentry_t e = s.heap[i]
    cdef Py_ssize_t parent
    while i > 0:
        parent = (i - 1) >> 1
        if s.heap[parent].at <= e.at:
            break
        heap_set_locked(s, i, s.heap[parent])
        i = parent
    heap_set_locked(s, i, e)


cdef void heap_sift_down_locked(svc_t *s, Py_ssize_t i) noexcept nogil:
    """Move entry i towards the leaves while later than a child (s.tlock held)."""
    cdef tentry_t e = s.heap[i]
    cdef Py_ssize_t child, n = s.heap_len
    while True:
        child = 2 * i + 1
        if child >= n:
            break
        if child + 1 < n and s.heap[child + 1].at < s.heap[child].at:
            child += 1
        if s.heap[child].at >= e.at:
            break
        heap_set_locked(s, i, s.heap[child])
        i = child
    heap_set_locked(s, i, e)


cdef int heap_push_locked(svc_t *s, int64_t at, conn_t *c) noexcept nogil:
    """Add the entry of c (it has none) at `at`, taking a cref (s.tlock
    held). 0, or ENOMEM."""
    cdef tentry_t *nh
    cdef tentry_t e
    if s.heap_len == s.heap_cap:
        nh = <tentry_t *>PyMem_RawRealloc(s.heap, (s.heap_cap * 2 + 16) * sizeof(tentry_t))
        if nh == NULL:
            return ENOMEM
        s.heap = nh
        s.heap_cap = s.heap_cap * 2 + 16
    goaio_atomic_inc(&c.cref)
    e.at = at
    e.conn = c
    s.heap_len += 1
    s.heap[s.heap_len - 1] = e
    heap_sift_up_locked(s, s.heap_len - 1)
    return 0


cdef void heap_remove_at_locked(svc_t *s, Py_ssize_t i) noexcept nogil:
    """Take entry i out of the heap (s.tlock held); its cref is the caller's."""
    cdef tentry_t last
    s.heap[i].conn.heap_idx = -1
    s.heap_len -= 1
    if i == s.heap_len:
        return
    last = s.heap[s.heap_len]
    heap_set_locked(s, i, last)
    if i > 0 and s.heap[(i - 1) >> 1].at > last.at:
        heap_sift_up_locked(s, i)
    else:
        heap_sift_down_locked(s, i)


cdef tentry_t heap_pop_locked(svc_t *s) noexcept nogil:
    """Remove the earliest entry (s.tlock held; the heap is not empty); its
    cref is the caller's."""
    cdef tentry_t top = s.heap[0]
    heap_remove_at_locked(s, 0)
    return top


cdef void schedule_timer_locked(svc_t *s, conn_t *c, int64_t at) noexcept nogil:
    """Make sure the heap checks c at `at` (c.lock held; takes s.tlock)."""
    cdef bint wake = False
    if at == 0 or (c.timer_at != 0 and c.timer_at <= at):
        return
    goaio_lock(&s.tlock)
    if c.heap_idx >= 0:
        s.heap[c.heap_idx].at = at          # earlier than before: towards the root
        heap_sift_up_locked(s, c.heap_idx)
        c.timer_at = at
    elif heap_push_locked(s, at, c) == 0:
        c.timer_at = at
    # (no memory: no entry; the op keeps its deadline, checked when the
    # connection next gets one)
    if c.timer_at == at and s.poll_until != 0 and at < s.poll_until:
        s.poll_until = at
        wake = True
    goaio_unlock(&s.tlock)
    if wake:
        svc_wake(s)


cdef bint timer_remove_locked(svc_t *s, conn_t *c) noexcept nogil:
    """Take c's entry out of the heap (c.lock held, c closed; takes s.tlock).
    True when there was one: the caller then drops its cref (after c.lock)."""
    cdef bint had = False
    goaio_lock(&s.tlock)
    if c.heap_idx >= 0:
        heap_remove_at_locked(s, c.heap_idx)
        had = True
    goaio_unlock(&s.tlock)
    c.timer_at = 0
    return had


cdef void expire_conn_locked(svc_t *s, conn_t *c, int64_t now, oplist_t *done) noexcept nogil:
    """Complete the ops of c whose deadline passed (c.lock held)."""
    cdef int64_t nxt = 0
    if c.tls != NULL:
        tls_expire_locked(s, c, now, done)      # the handshake's deadline (core/tls.pxi)
    while c.rq.head != NULL and c.rq.head.deadline != 0 and c.rq.head.deadline <= now:
        finish_op_locked(c, opq_pop_locked(&c.rq), ERR_RTIMEOUT, done)
    if c.sq.head != NULL and c.sq.head.deadline != 0 and c.sq.head.deadline <= now:
        # Every send queued behind a timed-out one fails too, so the stream
        # holds exactly the bytes reported and the user can resend in order.
        tls_keep_half_record_locked(c, c.sq.head)    # (a TLS record half out is finished later)
        opq_fail_locked(c, &c.sq, ERR_STIMEOUT, done)
        if c.shut == 1:
            c.shut = 0      # a pending shutdown went with them: nothing was shut down
    if c.rq.head != NULL and c.rq.head.deadline != 0:
        nxt = c.rq.head.deadline
    if c.sq.head != NULL and c.sq.head.deadline != 0 and (nxt == 0 or c.sq.head.deadline < nxt):
        nxt = c.sq.head.deadline
    if tls_deadline(c) != 0 and (nxt == 0 or tls_deadline(c) < nxt):
        nxt = tls_deadline(c)
    if nxt != 0:
        schedule_timer_locked(s, c, nxt)
    if tls_pending(c) and (c.sq.head == NULL or c.sq.head.kind != OP_STARTTLS):
        tls_start_dropped_locked(s, c, done)    # a pending start_tls timed out with the sends


cdef void expire_timers(svc_t *s, oplist_t *done) noexcept nogil:
    """Run the entries that are due and queue their completions (no lock held
    on entry: takes s.tlock, then each c.lock in turn, never both)."""
    cdef int64_t now = goaio_now_ns()
    cdef tentry_t e
    cdef conn_t *c
    while True:
        goaio_lock(&s.tlock)
        if s.heap_len == 0 or s.heap[0].at > now:
            goaio_unlock(&s.tlock)
            return
        e = heap_pop_locked(s)
        goaio_unlock(&s.tlock)
        c = e.conn
        if c.kind != CK_STREAM:     # a listener's back-off, a connect's timeout
            record_expire(s, c, e.at, now, done)
            conn_decref_nogil(c)
            continue
        goaio_lock(&c.lock)
        if not c.closed and c.timer_at == e.at:
            c.timer_at = 0
            expire_conn_locked(s, c, now, done)
            cq_push(s, done, True)
        goaio_unlock(&c.lock)
        conn_decref_nogil(c)
