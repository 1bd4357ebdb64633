# core/engine.pxi -- the compiled proactor core, shared by every compiled
# backend (_epoll.pyx, _kqueue.pyx), one unit per concern. Included after the
# per-OS poller (pollers/*.pxi: poller_t, pevent_t, poller_*), in this order
# (declarations first, then each unit after the ones it mostly builds on):
#
#   globals    Python imports and shared values
#   structs    the C records (op_t, conn_t, svc_t, pool_t, ...) and enums
#   sync       condition variables; reference drops from the IO path
#   queue      a connection's op queues (opq_t) and completed-op lists
#   pool       BufferPool (C side taken without the GIL, and the Python type)
#   results    AIOResult; completed op -> result
#   cq         the completion queue
#   registry   id -> connection table
#   timers     the deadline heap and expiry
#   sharebuf   share buffers for recv(ctx, None), the unlock protocol
#   io         the system calls: process_recv / process_send
#   tls        the TLS record layer in C (handshake, SSL_read/SSL_write, close_notify)
#   tls_accept handshakes on idle workers; TLS listeners' connections taken ahead
#   poll       poll round, worker loop, leader/follower collection
#   post       pinning buffers into a new op
#   conn       AIOConn
#   lifecycle  teardown helpers: poller users, safe wake-ups, discarding results
#   service    AIOService
#   listener   Listener, accept; events and timers of non-connection records
#   connect    svc.connect: the connect record and its attempts
#   resolver   the resolver thread
#   halfclose  conn.shutdown, conn.cancel, peername/sockname
#   tls_setup  TLS with the GIL: SSLObject, setup queue, exceptions, conn.tls
#   stats      svc.stats(), pool.stats()
#   fork       fork and exit handling of live services
#   transport  goaio.aio's compiled transport and completion dispatch
#   runloop    goaio.aio's loop iteration, call_soon, create_task, compiled
#
# The states of services, connections and ops, the threads, the locks and
# their order, and the naming of helpers by their lock/GIL contract are in
# docs/architecture.md.

include "globals.pxi"
include "structs.pxi"
include "sync.pxi"
include "queue.pxi"
include "pool.pxi"
include "results.pxi"
include "cq.pxi"
include "registry.pxi"
include "timers.pxi"
include "sharebuf.pxi"
include "io.pxi"
include "tls.pxi"
include "tls_accept.pxi"
include "poll.pxi"
include "post.pxi"
include "conn.pxi"
include "lifecycle.pxi"
include "service.pxi"
include "listener.pxi"
include "connect.pxi"
include "resolver.pxi"
include "halfclose.pxi"
include "tls_setup.pxi"
include "stats.pxi"
include "fork.pxi"
include "transport.pxi"
include "runloop.pxi"
