"""A TLS echo server on goaio with no thread of its own.

    python examples/tls_echo_server.py CERT KEY [PORT]   (default 8443; 0 picks a free port)
    openssl s_client -connect 127.0.0.1:8443 -quiet       (type a line: it comes back)

examples/echo_server.py with one change: the listener gets ``ssl=ctx``.
goaio runs each client's handshake (an accept completes after it, or with
its error: that client's socket is closed, the listener goes on) and the
TLS records; the loop sees plaintext only. Ctrl-C stops it.
"""

import ssl
import sys

import goaio

ACCEPT, RECV = "accept", "recv"     # contexts; a send's context is its buffer

if len(sys.argv) < 3:
    sys.exit(__doc__.strip().splitlines()[2].strip())
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)   # any ssl.SSLContext: certificates, ALPN, ciphers...
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
port = int(sys.argv[3]) if len(sys.argv) > 3 else 8443

svc = goaio.AIOService(workers=1)
pool = goaio.BufferPool(65536)       # share-buffer mode: an idle TLS connection holds no buffer
ln = svc.listen(("127.0.0.1", port), ssl=ctx, ssl_handshake_timeout=10, share_buff=pool)
for _ in range(16):
    ln.accept(ACCEPT)                # several handshakes proceed at once
print("listening on %s:%d" % ln.address[:2], flush=True)

try:
    for res in svc:
        conn = res.conn
        if res.context == ACCEPT:
            ln.accept(ACCEPT)                    # keep the accept posted
            if res.err is None:                  # else: ssl.SSLError, a handshake timeout...
                conn.set_recv_timeout(60)
                conn.recv(RECV, None)
        elif res.context == RECV:
            if res.err is not None:              # EOFError (close_notify or EOF), SSLError...
                conn.close()
            else:                                # plaintext in, plaintext out
                conn.send(res.buff, memoryview(res.buff)[: res.bytes_transferred])
        else:                                    # a send finished: recycle its buffer, read again
            pool.release(res.context)
            if res.err is None:
                conn.recv(RECV, None)
            else:
                conn.close()
except KeyboardInterrupt:
    pass
finally:
    svc.close()
