# core/sync.pxi -- condition variables on the monotonic clock, and the bridge
# from the IO path (no GIL) to Python reference counts.


cdef void cond_init(pthread_cond_t *c) noexcept nogil:
    """Initialise c on CLOCK_MONOTONIC (no lock, no GIL needed)."""
    cdef pthread_condattr_t a
    pthread_condattr_init(&a)
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC)
    pthread_cond_init(c, &a)
    pthread_condattr_destroy(&a)


cdef void cond_wait_until(pthread_cond_t *c, pthread_mutex_t *m, int64_t until) noexcept nogil:
    """Wait on c until the monotonic time `until` (ns); until < 0 waits forever.
    m held (released while waiting); never called with the GIL."""
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

cdef void decref_nogil(PyObject *o) noexcept with gil:
    """Py_DECREF from a thread without the GIL (it takes it); no C lock held."""
    Py_DECREF(<object>o)


cdef void conn_decref_nogil(conn_t *c) noexcept nogil:
    """Drop a reference to a connection record; the last one frees it.
    No C lock held (it may take the GIL); GIL held or not."""
    if goaio_atomic_dec(&c.cref) == 0:
        if c.share_buff != NULL:
            decref_nogil(c.share_buff)
        if c.kind == CK_LISTENER and (<lrec_t *>c).spec != NULL:
            decref_nogil((<lrec_t *>c).spec)
        if c.tls != NULL:
            tls_free_nogil(c.tls)           # core/tls.pxi
        if c.tls_pend != NULL:
            tls_free_nogil(c.tls_pend)
        goaio_lock_destroy(&c.lock)
        PyMem_RawFree(c)

