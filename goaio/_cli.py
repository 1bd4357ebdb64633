"""``python -m goaio``: an echo server on goaio (the README's example, complete), and the bench.

    python -m goaio echo [--host 127.0.0.1] [--port 8110] [--workers N] [--share-buff]
                         [--recv-timeout S] [--buffer-size B] [--quiet]
                         [--tls CERT KEY [--alpn PROTO ...] [--ssl-handshake-timeout S]]
    python -m goaio bench [--conns N] [--size B] [--seconds S] [--servers a,b,...]
                          [--idle N] [--tls | --tls-handshake] [--plot out.png] [--json out.json] ...

Exit status: 0 on success, also when the echo server is stopped by SIGINT
(Ctrl-C) or SIGTERM -- stopping is how a server ends, not a failure; 1 when
the server cannot start or a bench run fails (a wrong byte, a lost
connection); 2 for a usage error.
"""

import argparse
import signal
import socket
import sys
import threading

_RECV = "recv"  # the context of a receive; a send's context is its buffer


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _port(text):
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0..65535, got {value}")
    return value


def _positive_float(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _non_negative_float(text):
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


# --------------------------------------------------------------------------
# echo


def _raise_nofile_limit():
    """A server of many connections wants every fd it may have (Go's runtime
    raises the soft limit the same way)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY:
            hard = max(soft, 1 << 20)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


class _Accept:
    """The context of the accepts posted on the listener (one object, so
    ``res.context is ACCEPT`` tells an accept's completion)."""

    __slots__ = ()

    def __repr__(self):
        return "ACCEPT"


ACCEPT = _Accept()
#: accepts kept pending on the listener: each completion posts the next one,
#: so a burst of clients is taken without a round of the loop per client
PENDING_ACCEPTS = 64


_WAKE = "wake"  # the context of the receive on the signal wake-up socket


def _serve(svc, ln, pool, args, stopping, goaio):
    """The one loop of the server: collect completions and answer each.

    - an accept: post the new connection's first receive, post the next accept;
    - a receive: send back what it brought (the buffer is the send's context);
    - a send: post the next receive (in share-buffer mode the buffer first
      goes back to the pool).
    Returns when a signal has asked to stop or the service is closed.
    """
    warned_accept = False
    tls = args.tls is not None
    for _ in range(PENDING_ACCEPTS):
        ln.accept(ACCEPT)
    size = args.buffer_size
    while not stopping:
        try:
            batch = svc.get_complete_statuses(256)  # no timeout: a signal wakes it
        except goaio.ServiceClosed:
            return
        for res in batch:
            ctx = res.context
            try:
                # the two completions of every round trip first, with the
                # fewest tests: a receive's data goes back; a send's buffer
                # takes the next receive (or goes back to the pool first)
                if res.err is None:
                    if ctx is _RECV:
                        buff = res.buff
                        res.conn.send(buff, buff, nbytes=res.bytes_transferred)
                        continue
                    if ctx is not ACCEPT and ctx is not _WAKE:
                        if pool is not None:
                            pool.release(ctx)
                            res.conn.recv(_RECV, None)
                        else:
                            res.conn.recv(_RECV, ctx)
                        continue
                if ctx is _WAKE:
                    continue  # a signal handler asked to stop: ``stopping`` is set
                conn = res.conn
                if ctx is ACCEPT:
                    if res.err is not None:
                        if isinstance(res.err, (goaio.ConnClosed, goaio.ServiceClosed)):
                            continue  # the listener is closing
                        if tls and _is_handshake_failure(res.err):
                            # one client's failed or timed-out handshake: its
                            # socket is closed already, the listener goes on
                            if not args.quiet:
                                print(f"goaio echo: TLS handshake failed: {res.err!r}",
                                      file=sys.stderr, flush=True)
                            ln.accept(ACCEPT)
                            continue
                        # EMFILE & co.: goaio pauses the listener by itself
                        # (no thread spins); the accept is posted again
                        if not warned_accept and not args.quiet:
                            print(f"goaio echo: accept: {res.err}; accepting resumes when it can",
                                  file=sys.stderr, flush=True)
                            warned_accept = True
                    else:
                        if args.recv_timeout:
                            conn.set_recv_timeout(args.recv_timeout)
                        conn.recv(_RECV, None if pool is not None else bytearray(size))
                    ln.accept(ACCEPT)
                    continue
                # a failed receive or send
                if pool is not None and ctx is not _RECV:
                    pool.release(ctx)  # a failed send's pool buffer
                if not args.quiet and not isinstance(res.err, (EOFError, goaio.ConnClosed)):
                    print(f"goaio echo: closing connection fd={conn.fd}: {res.err!r}",
                          file=sys.stderr, flush=True)
                conn.close()
            except goaio.ServiceClosed:
                return
            except goaio.Error:  # closed meanwhile (connection or listener)
                conn = res.conn
                if conn is not None and ctx is not ACCEPT:
                    conn.close()


def _is_handshake_failure(err):
    """An accept's error that is one client's TLS handshake (failed, or timed
    out), not the listener's: the next accept is simply posted."""
    import ssl

    return isinstance(err, (ssl.SSLError, TimeoutError, ConnectionError, EOFError))


def _tls_context(args):
    """The server's ssl.SSLContext from --tls CERT KEY (and --alpn), or a
    message saying why it cannot be made."""
    import ssl

    import os

    cert, key = args.tls
    for what, path in (("certificate", cert), ("key", key)):
        if not os.path.isfile(path):
            return None, f"cannot load the TLS {what}: no such file: {path!r}"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        return None, f"cannot load the TLS certificate {cert!r} and key {key!r}: {exc}"
    if args.alpn:
        ctx.set_alpn_protocols(args.alpn)
    return ctx, None


def _serve_on_thread(svc, ln, pool, args, stopping, goaio):
    """--loop-thread: the same loop on a thread of its own, the main thread
    only waiting for it to end (the signal handlers run here, between its
    waits). The pure backend's main thread never runs the poll round, so a
    collector elsewhere polls itself instead of being handed every batch."""
    failed = []

    def run():
        try:
            _serve(svc, ln, pool, args, stopping, goaio)
        except BaseException as exc:  # re-raised on the main thread
            failed.append(exc)

    loop = threading.Thread(target=run, name="goaio-echo-loop", daemon=True)
    loop.start()
    while loop.is_alive():
        loop.join(0.1)
    if failed:
        raise failed[0]


def cmd_echo(args):
    import goaio

    _raise_nofile_limit()
    tls_options = {}
    if args.tls is not None:
        ctx, why = _tls_context(args)
        if ctx is None:
            print(f"goaio echo: {why}", file=sys.stderr)
            return 1
        tls_options["ssl"] = ctx
        if args.ssl_handshake_timeout is not None:
            tls_options["ssl_handshake_timeout"] = args.ssl_handshake_timeout
    elif args.alpn or args.ssl_handshake_timeout is not None:
        print("goaio echo: --alpn and --ssl-handshake-timeout need --tls CERT KEY", file=sys.stderr)
        return 2
    svc = goaio.AIOService(args.workers)
    pool = goaio.BufferPool(args.buffer_size) if args.share_buff else None
    try:
        ln = svc.listen((args.host, args.port), backlog=4096, **tls_options,
                        **({"share_buff": pool} if pool is not None else {}))
    except OSError as exc:
        svc.close()
        print(f"goaio echo: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    except (TypeError, ValueError) as exc:  # a backend without TLS, a bad option value
        svc.close()
        print(f"goaio echo: cannot listen with TLS: {exc}", file=sys.stderr)
        return 1
    host, port = ln.address[:2]

    # SIGINT and SIGTERM stop the server. The loop waits for completions
    # with no timeout; goaio runs Python signal handlers while it waits (within
    # 100 ms, on every backend). The handler raises no exception (one raised
    # inside the service's own code could leave it half-way through its
    # bookkeeping): it sets the flag and writes a byte to a socket pair whose
    # other end has a receive posted, so the wait returns and the loop ends.
    stopping = []
    wake_r, wake_w = socket.socketpair()
    wake_w.setblocking(False)
    svc.bind(wake_r).recv(_WAKE, bytearray(16))

    def on_signal(signum, _frame):
        stopping.append(signum)
        try:
            wake_w.send(b"\0")
        except OSError:  # full (already woken) or closed: the flag is enough
            pass

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    mode = (", TLS" if tls_options else "") + (", share buffers" if pool is not None else "")
    print(f"goaio echo server (backend {goaio.BACKEND}{mode}) listening on {host}:{port}", flush=True)
    try:
        if args.loop_thread:
            _serve_on_thread(svc, ln, pool, args, stopping, goaio)
        else:
            _serve(svc, ln, pool, args, stopping, goaio)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        svc.close()  # closes the listener, every connection, gives buffers back
        wake_w.close()
    if not args.quiet:
        name = signal.Signals(stopping[0]).name if stopping else "service closed"
        print(f"goaio echo server stopped ({name})", file=sys.stderr, flush=True)
    return 0


# --------------------------------------------------------------------------
# argument parsing


def build_parser():
    ap = argparse.ArgumentParser(prog="python -m goaio", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", metavar="{echo,bench}")
    sub.required = True

    echo = sub.add_parser("echo", help="run an echo server on goaio (the README's example, complete)",
                          description="An echo server on goaio with no thread of its own: it listens "
                          "with svc.listen, keeps accepts posted, and its one loop collects "
                          "completions: an accepted connection gets a receive, a receive is "
                          "sent back, a finished send posts the next receive. "
                          "SIGINT/SIGTERM stop it cleanly (exit status 0).")
    echo.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    echo.add_argument("--port", type=_port, default=8110, help="port (default 8110; 0 picks a free one)")
    echo.add_argument("--workers", type=_non_negative_int, default=1,
                      help="IO threads of the service (default 1; 0 means 1)")
    echo.add_argument("--share-buff", action="store_true",
                      help="receive with recv(ctx, None) from a shared BufferPool, so idle "
                      "connections hold no receive buffer")
    echo.add_argument("--recv-timeout", type=_non_negative_float, default=None, metavar="S",
                      help="set_recv_timeout(S) on every connection: one whose receive does not "
                      "complete within S seconds is closed (default: none)")
    echo.add_argument("--buffer-size", type=_positive_int, default=65536, metavar="B",
                      help="receive buffer size (default 65536)")
    echo.add_argument("--quiet", "-q", action="store_true", help="do not report connection errors")
    echo.add_argument("--loop-thread", action="store_true",
                      help="run the collecting loop on a thread of its own, the main thread waiting "
                      "for signals (the pure backend's main thread never polls, so this spares it "
                      "the hand-over of every batch; see the README, 'Choosing the backend')")
    echo.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"), default=None,
                      help="serve TLS: the certificate chain and private key files (PEM); "
                      "goaio runs the handshake and the records, the echo sees plaintext")
    echo.add_argument("--alpn", action="append", default=None, metavar="PROTO",
                      help="with --tls: an ALPN protocol to offer (repeatable)")
    echo.add_argument("--ssl-handshake-timeout", type=_positive_float, default=None, metavar="S",
                      help="with --tls: a client whose handshake takes longer than S seconds is "
                      "dropped (default: goaio's, 60)")
    echo.set_defaults(func=cmd_echo)

    bench = sub.add_parser("bench", help="compare echo servers on goaio and its peers",
                           description="Runs each echo server in its own process, drives it with a "
                           "closed-loop client (in C when a compiler is found, else in Python), and "
                           "prints a table. Loopback only.")
    bench.add_argument("--conns", type=_positive_int, default=50, help="connections (default 50)")
    bench.add_argument("--size", type=_positive_int, default=64, help="message size in bytes (default 64)")
    bench.add_argument("--seconds", type=_non_negative_float, default=3.0, help="measured seconds per server (default 3)")
    bench.add_argument("--warmup", type=_non_negative_float, default=0.5,
                       help="uncounted seconds before measuring (default 0.5)")
    bench.add_argument("--rounds", type=_positive_int, default=1,
                       help="runs per server, interleaved across servers; the median is shown (default 1)")
    bench.add_argument("--servers", default=None,
                       help="comma-separated list (default: every one available); "
                       "names: see --list")
    bench.add_argument("--list", action="store_true", help="list the servers and whether each is available")
    bench.add_argument("--client", choices=("auto", "c", "python"), default="auto",
                       help="load client (default auto: C if a compiler is found)")
    bench.add_argument("--client-procs", type=_positive_int, default=1,
                       help="client processes sharing the connections (default 1)")
    bench.add_argument("--workers", type=_non_negative_int, default=1,
                       help="workers of the goaio servers (default 1)")
    bench.add_argument("--no-pin", dest="pin", action="store_false",
                       help="do not pin the server to CPU 0 and the client to CPU 1")
    bench.add_argument("--idle", type=int, default=0, metavar="N",
                       help="also measure each server's RSS per idle connection with N connections "
                       "(on a fresh server process; ulimit -n must allow N)")
    bench.add_argument("--accept-storm", type=_positive_int, default=None, metavar="N",
                       help="instead of the echo load: a C client opens N connections, --conns at a "
                       "time (closed loop), each doing one round trip of --storm-size bytes, against "
                       "each server (default goaio-epoll,goaio-pure,uvloop,asyncio,c-epoll); "
                       "prints connections/s and the server's CPU time per connection")
    bench.add_argument("--connect-storm", type=_positive_int, default=None, metavar="N",
                       help="instead of the echo load: N connections, --conns at a time, each one "
                       "round trip, made by goaio svc.connect (each backend) and by asyncio/uvloop "
                       "create_connection against one C epoll echo server; prints connections/s "
                       "and the client's CPU time per connection")
    bench.add_argument("--storm-size", type=_non_negative_int, default=16, metavar="B",
                       help="bytes of the one round trip of each storm connection (0: none; default 16)")
    bench.add_argument("--tls", action="store_true",
                       help="the TLS rows: the echo servers on an ssl.SSLContext (goaio's echo --tls, "
                       "asyncio and uvloop create_server(ssl=)), driven by the bench's C TLS client "
                       "(needs a C compiler, OpenSSL headers and the openssl command for the "
                       "certificate); with --idle, idle TLS connections")
    bench.add_argument("--tls-handshake", action="store_true",
                       help="like --tls, but every round trip on a new connection with a full "
                       "handshake: rps is handshakes/s")
    bench.add_argument("--http", action="store_true",
                       help="instead of the echo load: wrk -t2 -c--conns (default 50) against "
                       "examples/http_server.py on goaio (epoll, pure) and its asyncio/uvloop twin "
                       "(goaio/_bench/http_peers.py); prints rps and the server's CPU time per request "
                       "(needs wrk; --servers from goaio-epoll,goaio-pure,asyncio,uvloop)")
    bench.add_argument("--plot", metavar="FILE.png", help="draw a bar chart (needs matplotlib)")
    bench.add_argument("--json", metavar="FILE.json", help="write the raw figures")
    bench.set_defaults(func=_cmd_bench)
    return ap


def _cmd_bench(args):
    if args.http:
        from ._bench import http_measure

        args.threads = 2
        return http_measure.run(args)
    from ._bench import harness

    return harness.main(args)


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 0 if args.command == "echo" else 130
    except BrokenPipeError:
        return 0
