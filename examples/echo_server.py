"""An echo server on goaio with no thread of its own.

    python examples/echo_server.py [PORT]      (default 8110; 0 picks a free port)

It listens with svc.listen, keeps accepts posted on the listener, and one
loop collects every completion: an accepted connection gets its first
receive (and the accept is posted again), a receive is sent back, a finished
send posts the next receive. Ctrl-C stops it.
"""

import sys

import goaio

ACCEPT, RECV = "accept", "recv"     # contexts; a send's context is its buffer

svc = goaio.AIOService(workers=1)
pool = goaio.BufferPool(65536)       # share-buffer mode: a buffer only while data is in hand
port = int(sys.argv[1]) if len(sys.argv) > 1 else 8110
ln = svc.listen(("127.0.0.1", port), share_buff=pool)   # accepted connections use the pool
for _ in range(16):
    ln.accept(ACCEPT)                # several accepts pending: bursts are taken at once
print("listening on %s:%d" % ln.address[:2], flush=True)

try:
    for res in svc:                  # or svc.get_complete_status(timeout), from any thread
        conn = res.conn
        if res.context == ACCEPT:
            ln.accept(ACCEPT)                    # keep the accept posted
            if res.err is None:                  # (EMFILE & co.: goaio pauses, no spin)
                conn.set_recv_timeout(60)        # idle connections go after a minute
                conn.recv(RECV, None)            # None: take a pool buffer when data arrives
        elif res.context == RECV:
            if res.err is not None:              # EOFError, RecvTimeout, ConnectionResetError...
                conn.close()                     # (a failed share-buffer recv gave its buffer back)
            else:                                # echo it; the buffer rides along as the context
                conn.send(res.buff, memoryview(res.buff)[: res.bytes_transferred])
        else:                                    # a send finished: recycle its buffer, read again
            pool.release(res.context)
            if res.err is None:
                conn.recv(RECV, None)
            else:
                conn.close()
except KeyboardInterrupt:            # Ctrl-C reaches the loop while it waits
    pass
finally:
    svc.close()                      # closes the listener and every connection
