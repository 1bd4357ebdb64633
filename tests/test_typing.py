"""The typed API (goaio/__init__.pyi, shipped with goaio/py.typed): mypy
--strict accepts correct user code (examples/typed_example.py, and
typed_listen.py for the posted accept/connect API), rejects
wrong calls (examples/typed_wrong.py, each line marked WRONG), reveals
``get_complete_status()`` as ``AIOResult | None``; and mypy's stubtest finds
the stubs true to every backend's runtime objects. Type-checks the goaio
that the tests import (the installed one, or the source tree). Skipped only
when mypy is not installed (it is in the ``test`` extra)."""

import os
import re
import subprocess
import sys

import pytest

import goaio
from support import CHILD_CWD, GOAIO_PARENT, REPO_ROOT, WAIT, subprocess_env

pytest.importorskip("mypy", reason="mypy is not installed (pip install '.[test]')")

EXAMPLES = os.path.join(REPO_ROOT, "examples")
INSTALLED = os.path.basename(GOAIO_PARENT) in ("site-packages", "dist-packages")

#: The constructors the library keeps to itself (and the
#: compiled AIOService's, which Cython's __cinit__ hides from stubtest);
#: stubtest's "disjoint base" layout note about C types; the pure
#: BufferPool's buffer_size, an instance attribute the stub shows read-only
#: as the compiled one is.
STUBTEST_ALLOW = """
goaio.AIOConn.__init__
goaio.Listener.__init__
goaio.AIOResult.__init__
goaio.AIOService.__init__
goaio.AIOConn
goaio.Listener
goaio.AIOResult
goaio.AIOService
goaio.BufferPool
goaio.BufferPool.buffer_size
"""



def _private_modules():
    """Every module of the goaio package but goaio itself (whose stub is
    what is checked): stubtest analyses them all, and their own typing is
    not the public API's."""
    pkg = os.path.dirname(os.path.abspath(goaio.__file__))
    names = set()
    for dirpath, dirnames, files in os.walk(pkg):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        prefix = os.path.relpath(dirpath, os.path.dirname(pkg)).replace(os.sep, ".")
        for f in files:
            stem, ext = os.path.splitext(f)
            if ext in (".py", ".pyi"):
                names.add(prefix if stem == "__init__" else f"{prefix}.{stem}")
    names.discard("goaio")
    return sorted(names)


MYPY_INI = f"""[mypy]
[mypy-{",".join(_private_modules())}]
ignore_errors = True
ignore_missing_imports = True
"""


@pytest.fixture(scope="module")
def mypy_run(tmp_path_factory):
    """Runs a mypy tool on the goaio under test: from an empty directory,
    with the source tree (when not installed) on MYPYPATH."""
    work = tmp_path_factory.mktemp("mypy")
    ini = work / "mypy.ini"
    ini.write_text(MYPY_INI)
    env = subprocess_env()  # stubtest imports the goaio under test
    env.pop("MYPYPATH", None)
    if not INSTALLED:
        env["MYPYPATH"] = GOAIO_PARENT

    def run(args, backend_name=None, tool="mypy"):
        if backend_name is not None:
            env["GOAIO_BACKEND"] = backend_name
        else:
            env.pop("GOAIO_BACKEND", None)
        if tool == "mypy":
            argv = [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", "--config-file", str(ini),
                    "--cache-dir", str(work / "cache"), "--python-executable", sys.executable, *args]
        else:
            argv = [sys.executable, "-m", "mypy.stubtest", "--mypy-config-file", str(ini), *args]
        return subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=300)

    run.work = work
    return run


@pytest.mark.parametrize("example", ["typed_example.py", "typed_listen.py"])
def test_typed_example_passes_strict(mypy_run, example):
    proc = mypy_run([os.path.join(EXAMPLES, example)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "", proc.stdout


def test_wrong_calls_are_flagged(mypy_run):
    path = os.path.join(EXAMPLES, "typed_wrong.py")
    with open(path) as f:
        wrong = {i for i, line in enumerate(f, 1) if "# WRONG" in line}
    assert len(wrong) >= 5
    proc = mypy_run([path])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    flagged = {int(m.group(1)) for m in re.finditer(r"typed_wrong\.py:(\d+): error:", proc.stdout)}
    assert flagged == wrong, proc.stdout
    assert 'Argument "workers" to "AIOService" has incompatible type "str"; expected "int"' in proc.stdout
    assert 'Argument 2 to "recv" of "AIOConn" has incompatible type "str"' in proc.stdout
    assert 'Item "None" of "AIOResult | None" has no attribute "bytes_transferred"' in proc.stdout


def test_revealed_types(mypy_run):
    src = mypy_run.work / "reveal.py"
    src.write_text(
        "import socket\n"
        "import goaio\n"
        "svc = goaio.AIOService()\n"
        "reveal_type(svc.get_complete_status())\n"
        "reveal_type(svc.get_complete_statuses(8, timeout=0.5))\n"
        "reveal_type(goaio.get_complete_status(0))\n"
        "reveal_type(svc.bind(socket.socket(), share_buff=goaio.BufferPool(4096)))\n"
        "reveal_type(goaio.BufferPool().acquire())\n"
        "reveal_type(goaio.BACKEND_FALLBACK_REASON)\n"
        "reveal_type(goaio.DEFAULT_RECV_BUFF_SIZE)\n"
        "reveal_type(svc.stats())\n"
        "reveal_type(svc.listen(('127.0.0.1', 0)).accept('a'))\n"
        "reveal_type(svc.bind(socket.socket()).cancel('a'))\n"
    )
    proc = mypy_run([str(src)])
    # (older mypy writes builtins.list, newer list)
    revealed = [t.replace("", "") for t in re.findall(r'Revealed type is "([^"]+)"', proc.stdout)]
    assert revealed == [
        "goaio.AIOResult | None",
        "list[goaio.AIOResult]",
        "goaio.AIOResult | None",
        "goaio.AIOConn",
        "bytearray",
        "str | None",
        "int",
        "dict[str, int]",
        "None",
        "int",
    ], proc.stdout


def test_stubs_match_the_runtime(mypy_run, backend):
    """stubtest imports goaio with this backend and compares every public
    object with its stub (names, signatures, kinds)."""
    allow = mypy_run.work / "allow.txt"
    allow.write_text(STUBTEST_ALLOW)
    proc = mypy_run(["goaio", "--ignore-missing-stub", "--ignore-unused-allowlist", "--allowlist", str(allow)],
                    backend_name=backend.name, tool="stubtest")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


def test_typed_example_runs(backend):
    proc = subprocess.run([sys.executable, os.path.join(EXAMPLES, "typed_example.py")], cwd=CHILD_CWD,
                          env=subprocess_env(backend.name), capture_output=True, text=True, timeout=WAIT * 3)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{backend.name}: b'hello, typed goaio'"), proc.stdout


def test_typed_listen_example_runs(backend):
    if not hasattr(backend.AIOService, "listen"):
        pytest.skip(f"the {backend.name} backend has no AIOService.listen yet")
    proc = subprocess.run([sys.executable, os.path.join(EXAMPLES, "typed_listen.py")], cwd=CHILD_CWD,
                          env=subprocess_env(backend.name), capture_output=True, text=True, timeout=WAIT * 3)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == repr(b"ping over a posted connect"), proc.stdout
