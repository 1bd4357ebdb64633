"""The backend selector: reads GOAIO_BACKEND once, strictly.

Every backend module must provide every name in ``BACKEND_API``; a backend
missing one fails at import, never later in a user's program.
"""

import importlib
import sys

#: The names each backend module provides; ``goaio`` re-exports exactly these.
BACKEND_API = ("AIOService", "AIOConn", "AIOResult", "BufferPool", "Listener")

#: The values GOAIO_BACKEND accepts.
VALID = ("auto", "compiled", "epoll", "kqueue", "pure")


def native_backend():
    """The compiled backend for this OS, or None if it has none."""
    if sys.platform.startswith("linux"):
        return "epoll"
    if sys.platform == "darwin" or "bsd" in sys.platform:
        return "kqueue"
    return None


def _load(name):
    """Import backend ``name``. Whatever its import raises (a platform that
    lacks a call it needs, say) becomes an ImportError naming the cause, so
    that ``auto`` falls back with a reason instead of crashing."""
    try:
        mod = importlib.import_module(f"goaio._{name}")
    except ImportError:
        raise
    except Exception as exc:
        raise ImportError(
            f"goaio backend {name!r} failed to import: {type(exc).__name__}: {exc}"
        ) from exc
    missing = [n for n in BACKEND_API if not hasattr(mod, n)]
    if missing:
        raise ImportError(f"goaio backend {name!r} lacks {', '.join(missing)}")
    return mod


def _not_built(exc, name):
    """Whether ``exc`` says that goaio._<name> itself does not exist."""
    return isinstance(exc, ModuleNotFoundError) and exc.name == f"goaio._{name}"


#: Where setup.py builds each compiled backend.
BUILT_ON = {"epoll": "Linux", "kqueue": "macOS and BSD"}


def _compiled(name, why):
    try:
        return _load(name)
    except ImportError as exc:
        if name != native_backend() and _not_built(exc, name):
            # kqueue on Linux, epoll on macOS: no build makes it here (but a
            # kqueue emulation test build on Linux does make goaio._kqueue)
            msg = (f"GOAIO_BACKEND={why}: the compiled {name!r} backend is not built on "
                   f"{sys.platform}: goaio builds it only on {BUILT_ON[name]} ({exc})")
        else:
            msg = (f"GOAIO_BACKEND={why}: the compiled {name!r} backend is not available "
                   f"({exc}); build it first: pip install .")
        raise ImportError(msg) from exc


def select(value):
    """Return (module, name, fallback_reason) for a GOAIO_BACKEND value."""
    raw = value
    value = (value or "auto").strip().lower()
    if value not in VALID:
        raise ImportError(
            f"GOAIO_BACKEND={raw!r} is not valid; use one of: {', '.join(VALID)} (or leave it unset)"
        )
    native = native_backend()
    if value == "pure":
        return _load("pure"), "pure", None
    if value in ("epoll", "kqueue"):
        return _compiled(value, value), value, None
    if value == "compiled":
        if native is None:
            raise ImportError(f"GOAIO_BACKEND=compiled: goaio has no compiled backend for {sys.platform}")
        return _compiled(native, "compiled"), native, None
    # auto
    if native is not None:
        try:
            return _load(native), native, None
        except ImportError as exc:
            reason = f"the compiled {native!r} backend could not be imported: {exc}"
    else:
        reason = f"no compiled backend for {sys.platform}"
    return _load("pure"), "pure", reason
