# core/structs.pxi -- the C records of the engine and their enums (declarations
# only; docs/architecture.md has the state table and the lock order).

cdef enum:
    OP_RECV = 1
    OP_RECV_FULL = 2
    OP_SEND = 3
    OP_SHUTDOWN = 4      # half-close, an entry of the send queue (core/halfclose.pxi)
    OP_STARTTLS = 5      # conn.start_tls: an entry of the send queue (core/tls.pxi)
    OP_ACCEPT = 8        # ops of listener and connect records (core/listener.pxi,
    OP_CONNECT = 9       #   core/connect.pxi): op.newfd is the new socket

    OPF_NEEDBUF = 1      # recv(ctx, None) with a share_buff: buffer taken when data is ready
    OPF_NONEBUF = 2      # posted with None: a failed result carries buff=None
    OPF_POOLBUF = 4      # buffobj is a BufferPool buffer (borrowed, index in pool_idx)
    OPF_SHAREDERR = 8    # a failed send and the shutdown behind it: one exception
                         # object for both (key in pool_idx; core/halfclose.pxi)
    OPF_TLSCONN = 16     # an accept/connect completed by a TLS handshake: the
                         # connection is op.pyconn, bound already (core/tls.pxi)
    OPF_TLSINNER = 32    # a TLS listener's own op for a connection taken ahead:
                         # never queued as a result, handed over to an accept
    OPF_TLSORPHAN = 64   # such an op whose listener closed: the setup runner
                         # closes its connection and frees it
    OPF_STASH = 128      # op.views is the view of a stash_t the op owns (a buffer
                         # from a Python share_buff; core/sharebuf.pxi: op_stash)

    ERR_EOF = -1
    ERR_RTIMEOUT = -2
    ERR_STIMEOUT = -3
    ERR_EMPTY = -4
    ERR_OBJ = -5         # errobj holds the exception (close reason, acquire() error)
    ERR_CLOSED = -6      # closed without a reason: a fresh ConnClosed
    ERR_LCLOSED = -7     # listener closed without a reason: a fresh ConnClosed(LISTENER_CLOSED)
    ERR_CTIMEOUT = -8    # ConnectTimeout
    ERR_CANCELLED = -9   # conn.cancel() without a reason: a fresh Cancelled
    ERR_TLS = -10        # op.tlserr holds the captured TLS failure (core/tls.pxi)

    # conn_t.kind: what a registered record is (the poller and the timer heap
    # see them all as conn_t; a listener/connect record starts with a conn_t)
    CK_STREAM = 0        # a bound connection (AIOConn)
    CK_LISTENER = 1      # lrec_t (core/listener.pxi)
    CK_CONNECT = 2       # crec_t (core/connect.pxi)



# svc_t.closed: the service's life (docs/architecture.md, "Service states").
# Tests of `s.closed` as a truth value mean "not SVC_OPEN".
cdef enum svc_state:
    SVC_OPEN = 0         # bind/post/collect work
    SVC_CLOSING = 1      # close() under way (or done but for the poller): users get ServiceClosed
    SVC_CLOSED = 2       # torn down: poller closed, threads gone (also: __cinit__ failed, forked child)


cdef struct stash_t:
    Py_buffer view       # first: an op lent the stash points op.views here (OPF_STASH)
    PyObject *obj        # owned
    PyObject *share      # owned: the share_buff it came from (to give it back), or NULL


cdef struct op_t:
    # (every idle connection has one receive op: 136 B without view0, a 144 B
    # malloc block; narrow fields, no pointer derivable from another)
    op_t *next
    conn_t *conn
    unsigned char kind
    unsigned char pinned # allocated with view0 (core/post.pxi: op_new, the freelists)
    unsigned short flags
    int err
    int nviews
    int iovcnt
    int pool_idx
    int newfd            # OP_ACCEPT/OP_CONNECT: the new socket, -1 once handed over
    PyObject *pyconn     # owned: keeps the AIOConn alive while the op is pending
    PyObject *context    # owned
    PyObject *buffobj    # owned (borrowed for OPF_POOLBUF)
    PyObject *errobj     # owned or NULL
    goaio_tlserr_t *tlserr   # owned: with ERR_TLS, why (core/tls.pxi)
    Py_buffer *views     # &view0; for a list, one heap block: the views, then their iovecs
    iovec *iov           # current position
    Py_ssize_t total
    Py_ssize_t done
    int64_t deadline
    iovec iov0
    Py_buffer view0      # last: a share-buffer receive is allocated without it


cdef struct oplist_t:
    # a chain of completed ops on their way to the completion queue (core/cq.pxi)
    op_t *head
    op_t *tail
    long n


cdef struct opq_t:
    # one direction of a connection: its pending ops in order (core/queue.pxi),
    # guarded by the connection's lock
    op_t *head
    op_t *tail
    int len
    int max              # recvq_size / sendq_size
    int64_t timeout      # ns per op, 0: none


cdef struct pool_t:
    goaio_lock_t lock    # (includes/connlock.h)
    PyObject **bufs      # every buffer made (borrowed from BufferPool._all)
    Py_buffer *views     # the pool's export of each buffer not with the user: a
                         # free or attached buffer cannot be resized meanwhile
    char *out            # 1 while handed out
    int *free            # stack of free indexes
    Py_ssize_t nfree
    Py_ssize_t nbufs
    Py_ssize_t cap
    Py_ssize_t nout
    Py_ssize_t size
    Py_ssize_t *htab     # buffer address -> index (open addressing, -1 empty; GIL-guarded:
    Py_ssize_t hcap      #   release() and _grow() only), a power of two, or 0
    Py_ssize_t hn        # buffers entered in it (the first hn of bufs)


cdef struct tls_t:
    # the TLS state of a connection (core/tls.pxi), guarded by c.lock
    SSL *ssl             # the SSL of sslobj, driven from C
    PyObject *sslobj     # owned: the ssl.SSLObject made by the user's context
    goaio_tlsio_t io     # the socket BIO's state (record framing, EOF, errors)
    int state            # TLS_HANDSHAKE, TLS_OPEN, TLS_FAILED
    char server_side
    char need_gil        # context callbacks: 1 during the handshake, 2 always
    char busy            # a thread runs a step with c.lock dropped (GIL path)
    char again           # something happened meanwhile: run again
    char connecting      # the handshake of a svc.connect (stats: pending_connect)
    char dropped         # a conn.tls_pend whose start_tls left the queue before it started
    char hsw_queued      # its connection is queued in the service's handshake work queue (c.lock)
    int info_busy        # TLSInfo calls in progress (core/tls_setup.pxi): no SSL call meanwhile
    int rd_end           # 0, ERR_EOF, or ERR_TLS (rd_err) once reading ended
    int wlast            # length of a write OpenSSL must see again (a record is half out)
    op_t *hs_op          # owned: completes when the handshake ends (accept, connect, start_tls)
    conn_t *listener     # a cref: the TLS listener that took the connection ahead, or NULL
    goaio_tlserr_t *err  # owned: why the handshake failed (TLS_FAILED)
    goaio_tlserr_t *rd_err  # owned: why reading failed
    int64_t hs_timeout   # ns, 0: none
    int64_t hs_deadline
    char *wpend          # owned: the plaintext of a record half written when its
    int wpend_len        #   send left the queue (timeout, cancel): sent on later
    conn_t *hsw_next     # in the service's handshake work queue (s.lock; c.tls is
                         # set once, so the queue reaches it without c.lock)


cdef struct conn_t:
    # (every idle connection has one, so its size counts, issue 13: field
    # order and widths, a 4-byte lock and the TLS-only fields in tls_t keep it
    # at 168 B on Linux, a 176 B malloc block)
    long cref            # atomic: the AIOConn, poll dispatches and timer entries
    uint64_t id
    int fd
    int shut_key         # the key of the exception a failed send and its shutdown share
    int heap_idx         # where its timer heap entry is, -1 if none (guarded by s.tlock)
    goaio_lock_t lock    # 4 bytes on Linux (includes/connlock.h)
    short shut_err       # errno of a send that failed while a shutdown was pending
    char closed
    char readable
    char writable
    char eof
    char hup             # the poller reported a hang-up: read on until EOF
    char acquiring       # a thread is getting a share buffer with the lock dropped
    char kind            # CK_STREAM, CK_LISTENER, CK_CONNECT
    char shut            # 0 open, 1 a shutdown is pending, 2 shut down for writing
    char retire          # a finished connect record: the next unlocker unregisters it
    opq_t rq             # pending receives
    opq_t sq             # pending sends
    int64_t timer_at     # the deadline of its entry in the timer heap, 0 if none
    pool_t *pool         # BufferPool fast path, or NULL
    PyObject *share_buff # owned; released with the record (so a worker may use it
                         # while it holds a cref, whatever the AIOConn does)
    PyObject *pyobj      # borrowed: the AIOConn, NULL once it is closed
    stash_t *stash       # owned: buffer taken from a Python share_buff, not yet used;
                         # or, tagged (core/sharebuf.pxi: stash_is_exc), the exception
                         # share_buff.acquire() or growing the BufferPool raised
    tls_t *tls           # owned: the TLS layer, NULL for a plain connection
    tls_t *tls_pend      # owned: a start_tls's layer, pending until it starts; or,
                         # with .dropped, one whose start_tls left the queue
                         # first (freed with the GIL: the next start_tls, the record)


cdef struct tentry_t:
    int64_t at
    conn_t *conn


cdef struct svc_t:
    pthread_mutex_t lock
    pthread_cond_t cq_cond
    pthread_cond_t w_cond
    op_t *cq_head
    op_t *cq_tail
    long cq_len
    svc_state closed
    int polling
    int poller_is_worker
    int kicked
    int nwaiting
    unsigned long poller_tid  # the thread in the poll round (valid while polling)
    int poller_users     # threads using the poller outside a poll round (bind, conn close)
    int poller_gone      # set (under s.lock) just before the poller is closed
    int64_t last_collector
    long live_ops        # atomic
    poller_t poller
    goaio_lock_t reg_lock
    conn_t **slots
    uint32_t *gens
    uint32_t *free_slots
    uint32_t nfree_slots
    uint32_t nslots      # slots used so far (each initialised): walkers stop here
    uint32_t slot_cap    # the arrays' capacity (core/registry.pxi)
    long nconns
    goaio_lock_t tlock
    tentry_t *heap
    Py_ssize_t heap_len
    Py_ssize_t heap_cap
    int64_t poll_until   # deadline the current poller sleeps to (0: not sleeping)
    # svc.stats() counters (core/stats.pxi): under s.lock (cq_push), the GIL
    # (accepted) or s.tlock (polls)
    int64_t ops_completed
    int64_t bytes_received
    int64_t bytes_sent
    int64_t accepted
    int64_t polls
    int notify_fd        # goaio.aio hook: written after a worker's poll round queued results (-1: none)
    int external_collector  # goaio.aio hook: a loop polls when the poller fd is readable (workers defer)
    op_t *tls_setup_head # accepted/connected TLS sockets waiting for their SSLObject (s.lock)
    op_t *tls_setup_tail
    conn_t *hsw_head     # TLS handshake steps handed to idle workers (core/tls.pxi; s.lock)
    conn_t *hsw_tail
    int hsw_len
    int widle            # workers waiting on w_cond, free to take one (s.lock)
    int64_t hsw_runs     # handshake steps workers took from the queue (s.lock; _stats)

