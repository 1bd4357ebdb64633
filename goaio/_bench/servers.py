"""The echo servers the bench compares: how to tell if one is available, start
it in its own process on a free loopback port, read its memory, stop it.

Every server prints ``... listening on HOST:PORT`` when ready; it is started
with port 0 and the port is read from that line, so no port is ever guessed.
"""

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

from . import native

HERE = os.path.dirname(os.path.abspath(__file__))
PEERS = os.path.join(HERE, "peers.py")
TLS_PEERS = os.path.join(HERE, "tls_peers.py")
#: The directory holding the goaio package the harness itself runs.
PACKAGE_ROOT = os.path.dirname(os.path.dirname(HERE))
#: Server processes run here, with -P, so that neither their working
#: directory nor a checkout the user stands in shadows the goaio they import.
SERVER_CWD = tempfile.gettempdir()

_READY = re.compile(r"listening on (\S+):(\d+)")


class Spec:
    """One server of the comparison."""

    def __init__(self, name, label, kind, backend=None, share=False, ceiling=False, tls=False, peer=None,
                 loop_thread=False):
        self.loop_thread = loop_thread  # goaio echo --loop-thread
        self.tls = tls  # a TLS server: driven by loadgen_tls, with the bench's certificate
        self.peer = peer or name  # the KIND given to peers.py / tls_peers.py
        self.name = name
        self.label = label
        self.kind = kind  # "goaio", "peer" or "c"
        self.backend = backend
        self.share = share
        self.ceiling = ceiling

    def __repr__(self):
        return f"<Spec {self.name}>"


SPECS = [
    Spec("goaio-epoll", "goaio epoll", "goaio", backend="epoll"),
    Spec("goaio-epoll-share", "goaio epoll, share buffers", "goaio", backend="epoll", share=True),
    Spec("goaio-pure", "goaio pure", "goaio", backend="pure"),
    Spec("goaio-pure-share", "goaio pure, share buffers", "goaio", backend="pure", share=True),
    Spec("goaio-pure-thread", "goaio pure, loop on a thread", "goaio", backend="pure", loop_thread=True),
    Spec("asyncio", "asyncio Protocol", "peer"),
    Spec("asyncio-streams", "asyncio streams", "peer"),
    Spec("uvloop", "uvloop Protocol", "peer"),
    Spec("threads", "thread per connection", "peer"),
    Spec("raw-epoll", "ceiling: raw epoll, Python", "peer", ceiling=True),
    Spec("c-epoll", "C epoll (machine ceiling)", "c", ceiling=True),
    # TLS (``bench --tls``): the same servers on an ssl.SSLContext
    Spec("goaio-epoll-tls", "goaio epoll, TLS", "goaio", backend="epoll", tls=True),
    Spec("goaio-epoll-tls-share", "goaio epoll, TLS, share buffers", "goaio", backend="epoll", share=True,
         tls=True),
    Spec("goaio-pure-tls", "goaio pure, TLS", "goaio", backend="pure", tls=True),
    Spec("goaio-pure-tls-share", "goaio pure, TLS, share buffers", "goaio", backend="pure", share=True,
         tls=True),
    Spec("asyncio-tls", "asyncio Protocol, TLS", "peer", tls=True, peer="asyncio"),
    Spec("uvloop-tls", "uvloop Protocol, TLS", "peer", tls=True, peer="uvloop"),
    Spec("c-epoll-tls", "C epoll on OpenSSL (TLS ceiling)", "c", ceiling=True, tls=True),
]
BY_NAME = {s.name: s for s in SPECS}
#: what runs when no list is given (c-epoll only on request: it is not Python)
DEFAULT = [s.name for s in SPECS if s.kind != "c" and not s.tls]
#: what ``bench --tls`` runs when no list is given (the C server on request)
TLS_DEFAULT = [s.name for s in SPECS if s.tls and s.kind != "c"]

_avail_cache = {}

_PROBE = """
import importlib, json, os
import goaio
why = {}
for b in ("epoll", "kqueue", "pure"):
    try:
        importlib.import_module("goaio._" + b)
        why[b] = None
    except Exception as exc:
        why[b] = str(exc) or type(exc).__name__
print(json.dumps({"root": os.path.dirname(os.path.dirname(os.path.abspath(goaio.__file__))), "why": why}))
"""


def _native_backend():
    if sys.platform.startswith("linux"):
        return "epoll"
    if sys.platform == "darwin" or "bsd" in sys.platform:
        return "kqueue"
    return None


def _pythonpath(first=None):
    """PYTHONPATH for a server: ``first``, then the user's own entries other
    than the harness's package root (None: leave the root out, so the goaio
    installed in this interpreter is found)."""
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
            if p and os.path.abspath(p) != PACKAGE_ROOT]
    return os.pathsep.join(([first] if first else []) + rest)


def _probe(pythonpath):
    env = dict(os.environ, PYTHONPATH=pythonpath)
    env.pop("GOAIO_BACKEND", None)
    try:
        proc = subprocess.run([sys.executable, "-P", "-c", _PROBE], cwd=SERVER_CWD, env=env,
                              capture_output=True, text=True, timeout=60)
        if proc.returncode == 0:
            return json.loads(proc.stdout.strip().splitlines()[-1])
        err = (proc.stderr.strip().splitlines() or ["exit status %d" % proc.returncode])[-1]
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        err = str(exc)
    return {"root": None, "why": {b: f"goaio not importable: {err}" for b in ("epoll", "kqueue", "pure")}}


_goaio_cache = []


def goaio_for_servers():
    """Which goaio the goaio servers import: a dict with ``root`` (the
    directory holding the package), ``pythonpath``, ``why`` (backend -> None
    or why it does not import there) and ``note`` (None, or a sentence for
    the report).

    The harness's own goaio if it has this OS's compiled backend; else the
    goaio installed in this interpreter if that one has it (the usual case
    when the harness runs from a checkout, whose source tree has nothing
    compiled, after ``pip install .``); else the harness's own (pure only).
    """
    if _goaio_cache:
        return _goaio_cache[0]
    native = _native_backend()
    own_path = _pythonpath(PACKAGE_ROOT)
    own = _probe(own_path)
    choice = dict(own, pythonpath=own_path, note=None)
    if native and own["why"].get(native):
        installed_path = _pythonpath(None)
        inst = _probe(installed_path)
        if inst["root"] and inst["root"] != own["root"] and inst["why"].get(native) is None:
            note = (f"the goaio servers import the installed goaio ({inst['root']}): the one the bench "
                    f"runs from ({own['root']}) has no compiled {native!r} backend")
            choice = dict(inst, pythonpath=installed_path, note=note)
    _goaio_cache.append(choice)
    return choice


def availability(name):
    """(True, None) or (False, why) for a server name."""
    if name in _avail_cache:
        return _avail_cache[name]
    spec = BY_NAME.get(name)
    if spec is None:
        raise KeyError(name)
    why = None
    if spec.kind == "goaio":
        found = goaio_for_servers()
        err = found["why"].get(spec.backend)
        if err:
            hint = ""
            if spec.backend == _native_backend():
                hint = " (build it: pip install . , or in a checkout python setup.py build_ext --inplace)"
            elif spec.backend != "pure":
                hint = f" (not a backend of {sys.platform})"
            why = f"backend {spec.backend!r} not importable: {err}{hint}"
    if why is None and spec.tls:
        from . import tlscert

        if native.build("loadgen_tls") is None:
            why = f"the TLS load client does not build: {native.why_not('loadgen_tls')}"
        elif tlscert.ensure() is None:
            why = tlscert.why_not()
    if why is None and spec.peer == "uvloop" and importlib.util.find_spec("uvloop") is None:
        why = "uvloop is not installed (pip install 'goaio[bench]')"
    c_server = "echo_tls_epoll" if spec.tls else "echo_epoll"
    if why is None and spec.kind == "c" and native.build(c_server) is None:
        why = native.why_not(c_server)
    _avail_cache[name] = (why is None, why)
    return _avail_cache[name]


def parse_list(text, tls=False):
    """``"a,b"`` -> ["a", "b"], or ValueError naming the unknown ones."""
    if not text:
        return list(TLS_DEFAULT if tls else DEFAULT)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise ValueError(f"unknown server(s): {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    return names


def command(spec, workers=1):
    """(argv, env) that start ``spec`` on 127.0.0.1, port 0."""
    env = dict(os.environ)
    env.pop("GOAIO_BACKEND", None)
    if spec.kind == "goaio":
        env["PYTHONPATH"] = goaio_for_servers()["pythonpath"]
        env["GOAIO_BACKEND"] = spec.backend
        argv = [sys.executable, "-P", "-m", "goaio", "echo", "--host", "127.0.0.1", "--port", "0",
                "--workers", str(workers), "--quiet"]
        if spec.share:
            argv.append("--share-buff")
        if spec.loop_thread:
            argv.append("--loop-thread")
        if spec.tls:
            from . import tlscert

            argv += ["--tls", *tlscert.ensure()]
    elif spec.kind == "peer" and spec.tls:
        from . import tlscert

        argv = [sys.executable, TLS_PEERS, spec.peer, "echo", *tlscert.ensure(), "--host", "127.0.0.1",
                "--port", "0"]
    elif spec.kind == "peer":
        argv = [sys.executable, PEERS, spec.name, "--host", "127.0.0.1", "--port", "0"]
    elif spec.tls:
        from . import tlscert

        argv = [native.build("echo_tls_epoll"), "0", *tlscert.ensure()]
    else:
        argv = [native.build("echo_epoll"), "0"]
    return argv, env


def _proc_status(pid, key):
    """A ``kB`` field of /proc/PID/status in bytes, or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class Server:
    """A running server: ``with Server(spec) as srv: srv.port ...``."""

    def __init__(self, spec, workers=1, cpus=None, start_timeout=20.0, argv=None, env=None):
        """``argv``/``env``: run this command instead of the spec's own (for
        tls_measure.py); a ``"{port}"`` in it is replaced by a free port,
        and then a bare ``listening`` line is enough to be ready."""
        self.spec = spec
        self._fixed_port = None
        if argv is None:
            argv, env = command(spec, workers)
        elif "{port}" in argv:
            import socket

            with socket.socket() as probe:  # a free port (the server binds it at once)
                probe.bind(("127.0.0.1", 0))
                self._fixed_port = probe.getsockname()[1]
            argv = [str(self._fixed_port) if a == "{port}" else a for a in argv]
        self._log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(argv, env=env, cwd=SERVER_CWD, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, text=True)
        if cpus and hasattr(os, "sched_setaffinity"):
            try:
                os.sched_setaffinity(self.proc.pid, cpus)
            except OSError:
                pass
        self.port = None
        self.exit_code = None
        try:
            self._wait_ready(start_timeout)
        except BaseException:
            self.close()
            raise

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._log.seek(0)
            text = self._log.read()
            m = _READY.search(text)
            if m:
                self.port = int(m.group(2))
                return
            if self._fixed_port is not None and "listening" in text:
                self.port = self._fixed_port
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.spec.name} exited with {self.proc.returncode}: "
                                   f"{self.output()[-800:]}")
            time.sleep(0.02)
        raise RuntimeError(f"{self.spec.name} was not ready within {timeout:.0f} s: {self.output()[-800:]}")

    def output(self):
        self._log.seek(0)
        return self._log.read().strip()

    @property
    def pid(self):
        return self.proc.pid

    def rss(self):
        """Resident memory now, bytes."""
        return _proc_status(self.pid, "VmRSS")

    def peak_rss(self):
        """Peak resident memory so far (VmHWM), bytes."""
        return _proc_status(self.pid, "VmHWM")

    def cpu_seconds(self):
        """User + system CPU time of the server so far."""
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None

    def stop(self, timeout=5.0):
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.exit_code = self.proc.returncode
        return self.exit_code

    def close(self):
        self.stop()
        self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def measure_idle(server, n, host="127.0.0.1", limit=120.0):
    """Server RSS per idle connection: open ``n`` connections, ping one byte
    on each (so the server has accepted, served and re-posted a receive on
    every one), hold them silent, let the server settle, then
    (RSS after - RSS before) / n.

    Returns a dict with ``bytes_per_conn``, ``rss_before``, ``rss_after``.
    Bounded by ``limit`` seconds; the connections are closed on return.
    """
    import socket

    from .client import raise_nofile_limit

    raise_nofile_limit()
    socks = []
    deadline = time.monotonic() + limit
    try:
        time.sleep(0.2)
        before = server.rss()
        # one connection at a time, each answered before the next is opened:
        # the accept backlog never overflows (which would stall a connection
        # for a SYN-ACK retransmit) and no burst grows a buffer pool
        for i in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.settimeout(10)
            s.connect((host, server.port))
            s.sendall(b"x")
            if s.recv(1) != b"x":
                raise RuntimeError(f"idle: no echo on connection {i}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"idle: {i} of {n} connections after {limit:.0f} s")
        time.sleep(0.5)
        after = server.rss()
    finally:
        for s in socks:
            s.close()
    return {"conns": n, "rss_before": before, "rss_after": after,
            "bytes_per_conn": (after - before) / n if before is not None and after is not None else None}


def measure_idle_tls(server, n, host="127.0.0.1", limit=180.0):
    """The TLS twin of :func:`measure_idle`: ``loadgen_tls -i`` opens ``n``
    connections one after another, handshakes each and echoes one byte on
    it, then holds them silent; (RSS after - RSS before) / n."""
    import select

    exe = native.build("loadgen_tls")
    if exe is None:
        raise RuntimeError(f"no TLS client: {native.why_not('loadgen_tls')}")
    time.sleep(0.2)
    before = server.rss()
    proc = subprocess.Popen([exe, "-i", host, str(server.port), str(n)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        r, _, _ = select.select([proc.stdout], [], [], limit)
        line = proc.stdout.readline() if r else ""
        if line.split() != ["held", str(n)]:
            proc.kill()
            raise RuntimeError(f"idle TLS client: {line.strip() or 'no answer'} "
                               f"{proc.stderr.read().strip()[-300:]}")
        time.sleep(0.5)
        after = server.rss()
        proc.stdin.write("quit\n")
        proc.stdin.flush()
    finally:
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    return {"conns": n, "rss_before": before, "rss_after": after,
            "bytes_per_conn": (after - before) / n if before is not None and after is not None else None}
