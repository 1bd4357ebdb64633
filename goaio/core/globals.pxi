# core/globals.pxi -- the Python modules and shared values the core uses.

cimport cython

import os as _os
import threading as _threading
import warnings as _warnings
import weakref as _weakref
import atexit as _atexit

from goaio._errors import (ConnClosed, ServiceClosed, Busy, RecvTimeout, SendTimeout,
                           EmptyBuffer, oserror as _oserror)
from goaio import _common

cdef object _check_socket = _common.check_socket
cdef object _make_option = _common.make_option
cdef object _bound_fds = _common.bound_fds
cdef Py_ssize_t DEFAULT_RECV_BUFF_SIZE = _common.DEFAULT_RECV_BUFF_SIZE
cdef set _live_services = set()      # weakrefs to every AIOService not yet closed (core/fork.pxi)
