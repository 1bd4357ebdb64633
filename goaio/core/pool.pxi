# core/pool.pxi -- BufferPool: its C side (pool_t, taken without the GIL by the
# IO path) and the Python type.
#
# The pool holds a buffer export (p.views[i]) on every buffer that is not with
# the user -- free, or attached to a receive -- so no one can resize it while
# the IO path may write into it (a resize raises BufferError). The export is
# dropped when the buffer goes to the user (acquire(), a successful receive)
# and taken again by release().

from cpython.dict cimport PyDict_GetItem
from cpython.long cimport PyLong_FromVoidPtr, PyLong_AsSsize_t


cdef int pool_pop(pool_t *p, PyObject **obj, char **data) noexcept nogil:
    """Take a free buffer; -1 when the pool must grow. Takes p.lock (a caller
    may hold c.lock); GIL held or not."""
    cdef int idx
    goaio_lock(&p.lock)
    if p.nfree == 0:
        goaio_unlock(&p.lock)
        return -1
    p.nfree -= 1
    idx = p.free[p.nfree]
    p.out[idx] = 1
    p.nout += 1
    obj[0] = p.bufs[idx]
    data[0] = <char *>p.views[idx].buf     # pinned: its address and length hold
    goaio_unlock(&p.lock)
    return idx


cdef void pool_push(pool_t *p, int idx) noexcept nogil:
    """Give buffer idx back to the free stack. Takes p.lock (a caller may hold
    c.lock); GIL held or not."""
    goaio_lock(&p.lock)
    if p.out[idx]:
        p.out[idx] = 0
        p.nout -= 1
        p.free[p.nfree] = idx
        p.nfree += 1
    goaio_unlock(&p.lock)


cdef inline size_t pool_hash(PyObject *b, Py_ssize_t hcap) noexcept nogil:
    cdef uint64_t h = (<uint64_t><size_t>b >> 4) * <uint64_t>0x9E3779B97F4A7C15
    return <size_t>(h ^ (h >> 32)) & <size_t>(hcap - 1)


cdef Py_ssize_t pool_find_gil(pool_t *p, PyObject *b) noexcept:
    """The index of buffer b in the pool, or -1 (GIL held: the table changes
    only in _grow). An accelerator of BufferPool._index: no Python calls."""
    cdef size_t h
    cdef Py_ssize_t i
    if p.hcap == 0:
        return -1
    h = pool_hash(b, p.hcap)
    while True:
        i = p.htab[h]
        if i < 0 or p.bufs[i] == b:
            return i
        h = (h + 1) & <size_t>(p.hcap - 1)


cdef void pool_index_gil(pool_t *p) noexcept:
    """Enter every buffer into the address table, growing it to keep it at
    most half full (GIL held). Out of memory: the table is left as it was and
    release() falls back to BufferPool._index for what it lacks."""
    cdef Py_ssize_t cap = p.hcap if p.hcap else 64
    cdef Py_ssize_t i
    cdef Py_ssize_t *t
    cdef size_t h
    while cap < 2 * p.nbufs:
        cap *= 2
    if cap != p.hcap:
        t = <Py_ssize_t *>PyMem_RawMalloc(cap * sizeof(Py_ssize_t))
        if t == NULL:
            return
        for i in range(cap):
            t[i] = -1
        PyMem_RawFree(p.htab)
        p.htab = t
        p.hcap = cap
        p.hn = 0
    for i in range(p.hn, p.nbufs):
        h = pool_hash(p.bufs[i], p.hcap)
        while p.htab[h] >= 0:
            h = (h + 1) & <size_t>(p.hcap - 1)
        p.htab[h] = i
    p.hn = p.nbufs


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
        goaio_lock_init(&self.p.lock)
        self.p.size = buffer_size

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self.p != NULL:
            # buffers attached to a receive keep their pool (through the
            # connection) alive: every buffer not with the user is free here
            for i in range(self.p.nbufs):
                if not self.p.out[i]:
                    PyBuffer_Release(&self.p.views[i])
            goaio_lock_destroy(&self.p.lock)
            PyMem_RawFree(self.p.views)
            PyMem_RawFree(self.p.bufs)
            PyMem_RawFree(self.p.out)
            PyMem_RawFree(self.p.free)
            PyMem_RawFree(self.p.htab)
            PyMem_RawFree(self.p)
            self.p = NULL

    cdef int _grow(self) except -1:
        """Add one buffer (GIL held): the pool makes buffers on demand, one at a
        time, as the pure backend's does; its arrays grow geometrically."""
        # Python work (which may release the GIL) is done before the C lock is
        # taken: a thread holding a C lock must never wait for the GIL.
        cdef pool_t *p = self.p
        cdef Py_ssize_t first = len(self._all)
        cdef Py_ssize_t add = 1, i, newcap = first + add, arrcap
        cdef PyObject **nb
        cdef char *no
        cdef int *nf
        cdef Py_buffer *nv
        cdef Py_buffer *pins = <Py_buffer *>PyMem_RawMalloc(add * sizeof(Py_buffer))
        cdef Py_ssize_t pinned = 0
        if pins == NULL:
            raise MemoryError()
        try:
            for i in range(add):
                b = bytearray(self.buffer_size)
                PyObject_GetBuffer(b, &pins[i], PyBUF_WRITABLE)
                pinned += 1
                self._index[id(b)] = first + i
                self._all.append(b)
            goaio_lock(&p.lock)
            if newcap > p.cap:
                arrcap = max(16, 2 * p.cap)
                nb = <PyObject **>PyMem_RawRealloc(p.bufs, arrcap * sizeof(PyObject *))
                if nb != NULL:
                    p.bufs = nb
                no = <char *>PyMem_RawRealloc(p.out, arrcap)
                if no != NULL:
                    p.out = no
                nf = <int *>PyMem_RawRealloc(p.free, arrcap * sizeof(int))
                if nf != NULL:
                    p.free = nf
                nv = <Py_buffer *>PyMem_RawRealloc(p.views, arrcap * sizeof(Py_buffer))
                if nv != NULL:
                    p.views = nv
                if nb == NULL or no == NULL or nf == NULL or nv == NULL:
                    goaio_unlock(&p.lock)
                    raise MemoryError()
                p.cap = arrcap
            for i in range(first, newcap):
                p.bufs[i] = <PyObject *>self._all[i]
                p.views[i] = pins[i - first]
                p.out[i] = 0
                p.free[p.nfree] = <int>i
                p.nfree += 1
            p.nbufs = newcap
            pool_index_gil(p)       # (no Python: fine under p.lock)
            pinned = 0          # the pool's now
            goaio_unlock(&p.lock)
        except BaseException:
            for i in range(pinned):
                PyBuffer_Release(&pins[i])
            for b in self._all[first:]:
                self._index.pop(id(b), None)
            del self._all[first:]
            raise
        finally:
            PyMem_RawFree(pins)
        return 0

    def acquire(self):
        """Take a buffer from the pool."""
        cdef PyObject *obj
        cdef char *data
        cdef int idx = pool_pop(self.p, &obj, &data)
        while idx < 0:
            self._grow()
            idx = pool_pop(self.p, &obj, &data)
        PyBuffer_Release(&self.p.views[idx])     # the user's now: resizable
        return <object>obj

    def release(self, buff):
        """Give back a buffer that ``acquire()`` handed out."""
        # (p.bufs, p.nbufs and the table change only in _grow, under the GIL we hold)
        cdef Py_ssize_t idx = pool_find_gil(self.p, <PyObject *>buff)
        cdef PyObject *i
        if idx < 0:
            i = PyDict_GetItem(self._index, PyLong_FromVoidPtr(<PyObject *>buff))
            if i == NULL:
                raise ValueError(MSG_POOL_FOREIGN)
            idx = PyLong_AsSsize_t(<object>i)
        if idx < 0 or idx >= self.p.nbufs or self.p.bufs[idx] != <PyObject *>buff:
            raise ValueError(MSG_POOL_FOREIGN)
        if not self.p.out[idx]:
            raise ValueError(MSG_POOL_FOREIGN)
        if PyByteArray_GET_SIZE(buff) != self.buffer_size:
            raise ValueError(MSG_POOL_RESIZED)
        PyObject_GetBuffer(buff, &self.p.views[idx], PyBUF_WRITABLE)   # pinned while in the pool
        pool_push(self.p, <int>idx)

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

