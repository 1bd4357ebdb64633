"""The bench's load client: drivers for the C client and the Python one.

Both clients speak one protocol (see ``loadgen.c``): closed loop, N
connections, every message's echo checked byte for byte, round-trip latency
recorded; ``HOST PORT CONNS SIZE SECONDS [WARMUP]``; timed mode prints
``progress t= msgs=`` lines and one ``result k=v ...`` line; ``SECONDS=0`` is
command mode (``ready``, then ``run K`` / ``quit`` on stdin).

Run as a script, this file *is* the Python client (pure stdlib, non-blocking
sockets on ``select.epoll``, TCP_NODELAY). It is slower than the servers it
measures at small messages, which is why the C client is preferred; it stays
as the fallback where no C compiler exists.
"""

import os
import select
import socket
import subprocess
import sys
import time

if __package__:
    from . import native
else:  # run as a script: no goaio import needed
    native = None

PY_CLIENT = os.path.abspath(__file__)

DRAIN = 2.0  # seconds given to in-flight echoes at the end of a timed run
TICK = 0.25
RUN_LIMIT = 120.0


# --------------------------------------------------------------------------
# the Python client itself


class _Peer:
    __slots__ = ("idx", "sock", "fd", "busy", "key", "sent", "got", "t0", "seq", "out_armed")

    def __init__(self, idx, sock):
        self.idx = idx
        self.sock = sock
        self.fd = sock.fileno()
        self.busy = False
        self.key = self.sent = self.got = self.t0 = self.seq = 0
        self.out_armed = False


class PyLoad:
    """The closed loop of the Python client (one process, one epoll)."""

    def __init__(self, host, port, conns, size):
        self.size = size
        # pattern[j] = 31*j mod 256; message (conn c, number n) starts at key
        # (37c + 101n) mod 256, so consecutive messages differ in every byte.
        self.pattern_bytes = bytes((31 * j) & 255 for j in range(size + 256))
        self.pattern = memoryview(self.pattern_bytes)
        self.rbuf = bytearray(max(65536, size))
        self.rview = memoryview(self.rbuf)
        self.ep = select.epoll()
        self.peers = {}
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        for i in range(conns):
            s = socket.socket(family, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect((host, port))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
            p = _Peer(i, s)
            self.peers[p.fd] = p
            self.ep.register(p.fd, select.EPOLLIN)
        self.live = conns
        self.inflight = 0
        self.reset()

    def reset(self):
        self.completed = 0  # warm-up included (progress lines)
        self.counted = 0
        self.bad = 0
        self.errors = 0
        self.lat = []

    def _fail(self, p):
        self.errors += 1
        if p.busy:
            self.inflight -= 1
        p.busy = False
        del self.peers[p.fd]
        self.ep.unregister(p.fd)
        p.sock.close()
        self.live -= 1

    def _send(self, p):
        size = self.size
        try:
            while p.sent < size:
                n = p.sock.send(self.pattern[p.key + p.sent:p.key + size])
                p.sent += n
        except BlockingIOError:
            if not p.out_armed:
                self.ep.modify(p.fd, select.EPOLLIN | select.EPOLLOUT)
                p.out_armed = True
            return
        except OSError:
            self._fail(p)
            return
        if p.out_armed:
            self.ep.modify(p.fd, select.EPOLLIN)
            p.out_armed = False

    def _start(self, p, now):
        p.key = (37 * p.idx + 101 * p.seq) & 255
        p.sent = p.got = 0
        p.t0 = now
        p.busy = True
        self.inflight += 1
        self._send(p)

    def _recv(self, p):
        """True when the whole echo is back (wrong bytes are counted)."""
        size = self.size
        rview = self.rview
        rbuf = self.rbuf
        pattern = self.pattern_bytes
        recv_into = p.sock.recv_into
        while True:
            want = size - p.got if p.busy else len(rview)
            try:
                n = recv_into(rview, want)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:
                self._fail(p)
                return False
            if n == 0:
                self._fail(p)
                return False
            if not p.busy:
                self.bad += n
                continue
            start = p.key + p.got
            # slicing copies, but bytes comparison is a memcmp: far faster
            # than comparing memoryviews item by item
            if rbuf[:n] != pattern[start:start + n]:
                exp = pattern[start:start + n]
                self.bad += sum(1 for a, b in zip(rbuf[:n], exp) if a != b)
            p.got += n
            if p.got == size:
                return True

    def _serve(self, timeout, may_start, count_from, count_to):
        clock = time.perf_counter
        lat = self.lat
        for fd, ev in self.ep.poll(timeout, 512):
            p = self.peers.get(fd)
            if p is None:
                continue
            if ev & select.EPOLLOUT and p.busy and p.sent < self.size:
                self._send(p)
                if p.fd not in self.peers:
                    continue
            if not ev & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                continue
            if not self._recv(p):
                continue
            t1 = clock()
            self.completed += 1
            if count_from <= t1 < count_to:
                self.counted += 1
                lat.append(t1 - p.t0)
            p.busy = False
            self.inflight -= 1
            p.seq += 1
            if may_start(t1):
                self._start(p, t1)

    def result(self, seconds, **extra):
        lat = sorted(self.lat)
        p50 = lat[len(lat) // 2] * 1e6 if lat else 0.0
        p99 = lat[min(len(lat) - 1, len(lat) * 99 // 100)] * 1e6 if lat else 0.0
        rps = self.counted / seconds if seconds > 0 else 0.0
        fields = dict(rps=f"{rps:.1f}", MBps=f"{rps * self.size / 1e6:.3f}", p50_us=f"{p50:.1f}",
                      p99_us=f"{p99:.1f}", msgs=self.counted, bad_bytes=self.bad, errors=self.errors,
                      unfinished=self.inflight, live=self.live, **extra)
        return "result " + " ".join(f"{k}={v}" for k, v in fields.items())

    def run_timed(self, seconds, warmup):
        clock = time.perf_counter
        t_start = clock()
        t_count = t_start + warmup
        t_end = t_count + seconds

        def may_start(now):
            return now < t_end

        for p in list(self.peers.values()):
            self._start(p, t_start)
        next_tick = t_start + TICK
        while True:
            now = clock()
            if now >= next_tick:
                print(f"progress t={now - t_count:.3f} msgs={self.completed}", flush=True)
                next_tick += TICK
            if self.live == 0 or (now >= t_end and (self.inflight == 0 or now >= t_end + DRAIN)):
                break
            self._serve(0.01, may_start, t_count, t_end)
        print(self.result(seconds), flush=True)
        return 1 if self.bad or self.errors else 0

    def run_count(self, k):
        self.reset()
        started = 0

        def may_start(_now):
            nonlocal started
            if started >= k:
                return False
            started += 1
            return True

        clock = time.perf_counter
        t0 = clock()
        for p in list(self.peers.values()):
            if may_start(t0):
                self._start(p, t0)
        deadline = t0 + RUN_LIMIT
        while self.inflight > 0 and self.live > 0 and clock() < deadline:
            self._serve(0.05, may_start, 0.0, float("inf"))
        el = clock() - t0
        print(self.result(el, elapsed_s=f"{el:.6f}"), flush=True)
        return 1 if self.bad or self.errors or self.counted != k else 0

    def run_commands(self):
        print("ready", flush=True)
        status = 0
        for line in sys.stdin:
            parts = line.split()
            if not parts or parts[0] == "quit":
                break
            if parts[0] == "run" and len(parts) == 2 and parts[1].isdigit() and int(parts[1]) > 0:
                status |= self.run_count(int(parts[1]))
            else:
                print("error bad command", flush=True)
        return status


def _main(argv):
    if len(argv) < 5:
        print("usage: client.py HOST PORT CONNS SIZE SECONDS [WARMUP]", file=sys.stderr)
        return 2
    host, port, conns, size = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    seconds = float(argv[4])
    warmup = float(argv[5]) if len(argv) > 5 else 0.5
    raise_nofile_limit()
    try:
        load = PyLoad(host, port, conns, size)
    except OSError as exc:
        print(f"client: connect: {exc}", file=sys.stderr)
        return 2
    if seconds > 0:
        return load.run_timed(seconds, warmup)
    return load.run_commands()


def raise_nofile_limit():
    """Soft RLIMIT_NOFILE up to the hard limit (as Go's runtime does)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard))
    except (ImportError, ValueError, OSError):
        pass


# --------------------------------------------------------------------------
# drivers used by the harness and by bench/


def parse_line(line):
    """``"result rps=1 msgs=2"`` -> ``("result", {"rps": 1.0, "msgs": 2.0})``."""
    head, _, rest = line.strip().partition(" ")
    fields = {}
    for item in rest.split():
        k, _, v = item.partition("=")
        try:
            fields[k] = float(v)
        except ValueError:
            fields[k] = v
    return head, fields


class ClientError(RuntimeError):
    pass


def client_command(kind="auto"):
    """(argv prefix, kind actually used, note) for ``kind`` in auto|c|python."""
    if kind not in ("auto", "c", "python"):
        raise ValueError(f"client must be auto, c or python, not {kind!r}")
    note = None
    if kind in ("auto", "c"):
        exe = native.build("loadgen")
        if exe:
            return [exe], "c", None
        note = f"C client unavailable ({native.why_not('loadgen')}); using the Python client"
        if kind == "c":
            raise ClientError(note)
    return [sys.executable, PY_CLIENT], "python", note


def _pin(pid, cpus):
    if cpus and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(pid, cpus)
        except OSError:
            pass


def run_timed(prefix, port, conns, size, seconds, warmup=0.5, on_progress=None, cpus=None,
              host="127.0.0.1"):
    """One timed run; returns the result fields. ``on_progress(t, msgs)`` is
    called as progress lines arrive. Bounded: killed after the run's time
    plus a margin."""
    argv = prefix + [host, str(port), str(conns), str(size), repr(seconds), repr(warmup)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _pin(proc.pid, cpus)
    limit = time.monotonic() + warmup + seconds + DRAIN + 30 + conns / 500
    result = None
    try:
        os.set_blocking(proc.stdout.fileno(), False)
        buf = ""
        while True:
            left = limit - time.monotonic()
            if left <= 0:
                raise ClientError(f"client did not finish in time ({' '.join(argv)})")
            r, _, _ = select.select([proc.stdout], [], [], min(left, 0.5))
            if not r:
                continue
            chunk = proc.stdout.read()
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split("\n")
            for line in lines:
                head, fields = parse_line(line)
                if head == "progress" and on_progress:
                    on_progress(fields.get("t", 0.0), fields.get("msgs", 0.0))
                elif head == "result":
                    result = fields
        proc.wait(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        err = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    if result is None:
        raise ClientError(f"client failed (exit {proc.returncode}): {err.strip()[-500:]}")
    result["exit"] = proc.returncode
    return result


class CommandClient:
    """A connected client in command mode: ``run(k)`` does exactly k round
    trips and returns the result fields. Used by bench/ so that a timed
    benchmark round holds nothing but the round trips."""

    def __init__(self, prefix, port, conns, size, cpus=None, host="127.0.0.1"):
        argv = prefix + [host, str(port), str(conns), str(size), "0"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        _pin(self.proc.pid, cpus)
        line = self._readline(30 + conns / 200)
        if line.strip() != "ready":
            err = self.close()
            raise ClientError(f"client did not start: {line.strip()} {err.strip()[-500:]}")

    def _readline(self, timeout):
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not r:
            self.close()
            raise ClientError("client did not answer in time")
        return self.proc.stdout.readline()

    def run(self, k):
        self.proc.stdin.write(f"run {k}\n")
        self.proc.stdin.flush()
        head, fields = parse_line(self._readline(RUN_LIMIT + 10))
        if head != "result":
            raise ClientError(f"client: unexpected answer {head!r}")
        return fields

    def close(self):
        err = ""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        try:
            err = self.proc.stderr.read()
        except (OSError, ValueError):
            pass
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except (OSError, ValueError):
                pass
        return err

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
