# core/fork.pxi -- the live services, and what happens to them at fork and exit.


def _after_fork_in_child():
    """In a forked child the service threads are gone, the locks may be held
    forever and the poller is shared with the parent: every inherited service
    counts as closed (ServiceClosed), its connections as closed (their sockets
    are left to the user), and its poller fds are closed in the child only."""
    cdef AIOService svc
    cdef svc_t *s
    cdef conn_t *c
    cdef uint32_t i
    for r in list(_live_services):
        svc = r()
        if svc is None or svc.s == NULL or svc.s.closed:
            continue
        s = svc.s
        s.closed = SVC_CLOSED
        for i in range(s.nslots):
            c = s.slots[i]
            if c != NULL and not c.closed:
                c.closed = 1
                _bound_fds.discard(c.fd)
        poller_close(&s.poller)
        svc._threads = []
    _live_services.clear()


if hasattr(_os, "register_at_fork"):
    _os.register_at_fork(after_in_child=_after_fork_in_child)


def _evict_stale_fd(int fd):
    """The bound-fd registry's hook (goaio/_common.py): close a connection of
    any live service registered under fd whose socket no longer owns it."""
    cdef AIOService svc
    cdef svc_t *s
    cdef conn_t *c
    cdef uint32_t i
    found = []
    for r in list(_live_services):
        svc = r()
        if svc is None or svc.s == NULL or svc.s.closed:
            continue
        s = svc.s
        goaio_lock(&s.reg_lock)     # (GIL held: no holder waits for it)
        for i in range(s.nslots):
            c = s.slots[i]
            if c != NULL and c.fd == fd and not c.closed and c.pyobj != NULL:
                found.append(<object>c.pyobj)
        goaio_unlock(&s.reg_lock)
    evicted = False
    for conn in found:
        if (<AIOConn>conn)._evict_if_stale(fd):
            evicted = True
    return evicted


_bound_fds.add_stale_hook(_evict_stale_fd)


def _close_live_services():
    for r in list(_live_services):
        svc = r()
        if svc is not None:
            svc.close()


_atexit.register(_close_live_services)
