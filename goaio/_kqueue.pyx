# cython: language_level=3, embedsignature=True
"""The compiled goaio backend for macOS/BSD: kevent, readv/writev, IO without the GIL.

On Linux it is built only for tests (GOAIO_KQUEUE_EMULATION=1), over an
emulation of kqueue in C (docs/kqueue.md)."""
# Layout (docs/architecture.md): C declarations in includes/, the per-OS
# poller in pollers/, the engine in core/ (core/engine.pxi lists its units
# in order). docs/architecture.md holds the state table and the lock order.
# The emulation build compiles tests/kqueue_emu/_kqueue.pyx instead: this
# file plus the test hooks.

include "includes/headers.pxi"
include "core/consts.pxi"
include "pollers/kqueue.pxi"
include "core/engine.pxi"

BACKEND_NAME = "kqueue"
