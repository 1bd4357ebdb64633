"""Build the compiled goaio backends (Cython >= 3).

Environment switches (all optional):
  GOAIO_DEBUG=1            -O0 -g3 (sanitizer and debugger builds)
  GOAIO_ASAN=1             AddressSanitizer (implies GOAIO_DEBUG); run with LD_PRELOAD=libasan
  GOAIO_KQUEUE_EMULATION=1 also build goaio._kqueue on Linux from tests/kqueue_emu/ (the
                           test-only emulation of kqueue()/kevent() over epoll and the
                           test hooks; never the default, own build directory)
  GOAIO_NO_EXT=1           build no extension (pure-Python backend only)
  GOAIO_REQUIRE_EXT=1      a compiled module that fails to build fails the install
                           (default: see OptionalBuildExt below; CI sets it)
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


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


class OptionalBuildExt(build_ext):
    """A compiled module that cannot be built (no C compiler, no Python
    headers) does not fail the install: in its place goes a one-line module
    that raises ImportError saying why, so `import goaio` picks the pure
    backend and goaio.BACKEND_FALLBACK_REASON carries that line (and
    GOAIO_BACKEND=epoll raises it). GOAIO_REQUIRE_EXT=1 makes it fatal."""

    def run(self):
        try:
            super().run()
        except _BUILD_ERRORS as exc:  # e.g. no compiler at all for this platform
            if flag("GOAIO_REQUIRE_EXT"):
                raise
            for ext in self.extensions:
                self._stand_in(ext, exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except _BUILD_ERRORS as exc:
            if flag("GOAIO_REQUIRE_EXT"):
                raise
            self._stand_in(ext, exc)
        else:
            stale = self._stand_in_path(ext)
            if os.path.exists(stale):
                os.unlink(stale)

    def _stand_in_path(self, ext):
        built = self.get_ext_fullpath(ext.name)
        return os.path.join(os.path.dirname(built), ext.name.rsplit(".", 1)[-1] + ".py")

    def _stand_in(self, ext, exc):
        why = " ".join(str(exc).split()) or type(exc).__name__
        cc = getattr(getattr(self, "compiler", None), "compiler_so", None)
        if cc and (isinstance(exc, _BUILD_ERRORS[:4]) or "Command '[" in why):
            sys.stderr.write(f"goaio: building {ext.name} failed: {why}\n")
            why = f"the C compiler {cc[0]!r} failed"
        elif len(why) > 300:
            why = why[:300] + "..."
        line = (f"{ext.name} was not compiled when goaio was installed ({why}); to get it, install "
                f"a C compiler and the Python headers, then: pip install --no-cache-dir --force-reinstall goaio")
        sys.stderr.write(f"WARNING: goaio: {line}. The pure-Python backend will be used.\n")
        path = self._stand_in_path(ext)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(f'"""Stand-in for a compiled module that did not build (see setup.py)."""\n\n'
                    f"raise ImportError({line!r})\n")


def _build_errors():
    from setuptools.errors import CCompilerError, CompileError, ExecError, LinkError, PlatformError

    return (CCompilerError, CompileError, ExecError, LinkError, PlatformError)


_BUILD_ERRORS = _build_errors()


def _check_setuptools():
    """pyproject.toml's SPDX `license` string needs setuptools >= 77; an older
    one fails with a schema dump that does not say so."""
    import setuptools

    try:
        major = int(setuptools.__version__.split(".")[0])
    except ValueError:
        return
    if major < 77:
        raise SystemExit(f"goaio needs setuptools >= 77 to build (this Python has {setuptools.__version__}): "
                         f"{sys.executable} -m pip install 'setuptools>=77'  (pip install . fetches it itself)")


_check_setuptools()

setup(ext_modules=extensions(), options=build_options(), cmdclass={"build_ext": OptionalBuildExt})
