"""Fixtures shared by the goaio test suite.

Every behavioural test takes the session-scoped ``backend`` fixture, which is
parametrized over every backend that must (or may) exist here:

* ``pure``   -- always;
* the compiled backend of this OS (``epoll`` on Linux, ``kqueue`` on
  macOS/BSD) -- always *imported*, never skipped: if it is not built, its
  tests error, because a compiled backend that should exist but does not
  build is a defect;
* ``kqueue`` on Linux -- only in a special test build; its absence is a skip.

All IO runs over real loopback sockets (127.0.0.1, ::1, AF_UNIX); nothing is
mocked.
"""

import faulthandler
import importlib
import os
import runpy
import sys
import types

import pytest

# --------------------------------------------------------------------------
# test-only platform switches, applied before goaio is imported
# --------------------------------------------------------------------------

#: GOAIO_TEST_HIDE_EPOLL=1: select.epoll, the EPOLL* constants and os.eventfd
#: are deleted before goaio is imported, here and in every child interpreter,
#: so that the pure backend runs as on a platform without them (it then picks
#: poll). Run only the pure tests so: ``GOAIO_TEST_HIDE_EPOLL=1 pytest -k pure``.
HIDE_EPOLL = os.environ.get("GOAIO_TEST_HIDE_EPOLL", "")
if HIDE_EPOLL not in ("", "0", "1"):
    raise RuntimeError(f"GOAIO_TEST_HIDE_EPOLL={HIDE_EPOLL!r}: use 1 (or 0, or leave it unset)")
if HIDE_EPOLL == "1":
    _hide_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_hide_epoll")
    runpy.run_path(os.path.join(_hide_dir, "sitecustomize.py"))
    os.environ["PYTHONPATH"] = _hide_dir + (
        os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
    assert "goaio" not in sys.modules, "goaio was imported before tests/conftest.py hid epoll"

#: GOAIO_PURE_POLLER=epoll|kqueue|poll|select forces the pure backend's poller
#: (read by every AIOService the pure backend makes; children inherit it).
PURE_POLLER = os.environ.get("GOAIO_PURE_POLLER", "").strip().lower()

from goaio import _select  # noqa: E402 - after the switches above
from support import FAMILIES, Pairs, assert_service_drained, close_service, family_available

try:  # keep property tests few and quick; never write a database into the tree
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "goaio",
        max_examples=12,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    settings.load_profile("goaio")
except ImportError:  # pragma: no cover - hypothesis is a test dependency
    pass

NATIVE = _select.native_backend()


def _importable(name):
    try:
        importlib.import_module(f"goaio._{name}")
    except ImportError:
        return False
    return True


#: Backends whose absence is an error: imported by the fixture, never skipped.
REQUIRED_BACKENDS = ["pure"] + ([NATIVE] if NATIVE else [])
#: Backends that join only when built (kqueue on Linux: a special test build).
#: Their absence is reported once, as a skip, by test_select.py.
OPTIONAL_BACKENDS = ["kqueue"] if NATIVE == "epoll" else []
BACKENDS = REQUIRED_BACKENDS + [b for b in OPTIONAL_BACKENDS if _importable(b)]


# --------------------------------------------------------------------------
# hang guard
# --------------------------------------------------------------------------

#: Last resort when a test hangs where pytest-timeout's SIGALRM cannot reach
#: it (the main thread stuck in compiled code that never checks for signals):
#: dump every thread's stack and exit.
HANG_LIMIT = 150
_hang_file = None


def pytest_configure(config):
    global _hang_file
    # Capture is suspended during configure: this is the real stderr.
    _hang_file = os.fdopen(os.dup(sys.stderr.fileno()), "w")


def pytest_unconfigure(config):
    if _hang_file is not None:
        _hang_file.close()


@pytest.fixture(autouse=True)
def _hang_guard():
    faulthandler.dump_traceback_later(HANG_LIMIT, exit=True, file=_hang_file)
    yield
    faulthandler.cancel_dump_traceback_later()


# --------------------------------------------------------------------------
# backend
# --------------------------------------------------------------------------

def load_backend(name):
    """The namespace the ``backend`` fixture yields for backend ``name``."""
    mod = importlib.import_module(f"goaio._{name}")
    return types.SimpleNamespace(
        name=name,
        module=mod,
        AIOService=mod.AIOService,
        AIOConn=mod.AIOConn,
        AIOResult=mod.AIOResult,
        BufferPool=mod.BufferPool,
    )


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request):
    # A required backend that does not import makes each of its tests ERROR.
    return load_backend(request.param)


@pytest.fixture
def pairs():
    """Factory of connected loopback pairs: ``to_bind, peer = pairs("tcp")``."""
    p = Pairs()
    yield p
    p.close()


@pytest.fixture(params=FAMILIES)
def family(request):
    if not family_available(request.param):
        pytest.skip(f"{request.param} is not available here")
    return request.param


# --------------------------------------------------------------------------
# services
# --------------------------------------------------------------------------

@pytest.fixture
def svc(backend, pairs):
    """A one-worker service; closed at teardown, which checks it drained.

    It depends on ``pairs`` so that the sockets are closed only after the
    service (bound sockets belong to their connection until it closes).
    """
    s = backend.AIOService()
    yield s
    close_service(s)
    assert_service_drained(s)


@pytest.fixture
def bind(svc, pairs):
    """``svc.bind`` for the ``svc`` fixture, holding the connection until the
    service is closed at teardown (an idle connection dropped unclosed warns)."""

    def bind(sock, *args, **opts):
        return pairs.keep(svc.bind(sock, *args, **opts))

    return bind


@pytest.fixture
def connect(bind, pairs):
    """``conn, peer = connect(family="tcp", small=False, **bind_options)``."""

    def make(family="tcp", small=False, **opts):
        sock, peer = pairs(family, small=small)
        return bind(sock, **opts), peer

    return make




#: Tests that hold more descriptors than select() can watch (fd numbers below
#: FD_SETSIZE, 1024): their pure case is skipped with GOAIO_PURE_POLLER=select.
NEEDS_MANY_FDS = frozenset({
    "test_idle_connections_hold_no_pool_buffer",   # test_pool.py: 1000 pairs
    "test_pingpong_1000_with_churn",               # test_stress.py: 1000 pairs
})


def _backend_of(item):
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("backend") if callspec is not None else None


def pytest_collection_modifyitems(config, items):
    """Long stress runs (``@pytest.mark.slow``) run only when selected with
    ``-m slow``; with the select poller forced, the pure case of a test that
    needs more than FD_SETSIZE descriptors is skipped."""
    if PURE_POLLER == "select":
        fds = pytest.mark.skip(reason="needs fds >= FD_SETSIZE, which select() cannot watch")
        for item in items:
            if getattr(item, "originalname", None) in NEEDS_MANY_FDS and _backend_of(item) == "pure":
                item.add_marker(fds)
    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


# --------------------------------------------------------------------------
# TLS (tests/tls_support.py)
# --------------------------------------------------------------------------

@pytest.fixture(scope="session")
def tls_certs(tmp_path_factory):
    """The test CA, server, untrusted and client certificates (made once per
    session with the openssl command line tool): a tls_support.Certs."""
    import tls_support

    if not tls_support.openssl_available():
        pytest.fail("the TLS tests need the openssl command line tool")
    return tls_support.make_certs(str(tmp_path_factory.mktemp("tls-certs")))
