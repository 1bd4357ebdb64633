# core/stats.pxi -- svc.stats() and pool.stats() (SPEC "Introspection").
#
# Cheap and never in the way of IO: no c.lock is taken. The gauges come from
# one walk over the registry under s.reg_lock (which only guards the table;
# no thread holds it across a system call), reading each record's queue
# lengths as they are (a snapshot: a value may be off by an op in flight);
# the counters are kept where their events already hold a lock: results and
# bytes in cq_push (s.lock), accepted connections when their result is made
# (GIL), polls in poll_once (s.tlock).


cdef void count_bytes(oplist_t *l, int64_t *received, int64_t *sent) noexcept nogil:
    """Bytes moved by the receives and the sends of a completed-op list (the
    caller's list: no lock)."""
    cdef op_t *op = l.head
    while op != NULL:
        if op.kind == OP_RECV or op.kind == OP_RECV_FULL:
            received[0] += op.done
        elif op.kind == OP_SEND:
            sent[0] += op.done
        op = op.next


cdef inline long timed_ops(opq_t *q) noexcept nogil:
    """Pending ops of q with a deadline: all of them while q has a timeout
    (set_*_timeout gives every pending op the same one), else none."""
    return q.len if q.timeout else 0


cdef dict svc_stats(AIOService svc):
    """svc.stats() (GIL held, no C lock)."""
    cdef svc_t *s = svc.s
    cdef conn_t *c
    cdef uint32_t i
    cdef long conns = 0, listeners = 0, precv = 0, psend = 0, paccept = 0
    cdef long pconnect = 0, timers = 0, queued
    cdef int64_t ops, brecv, bsent
    with nogil:
        goaio_lock(&s.reg_lock)
        for i in range(s.nslots):
            c = s.slots[i]
            if c == NULL or c.closed:
                continue
            if c.kind == CK_STREAM:
                if c.tls != NULL and c.tls.connecting and c.tls.state == TLS_HANDSHAKE:
                    pconnect += 1   # a TLS connect in its handshake, a connection too (core/tls.pxi)
                conns += 1
                precv += c.rq.len
                psend += c.sq.len
                timers += timed_ops(&c.rq) + timed_ops(&c.sq)
                if tls_deadline(c) != 0:
                    timers += 1         # a handshake's timeout (core/tls.pxi)
            elif c.kind == CK_LISTENER:
                listeners += 1
                paccept += c.rq.len
            else:
                pconnect += 1
                timers += timed_ops(&c.rq)
        goaio_unlock(&s.reg_lock)
        pthread_mutex_lock(&s.lock)
        queued = 0 if s.closed else s.cq_len
        ops = s.ops_completed
        brecv = s.bytes_received
        bsent = s.bytes_sent
        pthread_mutex_unlock(&s.lock)
    threads = sum(1 for t in svc._threads if t.is_alive())
    r = svc._resolver
    if r is not None and r.alive():
        threads += 1
    return {
        "connections": conns,
        "listeners": listeners,
        "pending_recv": precv,
        "pending_send": psend,
        "pending_accept": paccept,
        "pending_connect": pconnect,
        "queued_results": queued,
        "timers": timers,
        "threads": threads,
        "ops_completed": ops,
        "bytes_received": brecv,
        "bytes_sent": bsent,
        "accepted": s.accepted,
        "polls": s.polls,
    }


cdef dict pool_stats(BufferPool pool):
    """pool.stats() (GIL held; takes pool.lock for a consistent view)."""
    cdef pool_t *p = pool.p
    cdef Py_ssize_t nbufs, nfree, nout
    with nogil:
        goaio_lock(&p.lock)
        nbufs = p.nbufs
        nfree = p.nfree
        nout = p.nout
        goaio_unlock(&p.lock)
    return {"buffers": nbufs, "free": nfree, "out": nout, "buffer_size": pool.buffer_size}
