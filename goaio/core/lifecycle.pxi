# core/lifecycle.pxi -- the service's teardown helpers: who may still use the
# poller outside a poll round, waking it safely, discarding results nobody
# will collect. (The states are in docs/architecture.md.)


cdef bint poller_use_begin(svc_t *s, bint binding) noexcept nogil:
    """Enter a use of the poller outside a poll round (no lock held; takes
    s.lock). A bind may enter only while the service is open; a connection's
    close while the poller is not closed yet. False: do not use it.
    Pair every True with poller_use_end."""
    cdef bint ok
    pthread_mutex_lock(&s.lock)
    ok = (s.closed == SVC_OPEN) if binding else not s.poller_gone
    if ok:
        s.poller_users += 1
    pthread_mutex_unlock(&s.lock)
    return ok


cdef void poller_use_end(svc_t *s) noexcept nogil:
    pthread_mutex_lock(&s.lock)
    s.poller_users -= 1
    pthread_mutex_unlock(&s.lock)


cdef void svc_wake(svc_t *s) noexcept nogil:
    """Wake the poll round, if the poller is still open (no lock held or
    c.lock only; takes s.lock, under which close() closes the poller)."""
    pthread_mutex_lock(&s.lock)
    if not s.poller_gone:
        poller_wake(&s.poller)
    pthread_mutex_unlock(&s.lock)


cdef bint in_own_poll_round(svc_t *s) noexcept nogil:
    """True when the calling thread is the one in the poll round: it is in a
    callback (share_buff.acquire(), growing a pool) the round made (s.lock held)."""
    return s.polling and s.poller_tid == PyThread_get_thread_ident()


cdef void wait_quiet_locked(svc_t *s) noexcept nogil:
    """Wait (s.lock held, dropped meanwhile) until no other thread polls and
    nobody uses the poller outside a round. A round the calling thread is in
    (close() from a callback) is not waited for: it ends after close returns."""
    while (s.polling and s.poller_tid != PyThread_get_thread_ident()) or s.poller_users:
        if s.polling:
            poller_wake(&s.poller)
        pthread_mutex_unlock(&s.lock)
        usleep(1000)
        pthread_mutex_lock(&s.lock)


cdef void discard_queued_gil(svc_t *s):
    """Release every result nobody collected (GIL held, no C lock; share
    buffers go back to their pools)."""
    cdef op_t *head
    cdef op_t *op
    with nogil:
        pthread_mutex_lock(&s.lock)
        head = s.cq_head
        s.cq_head = s.cq_tail = NULL
        s.cq_len = 0
        pthread_mutex_unlock(&s.lock)
    while head != NULL:
        op = head
        head = op.next
        op_release_gil(op, True)
