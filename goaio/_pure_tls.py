"""TLS in the pure backend: an ``ssl.SSLObject`` on two ``MemoryBIO``s
between a connection's plaintext operations and its socket.

A TLS connection is a plain :class:`goaio._pure.AIOConn` whose ``_tls`` is a
:class:`Layer`. The plain code hands its IO over to the layer in a few hooks
(``_run_recvs``, ``_run_sends``, ``_want``, the poller's events, ``close``);
everything else -- the queues, their limits, timeouts, cancel, close, the
results and the counters -- is the plain connection's own, so TLS behaves as
plain does. Every method here runs with the connection's lock held, except
those named ``on_*`` / ``*_unlocked``, which take it.

Phases: ``WAITING`` (a ``start_tls`` waits behind the sends posted before it;
those are written in plaintext by the plain code, receives wait), then
``HANDSHAKE``, then ``OPEN``, or ``FAILED`` (the handshake's error completes
every operation, pending or later).

Memory: the encrypted input is read into a per-thread scratch buffer and
handed to the incoming BIO at once, so an idle connection holds no receive
buffer of its own; the incoming BIO empties as OpenSSL consumes whole
records; the encrypted output of at most one batch (``SEND_BATCH`` bytes of
plaintext) waits in ``_wbuf`` while the socket is full, and nothing once it
is written.

Sends: plaintext is encrypted only when the previous batch is written, so
the only ciphertext not on the wire is that one batch, which goaio writes
before any later byte. A send's ``done`` counts the plaintext committed to
records; a send timeout (or a cancel) reports it: whole records, all of
which reach the peer ahead of anything sent later.

EOF: a TCP EOF at a record boundary of the input (``RecordFraming``) is a
clean EOF (``EOFError``); one inside a record is the ``ssl.SSLEOFError``
``ssl`` raised. A peer's close_notify is ``EOFError``.

Callbacks (a listener's or a connect's "handshake done") never run with the
connection's lock held: they are queued in ``_later`` and run by the
``on_*`` entry points after the lock is released, or from a timer.
"""

import socket
import ssl
import threading
import weakref
from time import monotonic

from . import _messages as M
from ._errors import ServiceClosed, ConnClosed, oserror
from ._tls import (MAX_PLAINTEXT_RECORD, RecordFraming, TLSInfo, check_start_tls,
                   eof_in_record_error, handshake_timeout_error)

__all__ = ["Layer", "attach", "start_tls", "START_TLS", "drop_start"]

#: the op kind of a start_tls waiting in the send queue (recv 0/1, send 2, shutdown 3)
START_TLS = 4
_SEND = 2
_SHUTDOWN = 3
_RECV = 0

WAITING, HANDSHAKE, OPEN, FAILED = range(4)

#: plaintext encrypted per socket write (four full records)
SEND_BATCH = 4 * MAX_PLAINTEXT_RECORD
#: bytes read from the socket per call (into the thread's scratch buffer)
READ_CHUNK = 65536

_MSG_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)
from ._purepoll import ERR as _ERR, HUP as _HUP, READ as _READ, WRITE as _WRITE  # noqa: E402

_IN_EV = _READ | _HUP | _ERR     # as _pure's: a read is worth trying
_OUT_EV = _WRITE | _ERR
_HUP_EV = _HUP | _ERR
_local = threading.local()


def _scratch():
    """This thread's buffer for encrypted input (handed to the BIO at once)."""
    mv = getattr(_local, "mv", None)
    if mv is None:
        mv = _local.mv = memoryview(bytearray(READ_CHUNK))
    return mv


def _clone(exc):
    """A fresh instance of ``exc`` for another operation (each result has its own)."""
    try:
        new = type(exc)(*exc.args)
    except Exception:  # noqa: BLE001 - an exotic class: share the instance
        return exc
    for name in ("library", "reason", "verify_code", "verify_message"):
        if hasattr(exc, name):
            try:
                setattr(new, name, getattr(exc, name))
            except AttributeError:
                pass
    return new


def _os_error(exc):
    return oserror(exc.errno) if getattr(exc, "errno", None) else exc


class Layer:
    """The TLS state of one connection (see the module's docstring)."""

    __slots__ = ("params", "obj", "inc", "out", "phase", "err", "end", "framing", "tcp_eof",
                 "wbuf", "woff", "stash", "need_read", "on_done", "start_op", "timer",
                 "later", "notify_sent", "info", "__weakref__")

    def __init__(self, params, phase, guard=None):
        self.params = params
        self.inc = ssl.MemoryBIO()
        self.out = ssl.MemoryBIO()
        self.obj = params.wrap(self.inc, self.out)
        self.info = TLSInfo(self.obj, guard)
        self.phase = phase
        self.err = None          # the handshake's error (FAILED)
        self.end = None          # (exc,) once the plaintext ended: exc None for close_notify
        self.framing = RecordFraming()
        self.tcp_eof = False     # the socket said EOF (given to the incoming BIO)
        self.wbuf = None         # ciphertext not yet written (bytes), from woff on
        self.woff = 0
        self.stash = None        # plaintext decrypted with no receive pending (memoryview)
        self.need_read = False   # the handshake waits for input
        self.on_done = None      # fn(conn, err): the handshake ended (run unlocked)
        self.start_op = None     # the start_tls op, while its handshake runs
        self.timer = None        # the handshake timeout
        self.later = []          # callbacks to run once the lock is released
        self.notify_sent = False

    # -- readiness ---------------------------------------------------------------

    def want(self, conn):
        """What a level-triggered poller watches for this connection."""
        w = _WRITE if self.wbuf is not None else 0
        phase = self.phase
        if phase == OPEN:
            if conn._recvq and self.stash is None:
                w |= _READ
            if conn._sendq:
                w |= _WRITE
        elif phase == HANDSHAKE:
            if self.need_read:
                w |= _READ
        elif phase == WAITING:
            if conn._sendq:
                w |= _WRITE
        return w

    # -- writing ------------------------------------------------------------------

    def _take_output(self):
        """Move what OpenSSL wrote into the outgoing BIO to ``wbuf``."""
        if self.out.pending:
            data = self.out.read()
            if self.wbuf is None:
                self.wbuf = data
                self.woff = 0
            else:
                self.wbuf = self.wbuf[self.woff:] + data
                self.woff = 0

    def _flush(self, conn):
        """Write ``wbuf``; True once it is all written. Raises OSError."""
        send = conn._send
        while self.wbuf is not None:
            if not conn._writable:
                return False
            buf = self.wbuf
            off = self.woff
            want = len(buf) - off
            try:
                n = send(memoryview(buf)[off:] if off else buf, _MSG_NOSIGNAL)
            except BlockingIOError:
                conn._writable = False
                return False
            except InterruptedError:
                continue
            if n >= want:
                self.wbuf = None
                self.woff = 0
                return True
            self.woff = off + n
            conn._writable = False
            return False
        return True

    # -- reading -------------------------------------------------------------------

    def _read_socket(self, conn):
        """Read once from the socket into the incoming BIO. Returns the bytes
        read (0 at EOF, -1 if nothing was there). Raises OSError."""
        mv = _scratch()
        while True:
            try:
                n = conn._recv_into(mv)
            except BlockingIOError:
                conn._readable = False
                return -1
            except InterruptedError:
                continue
            break
        if not n:
            self.tcp_eof = True
            if self.phase != OPEN:
                self.inc.write_eof()
            # (open: OpenSSL is not told; _read_step ends the stream when it
            # wants more. Told, it would take the EOF as a fatal error, which
            # also ends writing: a peer's half-close must leave our side
            # writable, as a plain connection's does)
            return 0
        chunk = mv[:n]
        self.framing.feed(chunk)
        self.inc.write(chunk)
        chunk.release()
        if n < READ_CHUNK and not conn._rdhup:
            conn._readable = False
        return n

    def _plain_into(self, mv):
        """Plaintext already here (stash, then OpenSSL) into ``mv``: the bytes
        given, 0 at a close_notify. Raises ssl.SSLWantReadError when it needs
        input, ssl.SSLError for a bad stream."""
        st = self.stash
        if st is not None:
            n = min(len(st), mv.nbytes)
            mv[:n] = st[:n]
            rest = st[n:]
            st.release()
            self.stash = rest if len(rest) else None
            if self.stash is None:
                rest.release()
            return n
        return self.obj.read(mv.nbytes, mv)

    def _maybe_plain(self):
        return self.stash is not None or self.inc.pending or self.obj.pending() or self.tcp_eof

    # -- the handshake ------------------------------------------------------------

    def begin(self, conn, on_done=None, start_op=None):
        """Start the handshake (lock held); the first flight goes out now."""
        self.phase = HANDSHAKE
        self.on_done = on_done
        self.start_op = start_op
        if start_op is not None:
            # out of the send queue now: the connection's pending op must
            # still keep it alive (the service holds it until the op ends)
            conn._svc._tls_starting.add(conn)
        t = self.params.handshake_timeout
        if t != float("inf"):
            ref = weakref.ref(conn)
            self.timer = conn._svc._call_later(t, lambda: _on_handshake_timeout(ref))
        return self._handshake(conn)

    def _handshake(self, conn):
        """Drive the handshake as far as the socket allows; returns results made."""
        obj = self.obj
        while True:
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                self._take_output()
                try:
                    if self.wbuf is not None and not self._flush(conn):
                        self.need_read = True
                        return 0
                    if conn._readable and not self.tcp_eof:
                        if self._read_socket(conn) != -1:
                            continue
                except OSError as exc:
                    return self._fail(conn, _os_error(exc))
                self.need_read = True
                return 0
            except ssl.SSLError as exc:
                self._take_output()
                try:     # the alert, if the socket takes it now
                    self._flush(conn)
                except OSError:
                    pass
                return self._fail(conn, exc)
            except OSError as exc:
                return self._fail(conn, _os_error(exc))
            break
        self.need_read = False
        self._take_output()
        try:
            self._flush(conn)
        except OSError as exc:
            return self._fail(conn, _os_error(exc))
        # TLS 1.3 session tickets may have come with the last flight: read
        # them now (and keep any early plaintext) so the BIO is left empty
        if self.inc.pending:
            self._drain_after_handshake()
        self.phase = OPEN
        n = self._end_handshake(conn, None)
        if conn._recvq:
            n += self.run_recvs(conn)
        if conn._sendq:
            n += self.run_sends(conn)
        return n

    def _drain_after_handshake(self):
        """Read what came with the last flight: tickets (consumed), early
        plaintext (stashed for the first receive), or the stream's end."""
        got, stop = self._read_step(_scratch())
        if got:
            self.stash = memoryview(bytes(_scratch()[:got]))

    def _end_handshake(self, conn, err):
        """The handshake ended (lock held): the timer goes, the start_tls op
        and the on_done callback learn it. Returns results made."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        n = 0
        op = self.start_op
        if op is not None:
            self.start_op = None
            conn._svc._tls_starting.discard(conn)
            conn._finish(op, 0, err)
            n = 1
        cb = self.on_done
        if cb is not None:
            self.on_done = None
            self.later.append(lambda: cb(conn, err))
        return n

    def _fail(self, conn, err):
        """The handshake failed: every operation, pending or later, gets err."""
        self.phase = FAILED
        self.err = err
        self.need_read = False
        n = self._end_handshake(conn, err)
        return n + self._fail_all(conn)

    def _fail_all(self, conn):
        n = 0
        for q in (conn._recvq, conn._sendq):
            ops = q[:]
            q.clear()
            for op in ops:
                if op.kind == _SHUTDOWN:
                    conn._shut = 0
                conn._finish(op, op.done, _clone(self.err))
            n += len(ops)
        return n

    def timed_out(self, conn):
        """The handshake timeout fired (lock held)."""
        self.timer = None
        if self.phase != HANDSHAKE:
            return 0
        return self._fail(conn, handshake_timeout_error())

    # -- receives -------------------------------------------------------------------

    def run_recvs(self, conn):
        """Serve pending receives with plaintext; returns results made."""
        phase = self.phase
        if phase != OPEN:
            if phase == FAILED:
                return self._fail_all(conn)
            return 0
        rq = conn._recvq
        count = 0
        while rq:
            op = rq[0]
            if self.end is not None or self._maybe_plain():
                r = self._serve(conn, op)
                if r > 0:
                    count += 1
                    continue
                if r < 0:   # EOF or error: every receive completed
                    return count + (-r - 1)
            if not conn._readable:
                break
            try:
                got = self._read_socket(conn)
            except OSError as exc:
                rq.pop(0)
                conn._finish(op, op.done, _os_error(exc))
                return count + 1 + conn._fail_recvs_error(exc)
            if got == -1:
                break
        self._take_output()   # a key update or alert OpenSSL answered while reading
        if self.wbuf is not None:
            try:
                self._flush(conn)
            except OSError:
                pass   # the next send reports it
        return count

    def _read_step(self, view):
        """Plaintext into ``view``: (bytes, None) or (0, "want") when input is
        needed, or (0, "end") once the stream ended (``self.end`` says how)."""
        try:
            n = self._plain_into(view)
        except ssl.SSLWantReadError:
            if self.tcp_eof:
                # nothing more will come (see _read_socket): EOFError at a
                # record boundary, this error inside one (_end_recvs)
                self.end = (eof_in_record_error(),)
                return 0, "end"
            return 0, "want"
        except ssl.SSLZeroReturnError:
            self.end = (None,)
            return 0, "end"
        except ssl.SSLError as exc:
            self.end = (exc,)
            return 0, "end"
        if not n:   # close_notify (ssl returns b'' when only the peer's was seen)
            self.end = (None,)
            return 0, "end"
        return n, None

    def _end_recvs(self, conn):
        """The plaintext ended (``self.end``): a close_notify, a TCP EOF at a
        record boundary -> EOFError (sticky, as plain); an EOF inside a
        record or a bad record -> that ssl.SSLError, for every receive
        pending and later. Returns -(results + 1)."""
        exc = self.end[0]
        if exc is None or (isinstance(exc, ssl.SSLEOFError) and self.framing.at_boundary):
            return -(conn._fail_recvs_eof() + 1)
        rq = conn._recvq
        ops = rq[:]
        rq.clear()
        for op in ops:      # each its own instance; self.end keeps the first
            conn._finish(op, op.done, _clone(exc))
        return -(len(ops) + 1)

    def _serve(self, conn, op):
        """Decrypt what is buffered into the head receive ``op``.

        Returns 1 when ``op`` completed, 0 when it needs more input (its
        progress kept), -(n + 1) when the stream's end completed n receives.
        """
        if self.end is not None:
            return self._end_recvs(conn)
        if op.mv is None:
            return self._serve_new_buffer(conn, op)
        done = op.done
        iov = op.iov
        total = op.total
        stop = None
        while done < total:
            if iov is None:
                mv = op.mv
                view = mv[done:] if done else mv
                try:
                    n, stop = self._read_step(view)
                finally:
                    if done:
                        view.release()
            else:
                n, stop = self._read_step(op.iov[0])
            if n:
                done += n
                if iov is not None and done < total:
                    _advance_iov(op, n)
            if stop is not None:
                break
            if op.kind == _RECV and not self._maybe_plain():
                break
        if done >= total or (done and op.kind == _RECV):
            conn._recvq.pop(0)
            conn._finish(op, done, None)
            return 1
        op.done = done
        if stop == "end":
            return self._end_recvs(conn)
        return 0

    def _serve_new_buffer(self, conn, op):
        """recv(ctx, None): a buffer is taken only once plaintext is here."""
        from ._pure import AIOResult

        try:
            b, mv, pooled = conn._take_buffer()
        except BaseException as exc:  # noqa: BLE001 - the receive's result
            conn._recvq.pop(0)
            conn._finish(op, 0, exc)
            return 1
        total = mv.nbytes
        done = 0
        stop = None
        try:
            while done < total:
                view = mv[done:] if done else mv
                try:
                    n, stop = self._read_step(view)
                finally:
                    if done:
                        view.release()
                done += n
                if stop is not None or not self._maybe_plain():
                    break
        finally:
            mv.release()
        if not done:
            if pooled is not None:
                conn._give_back(pooled)
            if stop == "end":
                return self._end_recvs(conn)
            return 0
        conn._recvq.pop(0)
        op.buff = b
        op.conn = None
        conn._nops += 1
        conn._brecv += done
        res = AIOResult(conn, op.ctx, b, done, None)
        if pooled is not None:
            conn._svc._pooled[id(res)] = res
        conn._q_append(res)
        return 1

    # -- sends -------------------------------------------------------------------------

    def run_sends(self, conn):
        """Encrypt and write pending sends (and a shutdown); returns results made."""
        phase = self.phase
        if phase != OPEN:
            if phase == FAILED:
                return self._fail_all(conn)
            if phase == HANDSHAKE and self.wbuf is not None:
                return self._handshake(conn)
            return 0
        sq = conn._sendq
        count = 0
        while True:
            if self.wbuf is not None:
                try:
                    if not self._flush(conn):
                        return count
                except OSError as exc:
                    return count + self._send_failed(conn, exc)
            # every head send whose records are all written completes
            while sq:
                op = sq[0]
                if op.kind != _SEND or not op.total or op.done < op.total:
                    break
                sq.pop(0)
                conn._finish(op, op.total, None)
                count += 1
            if not sq:
                return count
            op = sq[0]
            if op.kind == _SHUTDOWN:
                r = self._shutdown_step(conn, op)
                if r < 0:
                    continue      # close_notify to write first
                return count + r
            if not op.total:
                from ._pure import EmptyBuffer
                sq.pop(0)
                conn._finish(op, 0, EmptyBuffer(M.EMPTY_SEND))
                count += 1
                continue
            if not conn._writable:
                return count
            try:
                self._encrypt_batch(sq)
            except ssl.SSLError as exc:
                op = sq.pop(0)
                conn._finish(op, op.done, exc)
                count += 1
                continue
            self._take_output()

    def fast_ok(self, total):
        """May a send skip the queue? (lock held; the queue is empty and the
        socket writable): an open stream with nothing waiting to be written."""
        return self.phase == OPEN and self.wbuf is None and total <= SEND_BATCH

    def fast_send(self, conn, context, buff, mv, total):
        """Encrypt all of a small send and write it now. Returns -1 when it
        completed (its result queued, ``mv`` released), else the plaintext
        committed (the rest of its ciphertext waits in wbuf: the caller
        queues the send with that ``done``, and it completes once written)."""
        from ._pure import AIOResult

        try:
            if total <= MAX_PLAINTEXT_RECORD:
                self.obj.write(mv)
            else:
                for i in range(0, total, MAX_PLAINTEXT_RECORD):
                    view = mv[i:i + MAX_PLAINTEXT_RECORD]
                    try:
                        self.obj.write(view)
                    finally:
                        view.release()
        except ssl.SSLError as exc:
            mv.release()
            conn._nops += 1
            conn._q_append(AIOResult(conn, context, buff, 0, exc))
            return -1
        data = self.out.read()
        try:
            while True:
                try:
                    n = conn._send(data, _MSG_NOSIGNAL)
                except InterruptedError:
                    continue
                break
        except BlockingIOError:
            n = 0
        except OSError as exc:
            mv.release()
            conn._nops += 1
            conn._q_append(AIOResult(conn, context, buff, 0, _os_error(exc)))
            return -1
        if n >= len(data):
            mv.release()
            conn._nops += 1
            conn._bsent += total
            conn._q_append(AIOResult(conn, context, buff, total, None))
            return -1
        self.wbuf = data
        self.woff = n
        conn._writable = False
        return total

    def _encrypt_batch(self, sq):
        """Commit up to SEND_BATCH plaintext bytes of the head sends to records."""
        write = self.obj.write
        budget = SEND_BATCH
        for op in sq:
            if op.kind != _SEND or not op.total:
                return
            while op.done < op.total:
                if budget <= 0:
                    return
                if op.iov is None:
                    k = op.total - op.done
                    if k > MAX_PLAINTEXT_RECORD:
                        k = MAX_PLAINTEXT_RECORD
                    if k > budget:
                        k = budget
                    mv = op.mv
                    view = mv[op.done:op.done + k] if (op.done or k < op.total) else mv
                    try:
                        write(view)
                    finally:
                        if view is not mv:
                            view.release()
                else:
                    k = self._write_gather(op, min(MAX_PLAINTEXT_RECORD, budget))
                op.done += k
                budget -= k

    def _write_gather(self, op, limit):
        """One record of a gather send: the head views' bytes up to ``limit``
        (small views joined, so a list of small parts is not one record
        each). Returns the plaintext bytes committed."""
        parts = []
        k = 0
        for m in op.iov:
            take = m.nbytes if m.nbytes <= limit - k else limit - k
            parts.append(m[:take] if take < m.nbytes else m)
            k += take
            if k >= limit:
                break
        try:
            self.obj.write(parts[0] if len(parts) == 1 else b"".join(parts))
        finally:
            for p, m in zip(parts, op.iov):
                if p is not m:
                    p.release()
        if op.done + k < op.total:
            _advance_iov(op, k)
        return k

    def _send_failed(self, conn, exc):
        """Writing failed: the stream is broken; every pending send gets the error."""
        self.wbuf = None
        err = _os_error(exc)
        sq = conn._sendq
        ops = sq[:]
        sq.clear()
        for op in ops:
            if op.kind == _SHUTDOWN:
                conn._shut = 0
            conn._finish(op, op.done, oserror(exc.errno) if getattr(exc, "errno", None) else err)
        return len(ops)

    def _shutdown_step(self, conn, op):
        """The shutdown is at the head: close_notify, then SHUT_WR. Returns the
        results made, or -1 when close_notify waits in wbuf to be written."""
        from ._pure_ops import run_shutdown

        if conn._shut_err is None and not self.notify_sent:
            self.notify_sent = True
            try:
                self.obj.unwrap()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                conn._shut_err = exc
            self._take_output()
            if self.wbuf is not None:
                return -1
        conn._sendq.pop(0)
        run_shutdown(conn, op)
        return 1

    # -- closing ----------------------------------------------------------------------

    def closed(self, conn, reason):
        """The connection closed (lock held): the handshake, if running, ends
        with the close's reason; no buffer is kept."""
        n = 0
        if self.phase in (HANDSHAKE, WAITING):
            self.phase = FAILED
            self.err = ConnClosed(M.CONN_CLOSED) if reason is None else reason
            n = self._end_handshake(conn, self.err)
        elif self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.wbuf = None
        self.stash = None
        return n

    def run_later(self):
        """Run the callbacks queued while the lock was held (lock NOT held)."""
        while self.later:
            fn = self.later.pop(0)
            fn()


class _NoGuard:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_NO_GUARD = _NoGuard()


def _guard_of(conn):
    """TLSInfo's guard: the connection's lock (IO on the SSLObject runs under
    it), except inside a share_buff callback, which may run with that very
    lock held by this thread."""
    lock = conn._lock
    from ._pure import _in_callback

    def guard():
        return _NO_GUARD if _in_callback() else lock

    return guard


def _advance_iov(op, n):
    from ._pure import _advance
    _advance(op, n)


# --- entry points (they take the connection's lock) ---------------------------------

def attach(conn, params, on_done=None):
    """Make ``conn`` (just bound, nothing posted) a TLS connection and start
    its handshake. ``on_done(conn, err)`` runs once the handshake ended,
    never inside this call (a 0-delay timer runs it if it ended at once)."""
    svc = conn._svc
    with conn._lock:
        if conn._closed:
            raise ConnClosed(M.CONN_CLOSED)
        layer = Layer(params, HANDSHAKE, _guard_of(conn))
        conn._tls = layer
        n = layer.begin(conn, on_done)
        if conn._level:
            conn._want()
        later = layer.later[:]
        layer.later.clear()
    for fn in later:
        svc._call_later(0, fn)
    if n:
        svc._results_ready()
    return layer


def start_tls(conn, context, ssl_ctx, server_side, server_hostname, ssl_handshake_timeout, new_op):
    """``conn.start_tls(context, ssl, ...)``: upgrade once the sends posted
    before it are written; receives wait from now on."""
    params = check_start_tls(ssl_ctx, server_side, server_hostname, ssl_handshake_timeout)
    svc = conn._svc
    if svc._closed:
        raise ServiceClosed(M.SERVICE_CLOSED)
    n = 0
    with conn._lock:
        if conn._closed:
            raise ConnClosed(M.CONN_CLOSED)
        if conn._tls is not None:
            raise ValueError(M.TLS_ALREADY)
        if conn._shut:
            raise BrokenPipeError(M.TLS_AFTER_SHUTDOWN)
        sq = conn._sendq
        from ._errors import Busy
        if len(sq) >= conn._sq_max:
            raise Busy(M.SENDQ_FULL)
        layer = Layer(params, WAITING, _guard_of(conn))
        op = new_op(conn, context)
        conn._tls = layer
        sq.append(op)
        conn._activate()
        if len(sq) == 1:
            n = conn._run_sends()
        if conn._sto and op.conn is not None and op in sq:
            svc._arm(op, monotonic() + conn._sto)
        if conn._level:
            conn._want()
    layer.run_later()
    if n:
        svc._results_ready()


def begin_start(conn, op):
    """The plain code reached the start_tls op at the head of the send queue
    (lock held, op popped): start the handshake. Returns results made."""
    layer = conn._tls
    return layer.begin(conn, None, op)


def drop_start(conn):
    """A start_tls left the send queue before its turn (a send timeout, a
    cancel): the connection stays plain (lock held)."""
    layer = conn._tls
    if layer is not None and layer.phase == WAITING:
        conn._tls = None


def on_event(conn, ev):
    """The poller's report for a TLS connection."""
    svc = conn._svc
    with conn._lock:
        layer = conn._tls
        if conn._closed or layer is None:
            return
        if ev & _IN_EV:
            conn._readable = True
            if ev & _HUP_EV:
                conn._rdhup = True
        if ev & _OUT_EV:
            conn._writable = True
        phase = layer.phase
        if phase == HANDSHAKE:
            layer._handshake(conn)
        elif phase == WAITING:
            if conn._sendq:
                conn._run_sends()
        else:
            if conn._recvq:
                layer.run_recvs(conn)
            if conn._sendq or layer.wbuf is not None:
                layer.run_sends(conn)
        conn._deactivate_if_idle()
        if conn._level:
            conn._want()
        later = layer.later[:]
        layer.later.clear()
    for fn in later:
        fn()


def _on_handshake_timeout(ref):
    conn = ref()
    if conn is None:
        return
    with conn._lock:
        layer = conn._tls
        if conn._closed or layer is None:
            return
        n = layer.timed_out(conn)
        conn._deactivate_if_idle()
        if conn._level:
            conn._want()
        later = layer.later[:]
        layer.later.clear()
    for fn in later:
        fn()
    if n:
        conn._svc._results_ready()


def close_notify_seen(conn):
    """goaio.aio's TLS transport: True once the peer's close_notify was read
    on ``conn`` (the compiled backends' ``_tls_close_notify_seen``)."""
    layer = conn._tls
    return layer is not None and layer.end is not None and layer.end[0] is None
