# core/resolver.pxi -- the resolver thread of a service: socket.getaddrinfo (looked
# up at call time, so a test may stand in for it) off the callers' threads, one
# name at a time, in submission order; started on first need by svc.connect
# with a host name, counted in stats()["threads"], joined by svc.close(). Its
# answer goes to the connect record (core/connect.pxi) under c.lock.


cdef list inet_addresses(infos, bint one_per_family):
    """The (family, address) pairs of a getaddrinfo answer, IPv4/IPv6 only,
    without repeats (only the first of each family when one_per_family)."""
    seen = set()
    out = []
    for fam, _, _, _, sa in infos:
        key = fam if one_per_family else (fam, sa)
        if fam in (_socket.AF_INET, _socket.AF_INET6) and key not in seen:
            seen.add(key)
            out.append((fam, sa))
    return out


cdef void connect_resolved_gil(AIOService svc, crec_t *cr, infos, err, linfos):
    """The resolver's answer for cr: addresses (infos, and linfos for a local
    name, or None) or an exception (err) (GIL held, no C lock; the caller holds
    a reference)."""
    cdef svc_t *s = svc.s
    cdef conn_t *c = &cr.c
    cdef addrs_t a
    cdef addrs_t la
    cdef bint have_local = linfos is not None
    cdef oplist_t done
    cdef bint retire
    a.sa = NULL
    a.len = NULL
    a.n = 0
    la.sa = NULL
    la.len = NULL
    la.n = 0
    oplist_init(&done)
    if err is None:
        try:
            addrs_fill_gil(&a, inet_addresses(infos, False))
            if linfos is not None:
                addrs_fill_gil(&la, inet_addresses(linfos, True))
        except Exception as e:
            err = e
            addrs_free(&a)
            addrs_free(&la)
    if err is not None:
        goaio_lock(&c.lock)     # GIL held: fine, no c.lock holder waits for it
        if not c.closed:
            c.rq.head.errobj = <PyObject *>err
            Py_INCREF(err)
            connect_done_locked(s, cr, -1, ERR_OBJ, &done)
            cq_push(s, &done)
        retire = take_retire_locked(c)
        goaio_unlock(&c.lock)
    else:
        with nogil:
            # attempts only while the service is open (else close() drops the connect)
            if poller_use_begin(s, True):
                goaio_lock(&c.lock)
                if not c.closed:
                    cr.addrs = a
                    a.sa = NULL
                    a.len = NULL
                    if have_local:
                        cr.local = la
                        la.sa = NULL
                        la.len = NULL
                    try_next_locked(s, cr, &done)
                    cq_push(s, &done)
                retire = take_retire_locked(c)
                goaio_unlock(&c.lock)
                poller_use_end(s)
            else:
                retire = False
        addrs_free(&a)
        addrs_free(&la)
    if retire:
        record_retire(s, c)


cdef object svc_resolver(AIOService svc):
    """The service's resolver, started on first need (GIL held)."""
    with svc._close_lock:
        if svc.s.closed:
            raise ServiceClosed(MSG_SERVICE_CLOSED)
        if svc._resolver is None:
            svc._resolver = _Resolver(svc)
        return svc._resolver


class _Resolver:
    """socket.getaddrinfo off the callers' threads, one name at a time, in
    submission order. Each queued record holds a reference."""

    def __init__(self, svc):
        self._q = _collections.deque()
        self._cond = _threading.Condition(_threading.Lock())
        self._stop = False
        self.thread = _threading.Thread(target=self._run, args=(svc,),
                                        name="goaio-resolver", daemon=True)
        self.thread.start()

    def submit(self, size_t rec, host, port, local_name):
        with self._cond:
            self._q.append((rec, host, port, local_name))
            self._cond.notify()

    def _run(self, AIOService svc):
        cdef crec_t *cr
        q = self._q
        cond = self._cond
        while True:
            with cond:
                while not q and not self._stop:
                    cond.wait()
                if self._stop:
                    return
                rec, host, port, local_name = q.popleft()
            cr = <crec_t *><size_t>rec
            try:
                if not cr.c.closed:
                    infos = linfos = err = None
                    try:
                        infos = _socket.getaddrinfo(host, port, 0, _socket.SOCK_STREAM)
                        if local_name is not None:
                            linfos = _socket.getaddrinfo(local_name[0], local_name[1], 0,
                                                         _socket.SOCK_STREAM, 0, _socket.AI_PASSIVE)
                    except UnicodeError as exc:   # a label the IDNA codec refuses: no such name
                        err = _socket.gaierror(_socket.EAI_NONAME, f"bad host name: {exc}")
                    except Exception as exc:      # gaierror and the like: delivered
                        err = exc
                    connect_resolved_gil(svc, cr, infos, err, linfos)
            finally:
                conn_decref_nogil(&cr.c)

    def stop(self, timeout=5.0):
        cdef crec_t *cr
        with self._cond:
            self._stop = True
            left = list(self._q)
            self._q.clear()
            self._cond.notify_all()
        for rec, _, _, _ in left:
            cr = <crec_t *><size_t>rec
            conn_decref_nogil(&cr.c)
        if self.thread is not _threading.current_thread():
            self.thread.join(timeout)

    def alive(self):
        return self.thread.is_alive()
