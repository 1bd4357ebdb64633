# cython: language_level=3, embedsignature=True
"""The compiled goaio backend for Linux: epoll_wait, readv/writev, IO without the GIL."""
# Layout (docs/architecture.md): C declarations in includes/, the per-OS
# poller in pollers/, the engine in core/ (core/engine.pxi lists its units
# in order). docs/architecture.md holds the state table and the lock order.

include "includes/headers.pxi"
include "core/consts.pxi"
include "pollers/epoll.pxi"
include "core/engine.pxi"

BACKEND_NAME = "epoll"
