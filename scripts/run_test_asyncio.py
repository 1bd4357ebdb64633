#!/usr/bin/env python
"""Run CPython's own test_asyncio networking modules on goaio's event loop
and on asyncio's default loop, and compare.

The tests are loaded from the interpreter's ``test`` package (never copied
here). On the goaio side every loop the modules make is a ``goaio.aio.Loop``:
``asyncio.SelectorEventLoop`` (and its ``unix_events`` name), the default
policy's loop factory and ``asyncio.new_event_loop`` all make one; the run
records the class of every loop that runs and names any test in which a
selector loop that is not goaio's ran.

    python scripts/run_test_asyncio.py                     # compare, every module, this backend
    python scripts/run_test_asyncio.py --backend pure test_streams test_server
    python scripts/run_test_asyncio.py --loop goaio --module test_streams --json out.json   # one run

Exit status 1 when a test that passes on the default loop does not pass on
goaio's, neither in its module's run nor when run again alone RERUNS times (a
regression), else 0. A test that fails once and passes on a re-run is listed
as flaky, with its id, and is not a regression.
"""

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time

MODULES = [
    "test_streams",
    "test_server",
    "test_sock_lowlevel",
    "test_buffered_proto",
    "test_sendfile",
    "test_sslproto",
    "test_ssl",
    "test_events",
]
#: A few key modules, small enough for the pytest wrapper.
QUICK = ["test_streams", "test_server", "test_buffered_proto", "test_sock_lowlevel",
         "test_sslproto", "test_sendfile"]

#: Modules this script refuses to run: test_base_events hands out addresses
#: off this machine (107.6.106.82, 0.0.0.1, fe80::1) through a replaced
#: loop.getaddrinfo and mocks the socket module of asyncio.base_events to
#: stop asyncio's create_connection from connecting; goaio's create_connection
#: connects with svc.connect (it takes asyncio's path only when sock_connect
#: itself is replaced), so on goaio's loop some of those addresses would
#: really be connected to, and no traffic may leave loopback here. (Run by
#: hand once, on 2026-12-08: 20 tests differed, for that reason.)
REFUSED = {"test_base_events": "it would connect to the non-loopback addresses its mocks give"}

PASSING = ("pass", "skip", "xfail")
#: how many times a test that passes on the default loop and fails on goaio's
#: is run again before it counts as a regression (a failure that does not
#: repeat is load-dependent flakiness, reported as such)
RERUNS = 2


# --------------------------------------------------------------------------
# one run, in this process
# --------------------------------------------------------------------------

class HarnessTimeout(Exception):
    pass


def _install_goaio(backend):
    import asyncio
    import asyncio.unix_events as ue
    import importlib

    import goaio
    import goaio.aio

    mod = goaio if backend in (None, "", "auto") else importlib.import_module(f"goaio._{backend}")

    class HarnessLoop(goaio.aio.Loop):
        """goaio's loop over the backend under test, made wherever the tests
        make asyncio's selector loop."""

        def __init__(self, selector=None):
            super().__init__(selector, backend=mod)

    made = _install_goaio.transports = collections.Counter()

    def counting(orig_init):
        def counting_init(self, *a, **k):
            made["transports"] += 1
            orig_init(self, *a, **k)
        return counting_init

    # the Python transport (pure) and the compiled backends' (its __init__ is
    # their common Python base's), and the TLS transport (goaio's own TLS)
    for cls in (goaio.aio._PyTransport, goaio.aio._CTransportBase, goaio.aio._SSLTransport,
                goaio.aio._CSSLMixin):
        cls.__init__ = counting(cls.__init__)
    # sock_recv/sock_recv_into/sock_sendall that waited on goaio (a borrowed
    # connection bound: goaio/_aio_sock.py)
    import goaio._aio_sock as aio_sock
    orig_ensure = aio_sock._SockState.ensure_conn

    def counting_ensure(self, sock):
        if self.conn is None:
            made["sock_binds"] += 1
        return orig_ensure(self, sock)

    aio_sock._SockState.ensure_conn = counting_ensure
    # sock_connect/sock_accept that waited on goaio (goaio/_aio_sockconn.py)
    import goaio._aio_sockconn as aio_sockconn
    orig_wait = aio_sockconn._Wait.__init__

    def counting_wait(self, *a):
        made["sock_waits"] += 1
        orig_wait(self, *a)

    aio_sockconn._Wait.__init__ = counting_wait
    asyncio.SelectorEventLoop = HarnessLoop
    ue.SelectorEventLoop = HarnessLoop
    ue._UnixDefaultEventLoopPolicy._loop_factory = HarnessLoop
    return HarnessLoop


def _track_loops(record):
    """Record the class of every loop that runs (run_forever)."""
    import asyncio.base_events as be

    orig = be.BaseEventLoop.run_forever

    def run_forever(self, *a, **k):
        record(type(self))
        return orig(self, *a, **k)

    be.BaseEventLoop.run_forever = run_forever


def run_one(module, loop_kind, backend, per_test_timeout, out, only=None):
    import signal
    import unittest

    goaio_cls = _install_goaio(backend) if loop_kind == "goaio" else None
    running = collections.Counter()
    test_loops = set()

    def record(cls):
        running[cls.__name__] += 1
        test_loops.add(cls)

    _track_loops(record)
    import selectors
    import asyncio

    outcomes = {}
    not_goaio = []

    def on_alarm(signum, frame):
        raise HarnessTimeout(f"test took longer than {per_test_timeout}s")

    signal.signal(signal.SIGALRM, on_alarm)

    class Result(unittest.TextTestResult):
        def startTest(self, test):
            test_loops.clear()
            signal.alarm(per_test_timeout)
            super().startTest(test)

        def stopTest(self, test):
            signal.alarm(0)
            super().stopTest(test)
            tid = test.id()
            if goaio_cls is not None:
                for cls in test_loops:
                    if issubclass(cls, asyncio.selector_events.BaseSelectorEventLoop) \
                            and not issubclass(cls, goaio_cls):
                        not_goaio.append((tid, cls.__name__))
            outcomes.setdefault(tid, "pass")

        def addFailure(self, test, err):
            super().addFailure(test, err)
            outcomes[test.id()] = "fail"

        def addError(self, test, err):
            super().addError(test, err)
            tid = getattr(test, "id", lambda: str(test))()
            outcomes[tid] = "error"

        def addSkip(self, test, reason):
            super().addSkip(test, reason)
            outcomes[test.id()] = "skip"

        def addExpectedFailure(self, test, err):
            super().addExpectedFailure(test, err)
            outcomes[test.id()] = "xfail"

        def addUnexpectedSuccess(self, test):
            super().addUnexpectedSuccess(test)
            outcomes[test.id()] = "fail"

    name = f"test.test_asyncio.{module}"
    if only:        # a re-run of some of the module's tests, by id
        suite = unittest.defaultTestLoader.loadTestsFromNames(only)
    else:
        suite = unittest.defaultTestLoader.loadTestsFromName(name)
    stream = open(os.devnull, "w") if not os.environ.get("HARNESS_VERBOSE") else sys.stderr
    runner = unittest.TextTestRunner(stream=stream, resultclass=Result, verbosity=2)
    t0 = time.monotonic()
    result = runner.run(suite)
    elapsed = time.monotonic() - t0
    details = {}
    for test, tb in result.failures + result.errors:
        details[getattr(test, "id", lambda: str(test))()] = tb[-3000:]
    data = {
        "module": module,
        "loop": loop_kind,
        "backend": backend,
        "python": sys.version.split()[0],
        "seconds": round(elapsed, 1),
        "counts": dict(collections.Counter(outcomes.values())),
        "outcomes": outcomes,
        "details": details,
        "running_loops": dict(running),
        "not_goaio": not_goaio,
        "goaio_transports": _install_goaio.transports["transports"] if goaio_cls is not None else 0,
        "goaio_sock_binds": _install_goaio.transports["sock_binds"] if goaio_cls is not None else 0,
        "goaio_sock_waits": _install_goaio.transports["sock_waits"] if goaio_cls is not None else 0,
        "goaio_module": getattr(sys.modules.get("goaio"), "__file__", None),
    }
    with open(out, "w") as f:
        json.dump(data, f)


# --------------------------------------------------------------------------
# comparison: every (module, loop) in its own interpreter
# --------------------------------------------------------------------------

def _goaio_parent():
    """The directory the children import goaio from: the one this process
    imports (an installed package with its compiled backend, or a tree on
    PYTHONPATH), else this checkout's source tree."""
    try:
        import goaio
    except ImportError:
        return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.dirname(os.path.dirname(os.path.abspath(goaio.__file__)))


def spawn(module, loop_kind, backend, per_test_timeout, module_timeout, python, only=None):
    fd, out = tempfile.mkstemp(suffix=".json", prefix=f"harness-{module}-{loop_kind}-")
    os.close(fd)
    cmd = [python, os.path.abspath(__file__), "--loop", loop_kind, "--module", module,
           "--json", out, "--per-test-timeout", str(per_test_timeout)]
    if backend:
        cmd += ["--backend", backend]
    if only:
        cmd += ["--only", ",".join(only)]
    env = dict(os.environ)
    env.pop("GOAIO_BACKEND", None)     # the backend is --backend's
    parent = _goaio_parent()
    env["PYTHONPATH"] = parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=module_timeout,
                           cwd=tempfile.gettempdir())
        with open(out) as f:
            text = f.read()
        if not text:
            return {"module": module, "loop": loop_kind, "crashed": True,
                    "stderr": (p.stderr or "")[-4000:], "counts": {}, "outcomes": {}}
        return json.loads(text)
    except subprocess.TimeoutExpired as exc:
        return {"module": module, "loop": loop_kind, "crashed": True,
                "stderr": f"module timed out after {module_timeout}s\n{(exc.stderr or '')[-4000:]}",
                "counts": {}, "outcomes": {}}
    finally:
        os.unlink(out)


def _load_baseline(path, python):
    """The default loop's results recorded by an earlier run with this
    interpreter (they do not depend on goaio's backend), by module."""
    if not path or not os.path.exists(path):
        return {}
    with open(path) as f:
        data = json.load(f)
    return data["modules"] if data.get("python") == python else {}


def _save_baseline(path, python, baseline):
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump({"python": python, "modules": baseline}, f)
    os.replace(tmp, path)


def compare(modules, backend, per_test_timeout, module_timeout, python, verbose, jobs=2, baseline=None):
    from concurrent.futures import ThreadPoolExecutor

    rows = []
    regressions = []
    known = _load_baseline(baseline, python)
    with ThreadPoolExecutor(jobs) as ex:
        futs = {(m, k): ex.submit(spawn, m, k, backend, per_test_timeout, module_timeout, python)
                for m in modules for k in ("default", "goaio")
                if not (k == "default" and m in known)}
        for m in modules:
            d = known[m] if m in known else futs[(m, "default")].result()
            g = futs[(m, "goaio")].result()
            reg = []
            failed = [tid for tid, oc in ({} if g.get("crashed") else d["outcomes"]).items()
                      if oc in PASSING and g["outcomes"].get(tid, "missing") not in PASSING]
            # a test that fails once on goaio's loop is run again, alone with
            # the other failures, up to RERUNS times: one that then passes is
            # reported as flaky (printed, and in the report), not a regression
            g["flaky"] = []
            for _ in range(RERUNS):
                if not failed:
                    break
                again = spawn(m, "goaio", backend, per_test_timeout, module_timeout, python, failed)
                passed = [t for t in failed if again.get("outcomes", {}).get(t) in PASSING]
                g["flaky"] += passed
                failed = [t for t in failed if t not in passed]
            for tid in failed:
                reg.append((tid, g["outcomes"].get(tid, "missing")))
            if g.get("crashed"):
                reg.append((f"{m} (whole module)", "crashed: " + g.get("stderr", "")[-500:]))
            for tid, cls in g.get("not_goaio", []):
                reg.append((tid, f"ran a non-goaio selector loop {cls}"))
            rows.append((m, d, g, reg))
            regressions += [(m, tid, oc, g.get("details", {}).get(tid, "")) for tid, oc in reg]
    if baseline:
        fresh = {m: d for m, d, _g, _r in rows if m not in known and not d.get("crashed")}
        if fresh:
            _save_baseline(baseline, python, {**known, **fresh})
    return rows, regressions


def fmt_counts(r):
    if r.get("crashed"):
        return "CRASHED"
    c = r["counts"]
    total = sum(c.values())
    return (f"{total:4d} tests: {c.get('pass', 0):4d} pass {c.get('fail', 0):3d} fail "
            f"{c.get('error', 0):3d} error {c.get('skip', 0) + c.get('xfail', 0):3d} skip ({r.get('seconds', 0)}s)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("modules", nargs="*", help=f"test_asyncio modules (default: {' '.join(MODULES)})")
    ap.add_argument("--quick", action="store_true", help=f"only {' '.join(QUICK)}")
    ap.add_argument("--backend", default=os.environ.get("GOAIO_BACKEND", ""),
                    help="goaio backend for goaio's loop: pure, epoll, kqueue (default: auto)")
    ap.add_argument("--loop", choices=("goaio", "default"), help="(internal) one run in this process")
    ap.add_argument("--module", help="(internal) the module of a single run")
    ap.add_argument("--json", help="(internal) where a single run writes its result")
    ap.add_argument("--only", help="(internal) comma-separated test ids: run just these")
    ap.add_argument("--per-test-timeout", type=int, default=60)
    ap.add_argument("--module-timeout", type=int, default=900)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--report", help="write the comparison as JSON here")
    ap.add_argument("--baseline", help="a file of the default loop's results: those of a module it holds "
                    "(for this interpreter) are taken from it, not run again; the others are added to it")
    ap.add_argument("-v", "--verbose", action="store_true", help="show each regression's traceback")
    a = ap.parse_args(argv)
    if a.loop:
        if a.module in REFUSED:
            ap.error(f"{a.module}: not run, {REFUSED[a.module]}")
        run_one(a.module, a.loop, a.backend, a.per_test_timeout, a.json,
                a.only.split(",") if a.only else None)
        return 0
    modules = a.modules or (QUICK if a.quick else MODULES)
    refused = [m for m in modules if m in REFUSED]
    if refused:
        ap.error("; ".join(f"{m}: not run, {REFUSED[m]}" for m in refused))
    rows, regressions = compare(modules, a.backend, a.per_test_timeout, a.module_timeout, a.python,
                                a.verbose, a.jobs, a.baseline)
    be = a.backend or "auto"
    print(f"python {rows[0][1].get('python', '?') if rows else '?'}, goaio backend {be}")
    for m, d, g, reg in rows:
        print(f"{m:20s} default: {fmt_counts(d)}")
        print(f"{'':20s} goaio:   {fmt_counts(g)}   regressions: {len(reg)}")
        for tid in g.get("flaky", []):
            print(f"{'':20s} flaky on goaio's loop (failed, then passed on a re-run): {tid}")
        if g.get("running_loops"):
            print(f"{'':20s} loops that ran on the goaio side: {g['running_loops']}, "
                  f"goaio transports made: {g.get('goaio_transports', 0)}, "
                  f"sock_* waits on goaio: {g.get('goaio_sock_binds', 0)} binds, "
                  f"{g.get('goaio_sock_waits', 0)} connect/accept")
    if regressions:
        print(f"\n{len(regressions)} regression(s) (pass on the default loop, not on goaio's):")
        for m, tid, oc, tb in regressions:
            print(f"  {tid}: {oc}")
            if a.verbose and tb:
                print("    " + tb.replace("\n", "\n    "))
    if a.report:
        with open(a.report, "w") as f:
            json.dump([{"module": m, "default": d.get("counts"), "goaio": g.get("counts"),
                        "running_loops": g.get("running_loops"),
                        "goaio_transports": g.get("goaio_transports", 0),
                        "flaky": g.get("flaky", []),
                        "regressions": reg} for m, d, g, reg in rows], f, indent=1)
    return 1 if regressions else 0


if __name__ == "__main__":
    sys.exit(main())
