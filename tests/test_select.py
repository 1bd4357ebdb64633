"""Backend selection (GOAIO_BACKEND, read once at import) and the public API.

Each case runs in a fresh interpreter, since the choice is made at import.
"""

import pytest

import goaio
from goaio import _select
from support import LINUX, run_python

VALID = ("auto", "compiled", "epoll", "kqueue", "pure")

SHOW = (
    "import goaio, sys\n"
    "print(goaio.BACKEND)\n"
    "print(goaio.AIOService.__module__)\n"
    "print(repr(goaio.BACKEND_FALLBACK_REASON))\n"
)

# In the child: make the compiled module unimportable, as if it were not built.
BLOCK_EPOLL = "import sys; sys.modules['goaio._epoll'] = None\n"


def show(value, prelude=""):
    proc = run_python(prelude + SHOW, backend_name=value)
    assert proc.returncode == 0, proc.stderr
    backend, module, reason = proc.stdout.split("\n")[:3]
    return backend, module, reason


def import_error(value, prelude=""):
    proc = run_python(prelude + "import goaio", backend_name=value)
    assert proc.returncode != 0, f"GOAIO_BACKEND={value!r} imported: {proc.stdout}"
    assert "ImportError" in proc.stderr, proc.stderr
    return proc.stderr


@pytest.mark.parametrize("value", ["bogus", "Epol", "1", "uvloop", "0"])
def test_bogus_value_is_import_error_listing_valid_values(value):
    err = import_error(value)
    last = err.strip().splitlines()[-1]
    assert last.startswith("ImportError"), err
    for name in VALID:
        assert name in last, f"{name!r} not listed in: {last}"


def test_pure_value_loads_pure():
    backend, module, reason = show("pure")
    assert backend == "pure"
    assert module.startswith("goaio._pure"), module
    assert reason == "None"


def test_pure_value_service_is_pure_module():
    proc = run_python(
        "import goaio, goaio._pure as p\n"
        "assert goaio.AIOService is p.AIOService\n"
        "assert goaio.AIOConn is p.AIOConn\n"
        "assert goaio.AIOResult is p.AIOResult\n"
        "assert goaio.BufferPool is p.BufferPool\n"
        "print('ok')",
        backend_name="pure",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


@pytest.mark.skipif(not LINUX, reason="epoll is the compiled backend on Linux")
@pytest.mark.parametrize("value", ["compiled", "epoll"])
def test_compiled_values_load_epoll_on_linux(value):
    proc = run_python(
        "import goaio, goaio._epoll as e\n"
        "assert goaio.AIOService is e.AIOService\n"
        "assert goaio.BufferPool is e.BufferPool\n"
        "print(goaio.BACKEND, goaio.BACKEND_FALLBACK_REASON)",
        backend_name=value,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["epoll", "None"]


@pytest.mark.skipif(not LINUX, reason="epoll is the compiled backend on Linux")
@pytest.mark.parametrize("value", [None, "auto"])
def test_auto_prefers_epoll_on_linux(value):
    """The default import picks the compiled backend (multidict's test_c_extension_preferred_by_default)."""
    backend, module, reason = show(value)
    assert backend == "epoll", (backend, reason)
    assert module.startswith("goaio._epoll"), module
    assert reason == "None"


@pytest.mark.skipif(not LINUX, reason="epoll is the compiled backend on Linux")
def test_auto_falls_back_to_pure_and_says_why():
    backend, module, reason = show("auto", prelude=BLOCK_EPOLL)
    assert backend == "pure"
    assert reason not in ("None", "''"), reason
    assert "epoll" in reason


@pytest.mark.skipif(not LINUX, reason="epoll is the compiled backend on Linux")
@pytest.mark.parametrize("value", ["compiled", "epoll"])
def test_forced_compiled_never_falls_back(value):
    err = import_error(value, prelude=BLOCK_EPOLL)
    last = err.strip().splitlines()[-1]
    assert last.startswith("ImportError"), err
    assert "epoll" in last, last


@pytest.mark.skipif(not LINUX, reason="on Linux kqueue exists only in a special test build")
def test_kqueue_on_linux_is_import_error_unless_built():
    proc = run_python("import goaio; print(goaio.BACKEND)", backend_name="kqueue")
    probe = run_python("import goaio._kqueue", backend_name="pure")
    if probe.returncode == 0:  # the special test build
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "kqueue"
    else:
        assert proc.returncode != 0
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("ImportError"), proc.stderr
        # not "build it first": no build makes it on Linux
        assert "not built on linux" in last, last
        assert "macOS" in last, last
        assert "pip install" not in last, last


@pytest.mark.skipif(not LINUX, reason="on Linux kqueue exists only in a special test build")
def test_kqueue_on_linux_message_when_the_emulation_build_is_absent():
    """The emulation build made or not, a missing goaio._kqueue on Linux is
    'not built on this OS'."""
    err = import_error("kqueue", prelude="import sys; sys.modules['goaio._kqueue'] = None\n")
    last = err.strip().splitlines()[-1]
    assert "not built on linux" in last and "pip install" not in last, last


def raise_on_import(module, exc):
    """A child prelude: importing ``module`` raises ``exc`` (source text), as a
    backend would that calls something this platform lacks."""
    return (
        "import sys, importlib.abc\n"
        "class _Raise(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        f"        if name == {module!r}:\n"
        f"            raise {exc}\n"
        "        return None\n"
        "sys.meta_path.insert(0, _Raise())\n"
    )


@pytest.mark.skipif(_select.native_backend() is None, reason="no compiled backend for this OS")
@pytest.mark.parametrize("exc", ["RuntimeError('boom')", "AttributeError('boom: no EPOLLIN')",
                                 "OSError(38, 'boom')"])
def test_auto_falls_back_when_the_compiled_import_raises_anything(exc):
    """Any exception raised while importing a backend is an ImportError that
    names it: ``auto`` falls back, with that reason, instead of crashing."""
    native = _select.native_backend()
    backend, module, reason = show("auto", prelude=raise_on_import(f"goaio._{native}", exc))
    assert backend == "pure", reason
    cls = exc.split("(")[0]
    assert f"{cls}: " in reason and "boom" in reason, reason


@pytest.mark.skipif(_select.native_backend() is None, reason="no compiled backend for this OS")
def test_forced_compiled_import_that_raises_is_import_error_naming_it():
    native = _select.native_backend()
    err = import_error(native, prelude=raise_on_import(f"goaio._{native}", "RuntimeError('boom')"))
    last = err.strip().splitlines()[-1]
    assert last.startswith("ImportError"), err
    assert "RuntimeError: boom" in last, last


def test_pure_import_that_raises_is_import_error_naming_it():
    err = import_error("pure", prelude=raise_on_import("goaio._pure", "AttributeError('EPOLLIN')"))
    last = err.strip().splitlines()[-1]
    assert last.startswith("ImportError"), err
    assert "AttributeError: EPOLLIN" in last, last


def test_keyboard_interrupt_at_import_is_not_swallowed():
    """Only Exceptions become ImportError: a Ctrl-C during the import stays one."""
    proc = run_python(raise_on_import("goaio._pure", "KeyboardInterrupt") + "import goaio",
                      backend_name="pure")
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == "KeyboardInterrupt", proc.stderr


def test_optional_backends_join_when_built():
    """kqueue on Linux exists only in a special test build: absent, it is one skip."""
    import conftest

    for name in conftest.OPTIONAL_BACKENDS:
        if name not in conftest.BACKENDS:
            pytest.skip(f"goaio._{name} is not built here: its tests do not run")
        assert name in conftest.BACKENDS


def test_required_backends_are_parametrized():
    import conftest

    assert conftest.BACKENDS[: len(conftest.REQUIRED_BACKENDS)] == conftest.REQUIRED_BACKENDS
    assert "pure" in conftest.BACKENDS
    if LINUX:
        assert "epoll" in conftest.REQUIRED_BACKENDS


def test_backend_is_a_known_name():
    assert goaio.BACKEND in ("epoll", "kqueue", "pure")
    assert goaio.AIOService is getattr(__import__(f"goaio._{goaio.BACKEND}", fromlist=["x"]), "AIOService")


def test_selector_valid_values():
    assert set(_select.VALID) == set(VALID)


def test_public_api_is_complete(backend):
    for name in goaio.__all__:
        assert hasattr(goaio, name), name
    for name in _select.BACKEND_API:
        assert hasattr(backend.module, name), f"goaio._{backend.name} lacks {name}"
    assert goaio.DEFAULT_RECV_BUFF_SIZE == 4096


ERRORS = {
    "ConnClosed": (),
    "ServiceClosed": (),
    "Busy": (),
    "UnsupportedConn": (TypeError,),
    "RecvTimeout": (TimeoutError,),
    "SendTimeout": (TimeoutError,),
    "EmptyBuffer": (ValueError,),
}


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_error_classes(name):
    cls = getattr(goaio, name)
    assert issubclass(cls, goaio.Error)
    assert issubclass(goaio.Error, Exception)
    for base in ERRORS[name]:
        assert issubclass(cls, base), f"{name} is not a {base.__name__}"
    # Nothing else sneaks in: ConnClosed is not an OSError, Busy not a TimeoutError...
    allowed = ERRORS[name] + ((OSError,) if TimeoutError in ERRORS[name] else ())
    for other in (OSError, TimeoutError, ValueError, TypeError):
        if other not in allowed:
            assert not issubclass(cls, other), f"{name} is a {other.__name__}"


def test_backends_share_error_classes(backend):
    """A compiled backend must not define its own copies of the error classes."""
    for name in ERRORS:
        own = getattr(backend.module, name, None)
        if own is not None:
            assert own is getattr(goaio, name), f"goaio._{backend.name}.{name} is not goaio.{name}"
