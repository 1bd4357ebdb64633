"""A TLS client on goaio: connect (the handshake is part of it), send, read the
echo, close_notify.

    python examples/tls_echo_client.py CAFILE [HOST [PORT [MESSAGE]]]   (default 127.0.0.1 8443)

The server's certificate is verified against CAFILE (for the self-signed
certificate of the examples, that certificate itself) and its name against
"localhost". Exits 0 when the echo matched.
"""

import ssl
import sys

import goaio

if len(sys.argv) < 2:
    sys.exit(__doc__.strip().splitlines()[3].strip())
ctx = ssl.create_default_context(cafile=sys.argv[1])      # verifies the certificate and the name
host = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
port = int(sys.argv[3]) if len(sys.argv) > 3 else 8443
message = (sys.argv[4] if len(sys.argv) > 4 else "hello over TLS").encode()

with goaio.AIOService() as svc:
    svc.connect("connect", (host, port), timeout=5, ssl=ctx, server_hostname="localhost")
    res = svc.get_complete_status(timeout=15)
    if res is None or res.err is not None:   # ConnectionRefusedError, SSLCertVerificationError...
        sys.exit(f"cannot connect to {host}:{port}: {'no answer' if res is None else repr(res.err)}")
    conn = res.conn
    print(f"{conn.tls.version()} {conn.tls.cipher()[0]}", file=sys.stderr)

    conn.send("send", message)
    conn.recv_full("echo", bytearray(len(message)))     # across records: completes when all is back
    conn.shutdown("shutdown")                           # close_notify, then the half-close
    reply = None
    for _ in range(3):
        res = svc.get_complete_status(timeout=10)
        if res is None:
            sys.exit("no answer within 10 s")
        if res.err is not None:
            sys.exit(f"{res.context} failed: {res.err!r}")
        if res.context == "echo":
            reply = bytes(res.buff)
    print(reply.decode(errors="replace"))
    sys.exit(0 if reply == message else 1)
