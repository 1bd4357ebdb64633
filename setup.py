"""Build the compiled goaio backends (Cython >= 3).

Environment switches (all optional):
  GOAIO_DEBUG=1            -O0 -g3 (sanitizer and debugger builds)
  GOAIO_ASAN=1             AddressSanitizer (implies GOAIO_DEBUG); run with LD_PRELOAD=libasan
  GOAIO_KQUEUE_EMULATION=1 also build goaio._kqueue on Linux from tests/kqueue_emu/ (the
                           test-only emulation of kqueue()/kevent() over epoll and the
                           test hooks; never the default, own build directory)
  GOAIO_NO_EXT=1           build no extension (pure-Python backend only)
"""

import os
import sys

from setuptools import Extension, setup


def flag(name):
    v = os.environ.get(name, "").strip().lower()
    if v in ("", "0", "no", "false", "off"):
        return False
    if v in ("1", "yes", "true", "on"):
        return True
    raise SystemExit(f"{name}={v!r}: use 1 or 0")


KQUEUE_HEADERS = ["goaio/includes/kqueue.h", "goaio/includes/compat.h"]
EMULATION_DIR = "tests/kqueue_emu"   # test-only: the kqueue emulation and the test hooks


def extensions():
    if flag("GOAIO_NO_EXT"):
        return []
    from Cython.Build import cythonize

    debug = flag("GOAIO_DEBUG") or flag("GOAIO_ASAN")
    cflags = ["-O0", "-g3"] if debug else ["-O2"]
    ldflags = []
    macros = []
    if flag("GOAIO_ASAN"):
        cflags += ["-fsanitize=address", "-fno-omit-frame-pointer"]
        ldflags += ["-fsanitize=address"]
    common = dict(
        include_dirs=["goaio"],
        extra_compile_args=cflags + ["-Wno-unused-function"],
        extra_link_args=ldflags,
        define_macros=macros,
    )
    exts = []
    if sys.platform.startswith("linux"):
        exts.append(Extension("goaio._epoll", ["goaio/_epoll.pyx"], **common))
        if flag("GOAIO_KQUEUE_EMULATION"):
            emu = dict(common)
            emu["define_macros"] = macros + [("GOAIO_KQUEUE_EMULATION", "1")]
            emu["include_dirs"] = common["include_dirs"] + [EMULATION_DIR]
            exts.append(Extension("goaio._kqueue", [f"{EMULATION_DIR}/_kqueue.pyx", f"{EMULATION_DIR}/kqueue_emu.c"],
                                  depends=KQUEUE_HEADERS + [f"{EMULATION_DIR}/kqueue_emu.h"], **emu))
    elif sys.platform == "darwin" or "bsd" in sys.platform:
        exts.append(Extension("goaio._kqueue", ["goaio/_kqueue.pyx"], depends=KQUEUE_HEADERS, **common))
    return cythonize(
        exts,
        compiler_directives={"language_level": 3, "embedsignature": True},
        include_path=["."],
        # the emulation build's generated C stays out of the source tree
        build_dir=os.path.join("build", "kqueue-emulation", "cython") if flag("GOAIO_KQUEUE_EMULATION") else None,
    )


def build_options():
    """An emulation build keeps its own build directory, so a later plain build
    (or wheel) can never pick its goaio._kqueue up from build/lib."""
    if sys.platform.startswith("linux") and flag("GOAIO_KQUEUE_EMULATION"):
        return {"build": {"build_base": os.path.join("build", "kqueue-emulation")}}
    return {}


setup(ext_modules=extensions(), options=build_options())
