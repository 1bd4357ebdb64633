# cython: language_level=3, embedsignature=True
"""The compiled goaio backend for Linux: epoll_wait, readv/writev, IO without the GIL."""

include "includes/headers.pxi"
include "_consts.pxi"
include "_poller_epoll.pxi"
include "_core.pxi"

BACKEND_NAME = "epoll"
