# core/queue.pxi -- the two op chains: a connection's pending queue (opq_t, one
# per direction) and a list of completed ops (oplist_t) bound for the
# completion queue. All nogil, no Python; the caller holds the lock that
# guards the chain (c.lock for an opq_t; an oplist_t is the caller's own).


cdef inline void oplist_add(oplist_t *l, op_t *op) noexcept nogil:
    """Append a completed op to l (l is the caller's: no lock)."""
    op.next = NULL
    if l.tail == NULL:
        l.head = op
    else:
        l.tail.next = op
    l.tail = op
    l.n += 1


cdef inline void oplist_init(oplist_t *l) noexcept nogil:
    l.head = l.tail = NULL
    l.n = 0


cdef inline void opq_push_locked(opq_t *q, op_t *op) noexcept nogil:
    """Append a pending op (c.lock held)."""
    op.next = NULL
    if q.tail == NULL:
        q.head = op
    else:
        q.tail.next = op
    q.tail = op
    q.len += 1


cdef inline op_t *opq_pop_locked(opq_t *q) noexcept nogil:
    """Detach the head op (c.lock held; the queue is not empty)."""
    cdef op_t *op = q.head
    q.head = op.next
    if q.head == NULL:
        q.tail = NULL
    q.len -= 1
    return op


cdef inline op_t *opq_take_all_locked(opq_t *q) noexcept nogil:
    """Detach every op, as a NULL-terminated chain (c.lock held)."""
    cdef op_t *head = q.head
    q.head = q.tail = NULL
    q.len = 0
    return head


cdef inline void finish_op_locked(conn_t *c, op_t *op, int err, oplist_t *done) noexcept nogil:
    """Complete op (already out of its queue) with err (0: success) into done
    (c.lock held)."""
    op.err = err
    if err != 0 and (op.flags & OPF_POOLBUF):
        # A failed share-buffer receive: the buffer goes straight back.
        pool_push(c.pool, op.pool_idx)
        op.flags &= ~OPF_POOLBUF
        op.buffobj = NULL
        op.iovcnt = 0
    oplist_add(done, op)


cdef void opq_fail_locked(conn_t *c, opq_t *q, int err, oplist_t *done) noexcept nogil:
    """Drain q: every pending op completes with err, in order (c.lock held)."""
    cdef op_t *op = opq_take_all_locked(q)
    cdef op_t *nxt
    while op != NULL:
        nxt = op.next
        finish_op_locked(c, op, err, done)
        op = nxt
