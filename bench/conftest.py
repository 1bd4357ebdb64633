"""Fixtures of the goaio benchmarks (pytest-benchmark).

    python -m pytest bench/ --benchmark-group-by=group [--benchmark-save=NAME]
    python -m pytest bench/ -k micro --benchmark-compare

Not part of the default test run (``testpaths = ["tests"]``). Backends are
found with importlib: ``goaio._pure`` always, ``goaio._epoll`` when built;
an unbuilt one, or a peer that is not installed (uvloop), is skipped with the
reason. The echo and memory benchmarks use the machinery of
``python -m goaio bench``: each server in its own process on a free
127.0.0.1 port, the load client in another (C when a compiler is found).

Options: ``--echo-rounds N`` (timed rounds per echo case, default 3),
``--idle-conns N`` (default 10000), ``--bench-client auto|c|python``.
"""

import glob
import importlib
import importlib.machinery
import os
import socket
import sys

import pytest


def _prefer_installed_goaio():
    """``python -m pytest bench/`` from a checkout puts the checkout first on
    sys.path, and its source tree has no compiled module unless one was built
    in place: the benchmarks would measure the pure backend only. When the
    goaio installed in this interpreter has the compiled module and the
    checkout does not, drop the checkout from sys.path (before anything
    imports goaio). Returns the reason, or None."""
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    native = "_epoll" if sys.platform.startswith("linux") else "_kqueue"

    def compiled(pkg_dir):
        return any(glob.glob(os.path.join(pkg_dir, native + suffix))
                   for suffix in importlib.machinery.EXTENSION_SUFFIXES)

    if "goaio" in sys.modules or not os.path.isdir(os.path.join(checkout, "goaio")):
        return None
    if compiled(os.path.join(checkout, "goaio")):
        return None
    others = [p for p in sys.path if os.path.abspath(p or os.curdir) != checkout]
    spec = importlib.machinery.PathFinder.find_spec("goaio", others)
    if spec is None or not spec.submodule_search_locations:
        return None
    installed = list(spec.submodule_search_locations)[0]
    if not compiled(installed):
        return None
    sys.path[:] = others
    return f"the checkout {checkout} has no compiled goaio.{native}: benchmarking the installed {installed}"


PREFERRED = _prefer_installed_goaio()

from benchsupport import SUMMARY, start_server  # noqa: E402  (after the sys.path choice)

from goaio._bench import client as clientmod  # noqa: E402
from goaio._bench import servers as srvmod  # noqa: E402

BACKENDS = ["pure", "epoll"]


def pytest_addoption(parser):
    group = parser.getgroup("goaio bench")
    group.addoption("--echo-rounds", type=int, default=3, help="timed rounds per echo case (default 3)")
    group.addoption("--idle-conns", type=int, default=10000,
                    help="connections of the idle-memory benchmarks (default 10000)")
    group.addoption("--bench-client", default="auto", choices=("auto", "c", "python"),
                    help="load client of the echo benchmarks (default auto: C if a compiler is found)")


def pytest_report_header(config):
    try:
        _, kind, note = clientmod.client_command(config.getoption("--bench-client"))
    except clientmod.ClientError as exc:
        kind, note = "none", str(exc)
    import goaio

    lines = [f"goaio bench: goaio {goaio.__file__} (backend {goaio.BACKEND})"
             + (f"; {PREFERRED}" if PREFERRED else ""),
             f"goaio bench: {kind} load client" + (f" ({note})" if note else "")]
    missing = [f"{n} ({why})" for n in srvmod.DEFAULT for ok, why in [srvmod.availability(n)] if not ok]
    if missing:
        lines.append("goaio bench: skipped servers: " + "; ".join(missing))
    return lines


def pytest_terminal_summary(terminalreporter):
    """rps and bytes per idle connection, which the timing table cannot show."""
    if not SUMMARY:
        return
    terminalreporter.section("goaio bench figures (extra_info)")
    last = None
    for group, text in sorted(SUMMARY, key=lambda item: item[0]):
        if group != last:
            terminalreporter.write_line(f"{group}:")
            last = group
        terminalreporter.write_line(f"  {text}")


def load_backend(name):
    """The backend module ``goaio._<name>``, or a skip saying why not."""
    try:
        return importlib.import_module(f"goaio._{name}")
    except ImportError as exc:
        pytest.skip(f"goaio._{name} is not available: {exc}")


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request):
    return load_backend(request.param)


@pytest.fixture
def tcp_pair():
    """A connected pair of loopback TCP sockets, closed afterwards."""
    with socket.create_server(("127.0.0.1", 0)) as ls:
        a = socket.create_connection(ls.getsockname())
        b, _ = ls.accept()
    for s in (a, b):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    yield a, b
    a.close()
    b.close()


@pytest.fixture(scope="session")
def load_client(request):
    """The argv prefix of the load client."""
    try:
        prefix, _kind, _note = clientmod.client_command(request.config.getoption("--bench-client"))
    except clientmod.ClientError as exc:
        pytest.skip(str(exc))
    return prefix


@pytest.fixture(scope="session")
def echo_server(request):
    """A running echo server, shared by every echo case of that server
    (pytest orders the cases so that each server starts once)."""
    server = start_server(request.param)
    yield server
    server.close()
