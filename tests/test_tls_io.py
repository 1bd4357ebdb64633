"""TLS data transfer (SPEC "TLS"): plaintext ops over records, EOF rules,
corrupt records, send timeouts on record boundaries, share buffers, stats.

Peers are Python's ssl module: blocking ssl sockets in threads, or
SSLObject + MemoryBIO over a plain socket (tls_support.BioPeer) where the
test must control the encrypted bytes."""

import random
import socket
import ssl
import time

import pytest

import goaio
from goaio import _messages as M
from support import WAIT, assert_no_result, collect, collect_one
from tls_support import BioPeer, InThread, handshaken, recv_exactly_ssl, tls_server_pair


def bio_pair(svc, pairs, certs, goaio_server=True, **bind_opts):
    """goaio on one end, a BioPeer (controls the ciphertext) on the other."""
    to_bind, peer = pairs(**({"small": bind_opts.pop("small")} if "small" in bind_opts else {}))
    if goaio_server:
        conn = pairs.keep(svc.bind(to_bind, ssl=certs.server_context(), server_side=True, **bind_opts))
        bio = BioPeer(peer, certs.client_context(), server_hostname="localhost")
    else:
        conn = pairs.keep(svc.bind(to_bind, ssl=certs.client_context(), server_hostname="localhost",
                                   **bind_opts))
        bio = BioPeer(peer, certs.server_context(), server_side=True)
    bio.handshake()
    handshaken(conn)
    return conn, bio


# --- bulk transfers --------------------------------------------------------------------

@pytest.mark.parametrize("goaio_server", [True, False], ids=["goaio-server", "goaio-client"])
def test_mib_both_ways_random_chunks(svc, pairs, tls_certs, goaio_server):
    rnd = random.Random(11)
    size = 3 << 20
    out_data = rnd.randbytes(size)
    in_data = rnd.randbytes(size)
    conn, bio = bio_pair(svc, pairs, tls_certs, goaio_server=goaio_server)
    th = InThread(bio.duplex, in_data, size)
    # goaio: sends in random chunks (some as gather lists), receives in random sizes
    i = 0
    nsend = 0
    while i < size:
        n = rnd.randint(1, 150000)
        chunk = out_data[i:i + n]
        if rnd.random() < 0.3 and len(chunk) > 2:
            k = len(chunk) // 3
            conn.send(("s", i), [chunk[:k], bytearray(chunk[k:2 * k]), memoryview(chunk[2 * k:])])
        else:
            conn.send(("s", i), chunk)
        i += n
        nsend += 1
        if nsend % 20 == 0:   # keep within the send queue
            for r in collect(svc, 20):
                assert r.err is None, r.err
            nsend = 0
    got = bytearray()
    sends_left = nsend
    while len(got) < size:
        buf = bytearray(rnd.randint(1, 90000))
        if rnd.random() < 0.2:
            conn.recv_full("r", memoryview(buf)[:min(len(buf), size - len(got))])
        else:
            conn.recv("r", buf)
        while True:
            r = collect_one(svc)
            if r.context == "r":
                break
            assert r.err is None, r.err
            sends_left -= 1
        assert r.err is None, r.err
        got += buf[:r.bytes_transferred]
    for r in collect(svc, sends_left):
        assert r.err is None
    assert bytes(got) == in_data
    assert th.result(WAIT * 6) == out_data
    st = svc.stats()
    assert st["bytes_sent"] == size and st["bytes_received"] == size   # plaintext


def test_recv_full_across_records(svc, pairs, tls_certs):
    conn, bio = bio_pair(svc, pairs, tls_certs)
    wire = b"".join(bio.records(bytes([i]) * 100) for i in range(10))   # ten records
    buf = bytearray(1000)
    conn.recv_full("r", buf)
    for i in range(0, len(wire), 37):        # dribbled in pieces across record boundaries
        bio.sock.sendall(wire[i:i + 37])
        time.sleep(0.001)
    res = collect_one(svc)
    assert res.err is None and res.bytes_transferred == 1000
    assert bytes(buf) == b"".join(bytes([i]) * 100 for i in range(10))


def test_recv_gets_what_is_decrypted_and_gather_lists(svc, pairs, tls_certs):
    conn, bio = bio_pair(svc, pairs, tls_certs)
    bio.send(b"abc")
    buf = bytearray(100)
    conn.recv("r", buf)
    res = collect_one(svc)
    assert res.err is None and bytes(buf[:res.bytes_transferred]) == b"abc"
    parts = [bytearray(3), bytearray(4), memoryview(bytearray(5))]
    conn.recv_full("g", parts)
    bio.send(b"0123456789AB")
    res = collect_one(svc)
    assert res.err is None and res.bytes_transferred == 12
    assert b"".join(bytes(p) for p in parts) == b"0123456789AB"
    conn.send("gs", [b"he", bytearray(b"ll"), memoryview(b"o!")])
    assert collect_one(svc).err is None
    got = b""
    while len(got) < 6:
        got += bio.recv(100)
    assert got == b"hello!"


def test_recv_without_buffer_takes_a_fresh_one(svc, pairs, tls_certs):
    conn, bio = bio_pair(svc, pairs, tls_certs)
    conn.recv("r")
    bio.send(b"x" * 10000)
    res = collect_one(svc)
    assert res.err is None and isinstance(res.buff, bytearray)
    assert len(res.buff) == goaio.DEFAULT_RECV_BUFF_SIZE
    assert res.bytes_transferred == goaio.DEFAULT_RECV_BUFF_SIZE


# --- EOF rules ---------------------------------------------------------------------------

def test_peer_close_notify_is_eof(svc, pairs, tls_certs):
    conn, bio = bio_pair(svc, pairs, tls_certs)
    bio.send(b"last")
    buf = bytearray(10)
    conn.recv("r", buf)
    assert bytes(buf[:collect_one(svc).bytes_transferred]) == b"last"
    conn.recv("a", bytearray(10))
    conn.recv("b", bytearray(10))
    with pytest.raises(ssl.SSLWantReadError):
        bio.obj.unwrap()               # close_notify; the TCP connection stays open
    bio.sock.sendall(bio.out.read())
    got = collect(svc, 2)
    assert [type(r.err) for r in got] == [EOFError, EOFError]
    assert str(got[0].err) == M.PEER_CLOSED
    conn.recv("c", bytearray(10))
    assert type(collect_one(svc).err) is EOFError    # sticky, as plain EOF
    # half-close: goaio may still send after the peer's close_notify, then its own
    conn.send("s", b"after")
    conn.shutdown("sh")
    got = {r.context: r for r in collect(svc, 2)}
    assert got["s"].err is None and got["sh"].err is None
    assert bio.recv(100) == b"after"
    try:
        tail = bio.recv(100)
    except ssl.SSLZeroReturnError:
        tail = b""
    assert tail == b""          # goaio's close_notify
    assert bio.sock.recv(10) == b""   # then the TCP FIN


def test_goaio_shutdown_sends_close_notify(svc, pairs, tls_certs):
    to_bind, raw = pairs()
    conn = pairs.keep(svc.bind(to_bind, ssl=tls_certs.server_context(), server_side=True))
    peer = InThread(lambda: tls_certs.client_context().wrap_socket(
        raw, server_hostname="localhost", suppress_ragged_eofs=False)).result(WAIT)
    pairs._socks.append(peer)
    handshaken(conn)
    conn.send("s", b"bye")
    conn.shutdown("sh")
    with pytest.raises(BrokenPipeError):
        conn.send("late", b"x")
    got = {r.context: r for r in collect(svc, 2)}
    assert got["sh"].err is None and got["s"].err is None
    assert recv_exactly_ssl(peer, 3) == b"bye"
    # a ragged EOF would raise SSLEOFError here (suppress_ragged_eofs=False): it is a close_notify
    assert peer.recv(10) == b""
    # receives go on after our shutdown
    buf = bytearray(6)
    conn.recv_full("r", buf)
    peer.sendall(b"answer")
    res = collect_one(svc)
    assert res.err is None and bytes(buf) == b"answer"


def test_tcp_eof_at_a_record_boundary_is_eof(svc, pairs, tls_certs):
    conn, bio = bio_pair(svc, pairs, tls_certs)
    bio.send(b"whole")
    bio.sock.shutdown(socket.SHUT_WR)       # no close_notify
    buf = bytearray(100)
    conn.recv("r", buf)
    res = collect_one(svc)
    assert res.err is None and bytes(buf[:res.bytes_transferred]) == b"whole"
    conn.recv("e", bytearray(10))
    assert type(collect_one(svc).err) is EOFError


def test_tcp_eof_inside_a_record_is_ssl_error(svc, pairs, tls_certs):
    conn, bio = bio_pair(svc, pairs, tls_certs)
    first = bio.records(b"complete")
    second = bio.records(b"cut short" * 10)
    bio.sock.sendall(first + second[:len(second) // 2])
    bio.sock.shutdown(socket.SHUT_WR)
    buf = bytearray(100)
    conn.recv("r", buf)
    res = collect_one(svc)
    assert res.err is None and bytes(buf[:res.bytes_transferred]) == b"complete"
    conn.recv("e1", bytearray(10))
    conn.recv("e2", bytearray(10))
    got = collect(svc, 2)
    for r in got:
        assert type(r.err) is ssl.SSLEOFError, r.err
        assert r.err.reason == "UNEXPECTED_EOF_WHILE_READING"
    assert got[0].err is not got[1].err
    conn.recv("e3", bytearray(10))
    assert type(collect_one(svc).err) is ssl.SSLEOFError


def test_tcp_eof_inside_a_header_is_ssl_error(svc, pairs, tls_certs):
    conn, bio = bio_pair(svc, pairs, tls_certs)
    rec = bio.records(b"x")
    bio.sock.sendall(rec[:3])
    bio.sock.shutdown(socket.SHUT_WR)
    conn.recv("e", bytearray(10))
    assert type(collect_one(svc).err) is ssl.SSLEOFError


def test_corrupt_record_is_ssl_error(svc, pairs, tls_certs):
    conn, bio = bio_pair(svc, pairs, tls_certs)
    good = bio.records(b"fine")
    bad = bytearray(bio.records(b"tampered with"))
    bad[len(bad) // 2 + 3] ^= 0x40
    bio.sock.sendall(good + bytes(bad))
    buf = bytearray(100)
    conn.recv("r", buf)
    res = collect_one(svc)
    assert res.err is None and bytes(buf[:res.bytes_transferred]) == b"fine"
    conn.recv("bad", bytearray(100))
    res = collect_one(svc)
    assert isinstance(res.err, ssl.SSLError) and not isinstance(res.err, ssl.SSLEOFError), res.err
    assert res.err.library == "SSL"
    conn.recv("after", bytearray(100))
    assert isinstance(collect_one(svc).err, ssl.SSLError)


# --- timeouts, cancel, close, limits --------------------------------------------------------

def test_recv_timeout_and_close_reason(svc, pairs, tls_certs):
    conn, peer = tls_server_pair(svc, pairs, tls_certs)
    conn.set_recv_timeout(0.2)
    conn.recv("t", bytearray(10))
    res = collect_one(svc)
    assert isinstance(res.err, goaio.RecvTimeout) and res.bytes_transferred == 0
    conn.set_recv_timeout(None)
    roundtrip_ok = bytearray(2)
    conn.recv_full("r", roundtrip_ok)
    peer.sendall(b"ok")
    assert collect_one(svc).err is None     # a timeout does not break the stream
    conn.recv("c1", bytearray(10))
    conn.recv("c2", bytearray(10))
    assert conn.cancel("c1") == 1
    r = collect_one(svc)
    assert r.context == "c1" and isinstance(r.err, goaio.Cancelled)
    reason = RuntimeError("going")
    conn.close(reason)
    r = collect_one(svc)
    assert r.context == "c2" and r.err is reason
    assert conn.tls is not None


def test_queue_limits(svc, pairs, tls_certs):
    conn, peer = tls_server_pair(svc, pairs, tls_certs, recvq_size=2)
    conn.recv("a", bytearray(1))
    conn.recv("b", bytearray(1))
    with pytest.raises(goaio.Busy):
        conn.recv("c", bytearray(1))
    peer.sendall(b"xy")
    got = collect(svc, 2)
    assert all(r.err is None for r in got)


@pytest.mark.parametrize("goaio_server, gather", [(False, False), (True, True)],
                         ids=["goaio-client", "goaio-server-gather"])
def test_send_timeout_reports_whole_records(svc, pairs, tls_certs, goaio_server, gather):
    """The peer does not read: the send times out with k bytes reported; the
    peer then decrypts exactly k bytes, and a later send follows them."""
    conn, bio = bio_pair(svc, pairs, tls_certs, goaio_server=goaio_server, small=True)
    data = random.Random(3).randbytes(8 << 20)
    conn.set_send_timeout(0.5)
    if gather:   # odd-sized parts: records do not line up with them
        cuts = [0] + sorted(random.Random(4).sample(range(1, len(data)), 300)) + [len(data)]
        conn.send("big", [memoryview(data)[i:j] for i, j in zip(cuts, cuts[1:])])
    else:
        conn.send("big", data)
    res = collect_one(svc)
    assert isinstance(res.err, goaio.SendTimeout)
    k = res.bytes_transferred
    assert 0 < k < len(data)
    conn.set_send_timeout(None)
    conn.send("tail", b"TAIL")
    bio.sock.settimeout(WAIT)
    got = bytearray()
    while len(got) < k + 4:
        chunk = bio.recv(1 << 20)
        assert chunk, f"EOF after {len(got)} of {k + 4} bytes"
        got += chunk
    assert bytes(got[:k]) == data[:k]
    assert bytes(got[k:]) == b"TAIL"
    assert collect_one(svc).err is None
    assert svc.stats()["bytes_sent"] == k + 4


def test_cancel_started_send(svc, pairs, tls_certs):
    conn, bio = bio_pair(svc, pairs, tls_certs, goaio_server=False, small=True)
    data = bytes(range(256)) * (16 << 12)     # 16 MiB: it cannot all go
    conn.send("big", data)
    conn.send("next", b"queued")
    time.sleep(0.3)
    assert conn.cancel("big") == 2     # it, and the send queued behind it
    got = {r.context: r for r in collect(svc, 2)}
    k = got["big"].bytes_transferred
    assert isinstance(got["big"].err, goaio.Cancelled) and 0 < k < len(data)
    assert isinstance(got["next"].err, goaio.Cancelled) and got["next"].bytes_transferred == 0
    conn.send("after", b"END")
    got = bytearray()
    while len(got) < k + 3:
        chunk = bio.recv(1 << 20)
        assert chunk
        got += chunk
    assert bytes(got[:k]) == data[:k] and bytes(got[k:]) == b"END"
    assert collect_one(svc).err is None


# --- share buffers, stats -------------------------------------------------------------------

def test_share_buffers_with_100_idle_tls_connections(svc, pairs, tls_certs, backend):
    pool = backend.BufferPool(4096)
    ln = pairs.keep(svc.listen(("127.0.0.1", 0), ssl=tls_certs.server_context(), share_buff=pool))
    n = 100
    for i in range(n):
        ln.accept(("a", i))
    client_ctx = tls_certs.client_context()

    def clients():
        out = []
        for _ in range(n):
            s = socket.create_connection(ln.address, timeout=WAIT)
            out.append(client_ctx.wrap_socket(s, server_hostname="localhost"))
        return out

    th = InThread(clients)
    conns = []
    for r in collect(svc, n, timeout=WAIT * 3):
        assert r.err is None, r.err
        conns.append(pairs.keep(r.conn))
    peers = th.result(WAIT * 3)
    pairs._socks.extend(peers)
    for c in conns:
        c.recv("ping")            # share-buffer receive: takes a pool buffer only when data comes
    by_port = {c.peername[1]: c for c in conns}
    for p in peers:
        p.sendall(b"ping")
    for r in collect(svc, n):
        assert r.err is None and bytes(r.buff[:r.bytes_transferred]) == b"ping"
        pool.release(r.buff)
    # idle, each with a receive posted: no pool buffer is out
    for c in conns:
        c.recv("idle")
    assert_no_result(svc, 0.3)
    assert pool.stats()["out"] == 0
    assert svc.stats()["pending_recv"] == n
    if backend.name == "pure":      # the pure layer keeps no TLS bytes of an idle connection
        for c in conns:
            layer = c._tls
            assert layer.inc.pending == 0 and layer.out.pending == 0
            assert layer.wbuf is None and layer.stash is None
    # and each still works
    for p in peers:
        p.sendall(b"go")
    for r in collect(svc, n):
        assert r.err is None and bytes(r.buff[:r.bytes_transferred]) == b"go"
        pool.release(r.buff)
    assert by_port


def test_stats_count_plaintext(svc, pairs, tls_certs):
    conn, peer = tls_server_pair(svc, pairs, tls_certs)
    before = svc.stats()
    conn.send("s", b"a" * 10000)
    assert recv_exactly_ssl(peer, 10000) == b"a" * 10000
    buf = bytearray(777)
    conn.recv_full("r", buf)
    peer.sendall(b"b" * 777)
    collect(svc, 2)
    after = svc.stats()
    assert after["bytes_sent"] - before["bytes_sent"] == 10000
    assert after["bytes_received"] - before["bytes_received"] == 777
    assert after["ops_completed"] - before["ops_completed"] == 2


def test_empty_send_on_tls(svc, pairs, tls_certs):
    conn, peer = tls_server_pair(svc, pairs, tls_certs)
    conn.send("e", b"")
    res = collect_one(svc)
    assert isinstance(res.err, goaio.EmptyBuffer)
    with pytest.raises(goaio.EmptyBuffer):
        conn.recv("z", bytearray(0))


def test_pingpong_many_connections_several_threads(backend, tls_certs):
    """Twenty TLS connection pairs (goaio on both ends), two workers, two
    collector threads, 100 round trips each: every byte arrives, in order."""
    import threading

    from support import assert_service_drained, close_service

    svc = backend.AIOService(workers=2)
    conns = []
    try:
        ln = svc.listen(("127.0.0.1", 0), ssl=tls_certs.server_context())
        n = 20
        for i in range(n):
            ln.accept("a")
            svc.connect("c", ln.address, ssl=tls_certs.client_context(), server_hostname="localhost")
        rounds = 100
        state = {}
        lock = threading.Lock()
        errors = []
        done = threading.Event()
        finished = [0]

        def handle(r):
            if r.err is not None:
                errors.append(r.err)
                done.set()
                return
            if r.context in ("a", "c"):
                with lock:
                    conns.append(r.conn)
                    if r.context == "c":
                        state[r.conn] = 0
                        r.conn.send(("ping", 0), b"%08d" % 0)
                    r.conn.recv_full(("in", r.context), bytearray(8))
                return
            kind, side = r.context if isinstance(r.context, tuple) else (r.context, None)
            if kind == "in":
                msg = int(bytes(r.buff))
                if side == "a":            # the server echoes
                    r.conn.send(("echo", msg), bytes(r.buff))
                    r.conn.recv_full(("in", "a"), bytearray(8))
                else:
                    with lock:
                        assert msg == state[r.conn], (msg, state[r.conn])
                        state[r.conn] = msg + 1
                    if msg + 1 == rounds:
                        with lock:
                            finished[0] += 1
                            if finished[0] == n:
                                done.set()
                        return
                    r.conn.send(("ping", msg + 1), b"%08d" % (msg + 1))
                    r.conn.recv_full(("in", "c"), bytearray(8))

        def collector():
            while not done.is_set():
                try:
                    r = svc.get_complete_status(timeout=0.05)
                except goaio.ServiceClosed:
                    return
                if r is not None:
                    try:
                        handle(r)
                    except BaseException as exc:  # noqa: BLE001
                        errors.append(exc)
                        done.set()

        threads = [threading.Thread(target=collector, daemon=True) for _ in range(2)]
        for t in threads:
            t.start()
        assert done.wait(WAIT * 4), f"stalled: {finished[0]} of {n} finished"
        for t in threads:
            t.join(WAIT)
        assert not errors, errors[:3]
        assert finished[0] == n
        st = svc.stats()
        assert st["bytes_sent"] == st["bytes_received"] == 2 * n * rounds * 8
    finally:
        close_service(svc)
        assert_service_drained(svc)
