"""Compiles the bench's C helpers (``loadgen.c``, ``echo_epoll.c``, ``storm.c``,
``loadgen_tls.c``, ``echo_tls_epoll.c``) on demand.

They are built with the system C compiler (``$CC``, else ``cc``) into a cache
directory (``$GOAIO_BENCH_CACHE``, else ``$XDG_CACHE_HOME/goaio``, else
``~/.cache/goaio``), named by a hash of source and compiler, so a changed
source is rebuilt and an unchanged one is built once. Without a compiler (or
without the sources, in an install that left them out) :func:`build` returns
None and says why in :func:`why_not`; the caller falls back to Python.
"""

import glob
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

_why = {}

#: extra link flags per helper (the TLS client links the system's OpenSSL;
#: without its headers it does not build and the TLS rows say why)
LIBS = {"loadgen_tls": ["-lssl", "-lcrypto"], "echo_tls_epoll": ["-lssl", "-lcrypto"]}


def cache_dir():
    base = os.environ.get("GOAIO_BENCH_CACHE")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(xdg, "goaio")
    return base


def _compiler():
    cc = shlex.split(os.environ.get("CC") or "cc")
    if not cc or shutil.which(cc[0]) is None:
        return None
    return cc


def why_not(name):
    """Why :func:`build` returned None for ``name`` (or None)."""
    return _why.get(name)


def build(name):
    """Path of the compiled ``name`` (``"loadgen"``, ``"echo_epoll"``, ``"storm"`` or
    ``"loadgen_tls"``, ``"echo_tls_epoll"``), or None."""
    if not sys.platform.startswith("linux"):
        _why[name] = "the C helpers use epoll (Linux only)"
        return None
    src = os.path.join(HERE, name + ".c")
    try:
        with open(src, "rb") as f:
            code = f.read()
        for header in sorted(glob.glob(os.path.join(HERE, "*.h"))):  # what the sources include
            with open(header, "rb") as f:
                code += f.read()
    except OSError:
        _why[name] = f"{src} is not installed"
        return None
    cc = _compiler()
    if cc is None:
        _why[name] = "no C compiler (set CC, or install cc)"
        return None
    flags = ["-O2", "-std=gnu11"]
    libs = LIBS.get(name, [])
    digest = hashlib.sha256(code + repr((cc, flags, libs)).encode()).hexdigest()[:16]
    out_dir = cache_dir()
    exe = os.path.join(out_dir, f"{name}-{digest}")
    if os.access(exe, os.X_OK):
        return exe
    try:
        os.makedirs(out_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=name + "-", dir=out_dir)
        os.close(fd)
        proc = subprocess.run(cc + flags + ["-o", tmp, src] + libs, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            os.unlink(tmp)
            _why[name] = f"{' '.join(cc)} failed: {proc.stderr.strip()[:500]}"
            return None
        os.chmod(tmp, 0o755)
        os.replace(tmp, exe)  # atomic: a concurrent build never sees half a file
    except (OSError, subprocess.SubprocessError) as exc:
        _why[name] = f"could not build {name}: {exc}"
        return None
    return exe
