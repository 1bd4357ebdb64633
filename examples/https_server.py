"""An HTTPS "Hello, World!" server on goaio's own API: HTTP/1.1 keep-alive over
TLS, no thread of its own, no asyncio.

    python examples/https_server.py CERT KEY [PORT]     (default 8443; 0 picks a free port)
    curl -k https://127.0.0.1:8443/
    wrk -t1 -c50 -d5s https://127.0.0.1:8443/

goaio runs the TLS handshake (the accept completes after it) and the record
layer; the loop below only ever sees plaintext. Each connection has one
receive posted (share-buffer mode: an idle connection holds no buffer); a
receive's bytes are scanned for complete requests (pipelined ones too), one
response is sent for each, and the next receive is posted at once. A request
with "Connection: close" gets its response, then close_notify (shutdown),
then the connection is closed. Ctrl-C stops it.
"""

import ssl
import sys

import goaio

RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\n"
            b"Hello, World!")
MAX_HEAD = 65536                     # a request head longer than this closes the connection


class Client:
    """One connection's state; it is also the context of its receives."""

    __slots__ = ("conn", "pending", "sent", "shut")

    def __init__(self, conn):
        self.conn = conn
        self.pending = b""           # the start of a request not complete yet
        self.sent = ("sent", self)   # the context of its sends
        self.shut = ("shut", self)   # the context of its shutdown


def on_data(client, data):
    """Answers every complete request in ``data``; False if the connection ends."""
    if client.pending:
        data = client.pending + data
    start, count, close = 0, 0, False
    while True:
        end = data.find(b"\r\n\r\n", start)
        if end < 0:
            break
        count += 1
        if b"\r\nconnection: close" in data[start:end].lower():
            close = True
            break
        start = end + 4
    client.pending = b"" if close else data[start:]
    conn = client.conn
    if count:
        conn.send(client.sent, RESPONSE if count == 1 else RESPONSE * count)
    if close:
        conn.shutdown(client.shut)   # close_notify once the response is written
        return False
    if len(client.pending) > MAX_HEAD:
        conn.close()
        return False
    conn.recv(client, None)          # the next request (a pool buffer only when it arrives)
    return True


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__.strip().splitlines()[2].strip())
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[1], sys.argv[2])
    ctx.set_alpn_protocols(["http/1.1"])
    port = int(sys.argv[3]) if len(sys.argv) > 3 else 8443

    svc = goaio.AIOService(workers=1)
    pool = goaio.BufferPool(16384)
    ln = svc.listen(("127.0.0.1", port), backlog=4096, ssl=ctx, ssl_handshake_timeout=10,
                    share_buff=pool)
    for _ in range(64):
        ln.accept("accept")
    print("https server listening on %s:%d" % ln.address[:2], flush=True)
    try:
        while True:
            for res in svc.get_complete_statuses(256):
                ctx_, conn, err = res.context, res.conn, res.err
                if ctx_ == "accept":
                    ln.accept("accept")                # keep the accepts posted
                    if err is None:                    # else: one client's failed handshake
                        conn.set_recv_timeout(60)
                        conn.recv(Client(conn), None)
                elif type(ctx_) is Client:             # a receive
                    if err is not None:                # EOFError (close_notify / EOF), timeout, SSLError
                        conn.close()
                        continue
                    data = bytes(memoryview(res.buff)[: res.bytes_transferred])
                    pool.release(res.buff)
                    try:
                        on_data(ctx_, data)
                    except goaio.Error:                # closed meanwhile
                        conn.close()
                elif ctx_[0] == "shut" or err is not None:
                    conn.close()                       # after close_notify, or a failed send
    except KeyboardInterrupt:                          # Ctrl-C reaches the loop while it waits
        pass
    finally:
        svc.close()                                    # the listener and every connection


if __name__ == "__main__":
    main()
