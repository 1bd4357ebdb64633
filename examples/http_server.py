"""A minimal keep-alive HTTP/1.1 server on goaio's API.

    python examples/http_server.py [PORT] [--backend pure|epoll|kqueue]

Every request (GET or HEAD, any path) gets a small fixed "Hello, World!"
answer; connections stay open (HTTP/1.1 keep-alive) until the client closes
them or sends ``Connection: close``. Pipelined requests are answered in
order. It is the server of the README's HTTP load (`wrk -c50`), not a web
framework: no request bodies (a request with a body is answered 400 and the
connection closed), headers of at most 64 KiB.

One loop (on a thread of its own; the main thread waits for Ctrl-C)
collects every completion: an accept posts the connection's first
receive; a receive parses what it brought and sends every complete request's
answer in one send (``nbytes=`` sends the first bytes of the prebuilt
answer buffer, no slicing); a finished send posts the next receive. Ctrl-C
or SIGTERM stops it.
"""

import os
import signal
import sys
import threading

if "--backend" in sys.argv:     # must be set before goaio is imported
    i = sys.argv.index("--backend")
    os.environ["GOAIO_BACKEND"] = sys.argv[i + 1]
    del sys.argv[i:i + 2]

import goaio  # noqa: E402

ACCEPT, RECV = "accept", "recv"     # contexts; a send's context is its connection's state

BODY = b"Hello, World!"
ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
          % (len(BODY), BODY))
HEAD_ANSWER = ANSWER[:-len(BODY)]
BAD = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
MAX_HEAD = 65536
#: answers to as many pipelined requests as fit in one send, prebuilt
PIPELINE = 16
ANSWERS = ANSWER * PIPELINE


class Conn:
    """A connection's state: its receive buffer and the bytes not yet parsed."""

    __slots__ = ("buf", "pending", "closing")

    def __init__(self):
        self.buf = bytearray(MAX_HEAD)
        self.pending = b""        # the start of a request not complete yet
        self.closing = False      # close after this send


def answer(st, data):
    """The bytes to send for `data` (what a receive brought): the answers to
    every complete request in it; the rest waits in st.pending."""
    if st.pending:
        data = st.pending + data
        st.pending = b""
    out = []
    n_plain = 0
    start = 0
    end = data.find(b"\r\n\r\n")
    while end >= 0:
        head = data[start:end]
        start = end + 4
        line_end = head.find(b"\r\n")
        line = head if line_end < 0 else head[:line_end]
        lower = head.lower() if line_end >= 0 else b""
        # find(), not `in`: on CPython `x in some_bytes` first tries x as an
        # int and builds (and drops) a TypeError, which costs more than the search
        if lower.find(b"content-length:") >= 0 or lower.find(b"transfer-encoding:") >= 0:
            st.closing = True       # no request bodies here
            out.append(ANSWERS[:len(ANSWER) * n_plain])
            out.append(BAD)
            return b"".join(out)
        if lower.find(b"connection: close") >= 0 or line.endswith(b"HTTP/1.0"):
            st.closing = True
        if line.startswith(b"HEAD "):
            out.append(ANSWERS[:len(ANSWER) * n_plain])
            n_plain = 0
            out.append(HEAD_ANSWER)
        else:
            n_plain += 1
        if st.closing:
            break
        end = data.find(b"\r\n\r\n", start)
    if not st.closing and start < len(data):
        st.pending = data[start:]
        if len(st.pending) > MAX_HEAD:
            st.closing = True
            st.pending = b""
            out.append(ANSWERS[:len(ANSWER) * n_plain])
            out.append(BAD)
            return b"".join(out)
    if not out:
        return n_plain       # the common case: n plain answers, no copy needed
    out.append(ANSWERS[:len(ANSWER) * n_plain] if n_plain <= PIPELINE else ANSWER * n_plain)
    return b"".join(out)


def serve(svc, ln):
    for _ in range(64):
        ln.accept(ACCEPT)          # several accepts pending: bursts are taken at once
    while True:
        try:
            batch = svc.get_complete_statuses(256)
        except goaio.ServiceClosed:
            return
        for res in batch:
            conn = res.conn
            ctx = res.context
            try:
                if ctx is ACCEPT:
                    ln.accept(ACCEPT)
                    if res.err is None:
                        st = Conn()
                        conn.recv(st, st.buf)
                    continue
                if res.err is not None:          # EOFError, a reset, ...
                    conn.close()
                    continue
                st = ctx
                if res.buff is st.buf:           # a receive completed
                    n = res.bytes_transferred
                    reply = answer(st, st.buf[:n])
                    if type(reply) is int:
                        if reply == 0:
                            conn.recv(st, st.buf)        # an incomplete request: read on
                        elif reply <= PIPELINE:
                            conn.send(st, ANSWERS, nbytes=len(ANSWER) * reply)
                        else:
                            conn.send(st, ANSWER * reply)
                    else:
                        conn.send(st, reply)
                elif st.closing:                 # a send completed
                    conn.close()
                else:
                    conn.recv(st, st.buf)
            except goaio.ServiceClosed:
                return
            except goaio.Error:                  # closed meanwhile
                if conn is not None:
                    conn.close()


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
    svc = goaio.AIOService(workers=1)
    ln = svc.listen(("127.0.0.1", port), backlog=4096)
    stop = []

    def on_signal(signum, _frame):
        stop.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    print("listening on %s:%d (goaio %s)" % (ln.address[0], ln.address[1], goaio.BACKEND),
          flush=True)
    # The loop runs on a thread of its own, the main thread only waits for
    # Ctrl-C: a collector that is not the main thread may do the IO itself
    # when nothing else polls (on the pure backend the main thread never
    # does, since a signal handler may run between any two of its bytecodes),
    # so a request and its answer stay on one thread.
    loop = threading.Thread(target=serve, args=(svc, ln), name="http-loop")
    loop.start()
    try:
        while loop.is_alive():
            loop.join(0.5)
    except KeyboardInterrupt:      # Ctrl-C (or SIGTERM)
        pass
    finally:
        svc.close()                # closes the listener and every connection; the loop ends
        loop.join()


if __name__ == "__main__":
    main()
