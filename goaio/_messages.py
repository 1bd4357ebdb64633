"""The words and numbers every backend shares.

Each backend reads its error messages and tunables from here, so that the
pure and compiled twins raise the same classes with the same messages and
behave alike (tests/test_twins.py holds them to it). A message with ``{}``
fields is formatted with ``str.format`` by the caller.
"""

# --- messages -------------------------------------------------------------------
SERVICE_CLOSED = "the service is closed"
CONN_CLOSED = "the connection is closed"
LISTENER_CLOSED = "the listener is closed"
PEER_CLOSED = "connection closed by peer"          # EOFError in results
RECV_TIMEOUT = "receive timed out"
SEND_TIMEOUT = "send timed out"
CONNECT_TIMEOUT = "connect timed out"
CANCELLED = "operation cancelled"
EMPTY_SEND = "zero-length send buffer"              # EmptyBuffer in a send's result
EMPTY_RECV = "zero-length receive buffer"           # EmptyBuffer raised by recv/recv_full
EMPTY_LIST = "empty list of buffers"                # EmptyBuffer raised for []
RECVQ_FULL = "the receive queue is full"            # Busy
SENDQ_FULL = "the send queue is full"               # Busy
ACCEPTQ_FULL = "the accept queue is full"           # Busy
SEND_AFTER_SHUTDOWN = "send after shutdown"         # BrokenPipeError raised by send
NOT_CONTIGUOUS = "the buffer must be C-contiguous"  # BufferError
NOT_BUFFER = "a bytes-like object is required, not {!r}"            # TypeError, type name
READ_ONLY = "a writable buffer is required, not a read-only {!r}"   # TypeError, type name
RECV_FULL_NEEDS_BUFFER = "recv_full needs a buffer"                 # TypeError
REASON_TYPE = "reason must be an exception instance or None"        # TypeError
SHARE_EMPTY = "share_buff.acquire() returned an empty buffer"       # EmptyBuffer in result
SHARE_UNUSABLE = "share_buff.acquire() returned an unusable buffer: {}"  # TypeError in result
POOL_FOREIGN = "buffer was not handed out by this pool, or was already released"  # ValueError
POOL_RESIZED = "a pool buffer must not be resized"                  # ValueError
NOT_MADE_BY_BIND = "AIOConn objects are made by AIOService.bind()"  # TypeError
TOO_LARGE = "{} must be <= {}, got {}"  # OverflowError: max_results, buffer_size past sys.maxsize

# --- TLS (goaio/_tls.py checks; both backends) -------------------------------------
SSL_NOT_CONTEXT = "ssl must be an ssl.SSLContext, not {!r}"                   # TypeError, type name
SSL_SERVER_SIDE_TYPE = "server_side must be a bool, not {!r}"                 # TypeError, type name
SSL_HOSTNAME_TYPE = "server_hostname must be a str or None, not {!r}"         # TypeError, type name
SSL_HOSTNAME_EMPTY = "server_hostname cannot be an empty string or start with a leading dot"  # ValueError
SSL_HOSTNAME_SERVER = "server_hostname is only meaningful with server_side=False"            # ValueError
SSL_NEEDS_HOSTNAME = "the context checks the host name (check_hostname): give server_hostname"  # ValueError
SSL_ONLY_WITH_SSL = "{} is only meaningful with ssl"                           # ValueError, arg name
SSL_TIMEOUT_TYPE = "ssl_handshake_timeout must be a number or None, not {!r}"  # TypeError, type name
SSL_TIMEOUT_VALUE = "ssl_handshake_timeout must be > 0, got {}"               # ValueError
HANDSHAKE_TIMEOUT = "TLS handshake timed out"                                 # HandshakeTimeout in results
TLS_ALREADY = "the connection already runs TLS"                               # ValueError by start_tls
TLS_AFTER_SHUTDOWN = "start_tls after shutdown"                               # BrokenPipeError by start_tls
TLS_UNAVAILABLE = "TLS is not available on the {!r} backend: {}"              # NotImplementedError (compiled)

# --- tunables -------------------------------------------------------------------
#: A worker thread takes the poll over only after the queue has had no
#: collecting thread for this long (seconds): shorter robs a collector that is
#: merely preempted on a loaded machine.
WORKER_GRACE = 0.020
#: Events taken from the poller per round.
POLL_BATCH = 128
#: Longest single wait in the poller (seconds). Every longer wait, a timeout of
#: any size and ``math.inf`` included, is made of waits of at most this long,
#: so no OS call ever sees a value it cannot represent. Also the latency bound
#: for noticing a signal where no wake-up descriptor serves.
MAX_WAIT = 0.050
#: Accepts that may be pending on one listener.
MAX_PENDING_ACCEPTS = 1024
#: Default ``ssl_handshake_timeout`` (seconds), as asyncio's.
SSL_HANDSHAKE_TIMEOUT = 60.0
#: A TLS listener with accepts pending takes connections from the kernel and
#: handshakes them in parallel while (handshakes running + handshaken
#: connections not yet claimed) < (accepts pending + this): a silent client
#: never holds up the others, and the work ahead of the accepts is bounded.
TLS_ACCEPT_AHEAD = 64

# --- introspection --------------------------------------------------------------
STATS_KEYS = (
    "connections", "listeners", "pending_recv", "pending_send", "pending_accept",
    "pending_connect", "queued_results", "timers", "threads",
    "ops_completed", "bytes_received", "bytes_sent", "accepted", "polls",
)
POOL_STATS_KEYS = ("buffers", "free", "out", "buffer_size")
