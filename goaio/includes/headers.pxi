# Declarations included first by every compiled backend module.
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.string cimport memset, memcpy
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_DECREF, Py_XDECREF
from cpython.buffer cimport (PyObject_GetBuffer, PyBuffer_Release, PyObject_CheckBuffer,
                             PyBuffer_IsContiguous, PyBUF_WRITABLE, PyBUF_C_CONTIGUOUS,
                             PyBUF_FULL, PyBUF_FULL_RO)
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.mem cimport PyMem_RawMalloc, PyMem_RawFree, PyMem_RawRealloc
from cpython.exc cimport PyErr_CheckSignals

cdef extern from "Python.h" nogil:
    unsigned long PyThread_get_thread_ident()

from goaio.includes.posix cimport *

cdef extern from "includes/compat.h" nogil:
    uint64_t GOAIO_WAKE_ID
    bint goaio_would_block(int e)
from goaio.includes.net cimport *
from goaio.includes.openssl cimport *
