# core/cq.pxi -- the completion queue (svc_t.cq_*, guarded by s.lock).

cdef void cq_push(svc_t *s, oplist_t *l, bint from_poller=False) noexcept nogil:
    """Queue completions; wake a collector waiting for them (the one sleeping
    in the poll, unless we are that poller, or one waiting on cq_cond).
    Takes s.lock (a caller may hold c.lock, and should: see poll_once); no GIL
    needed. Leaves l empty."""
    cdef int64_t br = 0, bs = 0
    if l.head == NULL:
        return
    count_bytes(l, &br, &bs)                 # core/stats.pxi
    pthread_mutex_lock(&s.lock)
    s.ops_completed += l.n
    s.bytes_received += br
    s.bytes_sent += bs
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
        # under s.lock: close() closes the poller under it, never meanwhile
        poller_wake(&s.poller)
    pthread_mutex_unlock(&s.lock)
    l.head = l.tail = NULL
    l.n = 0


cdef op_t *cq_pop_locked(svc_t *s, Py_ssize_t maxn) noexcept nogil:
    """Detach up to maxn ops from the queue (s.lock held); a NULL-terminated chain."""
    cdef op_t *head = s.cq_head
    cdef op_t *last = head
    cdef Py_ssize_t k = 1
    while k < maxn and last.next != NULL:
        last = last.next
        k += 1
    s.cq_head = last.next
    if s.cq_head == NULL:
        s.cq_tail = NULL
    last.next = NULL
    s.cq_len -= k
    return head

