# core/globals.pxi -- the Python modules and shared values the core uses.

cimport cython

import os as _os
import threading as _threading
import warnings as _warnings
import weakref as _weakref
import atexit as _atexit
import sys as _sys

from goaio._errors import (ConnClosed, ServiceClosed, Busy, RecvTimeout, SendTimeout,
                           EmptyBuffer, oserror as _oserror)
from goaio import _common

cdef object _check_socket = _common.check_socket
cdef object _make_option = _common.make_option
cdef object _bound_fds = _common.bound_fds
cdef Py_ssize_t DEFAULT_RECV_BUFF_SIZE = _common.DEFAULT_RECV_BUFF_SIZE
cdef set _live_services = set()      # weakrefs to every AIOService not yet closed (core/fork.pxi)

# Every message and tunable shared with the pure backend comes from
# goaio/_messages.py, read once at import into C-level globals.
from goaio import _messages

cdef str MSG_SERVICE_CLOSED = _messages.SERVICE_CLOSED
cdef str MSG_CONN_CLOSED = _messages.CONN_CLOSED
cdef str MSG_PEER_CLOSED = _messages.PEER_CLOSED
cdef str MSG_RECV_TIMEOUT = _messages.RECV_TIMEOUT
cdef str MSG_SEND_TIMEOUT = _messages.SEND_TIMEOUT
cdef str MSG_EMPTY_SEND = _messages.EMPTY_SEND
cdef str MSG_EMPTY_RECV = _messages.EMPTY_RECV
cdef str MSG_EMPTY_LIST = _messages.EMPTY_LIST
cdef str MSG_RECVQ_FULL = _messages.RECVQ_FULL
cdef str MSG_SENDQ_FULL = _messages.SENDQ_FULL
cdef str MSG_NOT_CONTIGUOUS = _messages.NOT_CONTIGUOUS
cdef str MSG_NOT_BUFFER = _messages.NOT_BUFFER
cdef str MSG_READ_ONLY = _messages.READ_ONLY
cdef str MSG_RECV_FULL_NEEDS_BUFFER = _messages.RECV_FULL_NEEDS_BUFFER
cdef str MSG_REASON_TYPE = _messages.REASON_TYPE
cdef str MSG_SHARE_EMPTY = _messages.SHARE_EMPTY
cdef str MSG_SHARE_UNUSABLE = _messages.SHARE_UNUSABLE
cdef str MSG_POOL_FOREIGN = _messages.POOL_FOREIGN
cdef str MSG_POOL_RESIZED = _messages.POOL_RESIZED
cdef str MSG_NOT_MADE_BY_BIND = _messages.NOT_MADE_BY_BIND

# tunables (seconds in _messages, ns here)
cdef int64_t WORKER_GRACE_NS = <int64_t>(_messages.WORKER_GRACE * 1e9)
cdef int64_t MAX_WAIT_NS = <int64_t>(_messages.MAX_WAIT * 1e9)
cdef int POLL_BATCH_N = max(1, min(<int>_messages.POLL_BATCH, POLL_BATCH_MAX))
