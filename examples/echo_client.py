"""A client on goaio: connect, send, read the whole echo, half-close.

    python examples/echo_client.py [HOST [PORT [MESSAGE]]]   (default 127.0.0.1 8110)

Everything is a posted operation, collected from the service's queue: no
blocking call and no thread of its own. Exits 0 when the echo matched.
"""

import sys

import goaio

host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
port = int(sys.argv[2]) if len(sys.argv) > 2 else 8110
message = (sys.argv[3] if len(sys.argv) > 3 else "hello, goaio").encode()

with goaio.AIOService() as svc:
    svc.connect("connect", (host, port), timeout=5)      # a name is resolved off the caller
    res = svc.get_complete_status(timeout=10)
    if res is None or res.err is not None:               # ConnectionRefusedError, ConnectTimeout...
        sys.exit(f"cannot connect to {host}:{port}: {'no answer' if res is None else repr(res.err)}")
    conn = res.conn

    conn.send("send", message)
    conn.recv_full("echo", bytearray(len(message)))      # completes when all of it is back
    conn.shutdown("shutdown")                            # half-close after the send: the peer reads EOF
    conn.recv("eof", bytearray(1))                       # ...and closes its side, so this ends with EOFError

    reply = None
    for _ in range(4):                                   # send, echo, shutdown, eof: one result each
        res = svc.get_complete_status(timeout=10)
        if res is None:
            sys.exit("no answer within 10 s")
        if res.context == "echo":
            if res.err is not None:
                sys.exit(f"echo failed: {res.err!r}")
            reply = bytes(res.buff)
        elif res.context == "eof":
            if not isinstance(res.err, EOFError):
                sys.exit(f"expected EOF after the half-close, got {res.err!r}")
        elif res.err is not None:
            sys.exit(f"{res.context} failed: {res.err!r}")
    print(reply.decode(errors="replace"))
    sys.exit(0 if reply == message else 1)
