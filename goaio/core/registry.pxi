# core/registry.pxi -- id -> connection table (svc_t.slots, guarded by reg_lock).
# An id is (generation << 32 | slot): events for a closed connection are dropped.

cdef int reg_add(svc_t *s, conn_t *c) noexcept nogil:
    """Give c a slot and its id; 0 or ENOMEM. Takes reg_lock (no other lock held)."""
    cdef uint32_t idx, ncap
    cdef conn_t **ns
    cdef uint32_t *ng
    cdef uint32_t *nf
    goaio_lock(&s.reg_lock)
    if s.nfree_slots:
        s.nfree_slots -= 1
        idx = s.free_slots[s.nfree_slots]
    else:
        # A fresh slot: the arrays grow by doubling, but a slot's entries are
        # written only when it is first used, so the pages of the unused part
        # stay untouched (no RSS; issue 13). s.nslots counts the slots in use
        # so far (every walker stops there); s.slot_cap is the capacity.
        if s.nslots == s.slot_cap:
            ncap = s.slot_cap * 2 if s.slot_cap else 64
            ns = <conn_t **>PyMem_RawRealloc(s.slots, ncap * sizeof(conn_t *))
            if ns != NULL:
                s.slots = ns
            ng = <uint32_t *>PyMem_RawRealloc(s.gens, ncap * sizeof(uint32_t))
            if ng != NULL:
                s.gens = ng
            nf = <uint32_t *>PyMem_RawRealloc(s.free_slots, ncap * sizeof(uint32_t))
            if nf != NULL:
                s.free_slots = nf
            if ns == NULL or ng == NULL or nf == NULL:
                goaio_unlock(&s.reg_lock)
                return ENOMEM
            s.slot_cap = ncap
        idx = s.nslots
        s.gens[idx] = 1
        s.nslots += 1
    s.slots[idx] = c
    # The id is (generation << 32 | slot): a stale event for a closed connection
    # whose slot (or fd number) was reused carries the old generation and is dropped.
    c.id = (<uint64_t>s.gens[idx] << 32) | idx
    if c.kind == CK_STREAM:
        s.nconns += 1           # (connections only: not listeners and connects)
    goaio_unlock(&s.reg_lock)
    return 0


cdef void reg_remove(svc_t *s, conn_t *c) noexcept nogil:
    """Free c's slot; its id goes stale. Takes reg_lock (no other lock held)."""
    cdef uint32_t idx = <uint32_t>c.id
    goaio_lock(&s.reg_lock)
    if idx < s.nslots and s.slots[idx] == c:
        s.slots[idx] = NULL
        s.gens[idx] += 1
        if s.gens[idx] == 0:
            s.gens[idx] = 1
        s.free_slots[s.nfree_slots] = idx
        s.nfree_slots += 1
        if c.kind == CK_STREAM:
            s.nconns -= 1
    goaio_unlock(&s.reg_lock)


cdef conn_t *reg_lookup(svc_t *s, uint64_t id) noexcept nogil:
    """The live connection registered under id, with a reference taken, or NULL.
    Takes reg_lock (no other lock held)."""
    cdef uint32_t idx = <uint32_t>id
    cdef conn_t *c = NULL
    goaio_lock(&s.reg_lock)
    if idx < s.nslots and s.gens[idx] == <uint32_t>(id >> 32):
        c = s.slots[idx]
        if c != NULL:
            goaio_atomic_inc(&c.cref)
    goaio_unlock(&s.reg_lock)
    return c

