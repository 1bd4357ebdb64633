# core/pool.pxi -- BufferPool: its C side (pool_t, taken without the GIL by the
# IO path) and the Python type.

cdef int pool_pop(pool_t *p, PyObject **obj, char **data) noexcept nogil:
    """Take a free buffer; -1 when the pool must grow. Takes p.lock (a caller
    may hold c.lock); GIL held or not."""
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
    """Give buffer idx back to the free stack. Takes p.lock (a caller may hold
    c.lock); GIL held or not."""
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
        _common._check_int("buffer_size", buffer_size, 1, _sys.maxsize)
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
            raise ValueError(MSG_POOL_FOREIGN)
        idx = i
        if not self.p.out[idx]:
            raise ValueError(MSG_POOL_FOREIGN)
        if len(buff) != self.buffer_size:
            raise ValueError(MSG_POOL_RESIZED)
        pool_push(self.p, idx)

    def stats(self):
        """{"buffers", "free", "out", "buffer_size"}: the pool's buffers (free +
        out), those waiting in it, those handed out, their size."""
        return pool_stats(self)

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

