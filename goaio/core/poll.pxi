# core/poll.pxi -- the poll round and who runs it: leader/follower among the
# collecting threads (cq_take), a worker thread when nobody collects.


cdef int poll_once(svc_t *s, int64_t until) noexcept nogil:
    """One poll round: wait for events until `until` (ns, -1: no limit, 0: don't
    wait) or the next timer, but never longer than MAX_WAIT_NS; run the
    connections that became ready and the expired timers, and queue their
    completions in one go. Returns 1 when a signal interrupted the wait.
    No lock held, no GIL; the caller has set s.polling (one poller at a time)."""
    cdef pevent_t evs[POLL_BATCH_MAX]
    cdef int n, i, ms
    cdef int64_t now, t, wait_ns
    cdef conn_t *c
    cdef oplist_t done
    oplist_init(&done)
    goaio_lock(&s.tlock)
    t = s.heap[0].at if s.heap_len else 0
    if t != 0 and (until < 0 or t < until):
        until = t
    s.poll_until = until if until > 0 else (0 if until == 0 else 0x7FFFFFFFFFFFFFFF)
    goaio_unlock(&s.tlock)
    if until == 0:
        ms = 0
    else:
        # every wait is at most MAX_WAIT_NS (no OS call sees a value it cannot
        # represent; the caller loops); rounded up: a timer never fires early
        now = goaio_now_ns()
        wait_ns = MAX_WAIT_NS
        if until > 0 and until - now < wait_ns:
            wait_ns = until - now if until > now else 0
        ms = <int>((wait_ns + 999999) // 1000000)
    n = poller_wait(&s.poller, evs, POLL_BATCH_N, ms)
    goaio_lock(&s.tlock)
    s.poll_until = 0
    s.polls += 1
    goaio_unlock(&s.tlock)
    for i in range(n):
        c = reg_lookup(s, evs[i].id)
        if c == NULL:
            continue
        if c.kind != CK_STREAM:     # a listener or a connect (core/listener.pxi)
            record_event(s, c, evs[i].flags, &done)
            conn_decref_nogil(c)
            continue
        goaio_lock(&c.lock)
        if evs[i].flags & PF_READ:
            c.readable = 1
        if evs[i].flags & PF_WRITE:
            c.writable = 1
        if evs[i].flags & PF_HUP:
            c.hup = 1
        if c.tls != NULL:
            if not hsw_offload_locked(s, c):    # a handshake step to an idle worker
                tls_process_locked(s, c, &done)     # (a handshake runs with no op queued)
        elif c.rq.head != NULL:
            process_recv_locked(s, c, &done)
        if c.sq.head != NULL:
            process_send_locked(s, c, &done)
        # queued before c.lock is released: completions of one connection
        # enter the queue in the order they happened, whichever thread made them
        cq_push(s, &done, True)
        goaio_unlock(&c.lock)
        conn_decref_nogil(c)
    expire_timers(s, &done)
    if s.tls_setup_head != NULL:
        tls_setup_run_nogil(s)      # TLS accepts/connects: their SSLObjects (core/tls_setup.pxi)
    return n == -EINTR


cdef void worker_loop(svc_t *s) noexcept nogil:
    """A service thread: polls when no collector has for WORKER_GRACE_NS, so IO and
    timeouts progress while nobody collects. No GIL; takes s.lock and drops
    it around each poll round."""
    cdef int64_t now, t
    pthread_mutex_lock(&s.lock)
    while not s.closed:
        if s.hsw_head != NULL:
            hsw_run_one_locked(s)       # a TLS handshake step (core/tls.pxi)
            continue
        now = goaio_now_ns()
        if s.polling:
            s.widle += 1
            cond_wait_until(&s.w_cond, &s.lock, now + 20 * WORKER_GRACE_NS)
            s.widle -= 1
            continue
        if now - s.last_collector < WORKER_GRACE_NS:
            s.widle += 1
            cond_wait_until(&s.w_cond, &s.lock, s.last_collector + WORKER_GRACE_NS)
            s.widle -= 1
            continue
        if worker_defers_locked(s):
            s.widle += 1
            cond_wait_until(&s.w_cond, &s.lock, now + 4 * WORKER_GRACE_NS)
            s.widle -= 1
            continue
        s.polling = 1
        s.poller_tid = PyThread_get_thread_ident()
        s.poller_is_worker = 1
        s.kicked = 0
        pthread_mutex_unlock(&s.lock)
        poll_once(s, now + 200000000)
        pthread_mutex_lock(&s.lock)
        s.polling = 0
        s.poller_is_worker = 0
        worker_notify_locked(s)
        if s.nwaiting > 0:
            pthread_cond_signal(&s.cq_cond)
    pthread_mutex_unlock(&s.lock)


cdef bint worker_defers_locked(svc_t *s) noexcept nogil:
    """goaio.aio hook (s.lock held): an event loop watches the poller's
    descriptor and collects when it is readable (s.external_collector), so a
    worker leaves the poll to it, unless timers are armed (the loop does not
    know their deadlines: a worker serves them, re-checking every 4 graces).
    heap_len is read without s.tlock: a stale value only delays that check."""
    return s.external_collector != 0 and s.heap_len == 0


cdef void worker_notify_locked(svc_t *s) noexcept nogil:
    """goaio.aio hook (s.lock held): a worker's poll round left results queued:
    make s.notify_fd readable, so an event loop that watches it comes to collect."""
    cdef uint64_t one = 1
    if s.notify_fd >= 0 and s.cq_head != NULL:
        write(s.notify_fd, &one, 8)


cdef int cq_take(svc_t *s, Py_ssize_t maxn, int64_t until, op_t **out) noexcept nogil:
    """Collect up to maxn results, polling ourselves while the queue is empty
    and nobody else polls (leader/follower). until: -1 forever, 0: don't
    wait, else a monotonic deadline in ns. Returns 1 if the service is closed,
    2 when a signal interrupted our poll (nothing taken), else 0.
    No GIL, no lock held on entry (takes s.lock, drops it to poll)."""
    cdef int64_t now
    cdef int intr
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
            s.poller_tid = PyThread_get_thread_ident()
            s.poller_is_worker = 0
            s.kicked = 0
            pthread_mutex_unlock(&s.lock)
            intr = poll_once(s, until)
            pthread_mutex_lock(&s.lock)
            s.polling = 0
            s.last_collector = goaio_now_ns()
            if s.nwaiting > 0:
                pthread_cond_signal(&s.cq_cond)
            if s.cq_head == NULL and (until == 0 or intr):
                if intr and not s.closed:
                    s.last_collector = goaio_now_ns()
                    pthread_mutex_unlock(&s.lock)
                    return 2
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

