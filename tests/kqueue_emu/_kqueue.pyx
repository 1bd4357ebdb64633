# cython: language_level=3, embedsignature=True
"""The compiled goaio backend for macOS/BSD, built on Linux over the test-only
emulation of kqueue (tests/kqueue_emu/kqueue_emu.c), with the test hooks that
tests/test_kqueue_emulation.py drives. Built only with GOAIO_KQUEUE_EMULATION=1
(setup.py), as goaio._kqueue; never part of a plain build or a wheel."""

include "../../goaio/_kqueue.pyx"
include "hooks.pxi"
