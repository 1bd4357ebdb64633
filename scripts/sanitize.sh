#!/usr/bin/env bash
# Run goaio's compiled backend under AddressSanitizer and valgrind memcheck.
#
#   scripts/sanitize.sh              # ASan (every epoll/kqueue test) + valgrind (a subset)
#   scripts/sanitize.sh asan         # only the ASan part
#   scripts/sanitize.sh valgrind     # only the valgrind part
#
# The tree is copied to a temporary directory and built there
# (GOAIO_ASAN=1 for ASan, GOAIO_DEBUG=1 for valgrind), so the in-tree .so that
# others use is never touched. Environment:
#   PYTHON=python3        interpreter to use (default: python)
#   SOURCE=head           build the committed HEAD instead of the working tree
#   KEEP=1                keep the temporary directory (its path is printed)
#   ASAN_TESTS="..."      pytest arguments for the ASan run
#                         (default: tests -k "epoll or kqueue", slow tests skipped)
#   VALGRIND_TESTS="..."  pytest arguments for the valgrind run (default: a subset)
#   PYTEST_ARGS="..."     extra pytest arguments for both runs
# Exit status: 0 when both runs pass; non-zero (and the sanitizer report on
# stderr) otherwise.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python}"
# the interpreter itself, not a wrapper script (pyenv shims): valgrind and
# LD_PRELOAD must apply to the process that loads goaio
PY="$("$PY" -c 'import sys; print(sys.executable)')"
WHAT="${1:-all}"
WORK="$(mktemp -d /tmp/goaio-sanitize.XXXXXX)"
if [[ "${KEEP:-0}" == "1" ]]; then
    echo "sanitize: working in $WORK (kept)"
else
    trap 'rm -rf "$WORK"' EXIT
fi

copy_tree() {  # copy_tree DEST: the sources, without any built object
    local dest="$1"
    mkdir -p "$dest"
    if [[ "${SOURCE:-worktree}" == "head" ]]; then
        git -C "$REPO" archive HEAD | tar -x -C "$dest"
    else
        (cd "$REPO" && git ls-files -co --exclude-standard -z | tar --null -T - -cf -) | tar -x -C "$dest"
    fi
    find "$dest" -name '*.so' -delete
    rm -rf "$dest/build" "$dest/goaio/_epoll.c" "$dest/goaio/_kqueue.c"
}

build() {  # build DEST ENV...: build the extensions in DEST with the given switches
    local dest="$1"; shift
    local emu=0
    if [[ "$(uname -s)" == "Linux" && -f "$dest/goaio/_kqueue.pyx" && -f "$dest/tests/kqueue_emu/kqueue_emu.c" ]]; then
        emu=1   # the test-only kqueue emulation shares the compiled core: check it too
    fi
    echo "sanitize: building in $dest ($* GOAIO_KQUEUE_EMULATION=$emu)"
    (cd "$dest" && env "$@" GOAIO_KQUEUE_EMULATION=$emu "$PY" setup.py -q build_ext --inplace >"$dest/build.log" 2>&1) || {
        tail -50 "$dest/build.log" >&2
        echo "sanitize: build failed (log: $dest/build.log)" >&2
        exit 2
    }
}

status=0

if [[ "$WHAT" == "all" || "$WHAT" == "asan" ]]; then
    ASAN_DIR="$WORK/asan"
    copy_tree "$ASAN_DIR"
    # -fsanitize-recover=address + halt_on_error=0: report every error of the
    # run (in $WORK/asan-report.<pid>) instead of stopping at the first one
    build "$ASAN_DIR" GOAIO_ASAN=1 CFLAGS="${CFLAGS:-} -fsanitize-recover=address"
    LIBASAN="$(gcc -print-file-name=libasan.so)"
    if [[ ! -e "$LIBASAN" ]]; then
        echo "sanitize: libasan.so not found (gcc -print-file-name=libasan.so)" >&2
        exit 2
    fi
    echo "sanitize: ASan run (LD_PRELOAD=$LIBASAN)"
    # detect_leaks=0: CPython keeps (by design) memory alive until exit.
    # PYTHONMALLOC=malloc: every Python object goes through ASan's allocator too.
    ASAN_ARGS=(tests -k "epoll or kqueue")
    if [[ -n "${ASAN_TESTS:-}" ]]; then eval "ASAN_ARGS=($ASAN_TESTS)"; fi
    # The outside peers the tests start (curl hangs with libasan preloaded)
    # run without the preload: a wrapper ahead of them on PATH drops it.
    mkdir -p "$WORK/peers"
    for peer in curl openssl wrk; do
        real="$(command -v "$peer" || true)"
        [[ -n "$real" ]] || continue
        printf '#!/bin/sh\nunset LD_PRELOAD\nexec "%s" "$@"\n' "$real" > "$WORK/peers/$peer"
        chmod +x "$WORK/peers/$peer"
    done
    # shellcheck disable=SC2086
    (cd "$ASAN_DIR" && \
        PATH="$WORK/peers:$PATH" \
        LD_PRELOAD="$LIBASAN" \
        ASAN_OPTIONS="detect_leaks=0:halt_on_error=0:handle_abort=1:allocator_may_return_null=1:print_summary=1:log_path=$WORK/asan-report" \
        PYTHONMALLOC=malloc PYTHONDONTWRITEBYTECODE=1 \
        "$PY" -m pytest "${ASAN_ARGS[@]}" -q -p no:cacheprovider ${PYTEST_ARGS:-}) || status=1
    if compgen -G "$WORK/asan-report.*" >/dev/null; then
        status=1
        # one line per distinct (error, first frame), then the first full report
        SRC_DIR="$ASAN_DIR" "$PY" - "$WORK"/asan-report.* <<'PYEOF' >&2
import os, re, sys

def pyx_line(where):
    """goaio/_epoll.c:1234 (or the emulation build's build/kqueue-emulation/
    cython/.../_kqueue.c:1234) -> the Cython source line it came from."""
    m = re.match(r"(\S+?\.c):(\d+)", where)
    if not m:
        return ""
    try:
        lines = open(os.path.join(os.environ["SRC_DIR"], m.group(1)), errors="replace").read().splitlines()
    except OSError:
        return ""
    for i in range(int(m.group(2)) - 1, -1, -1):
        src = re.match(r'\s*/\* "([^"]+\.(?:pyx|pxi|pxd))":(\d+)', lines[i])
        if src:
            return f"({src.group(1)}:{src.group(2)})"
    return ""

seen, first = {}, None
for path in sys.argv[1:]:
    text = open(path, errors="replace").read()
    for block in re.split(r"(?m)^=+\n(?===\d+==ERROR)", text):
        m = re.search(r"ERROR: AddressSanitizer: ([\w-]+)", block)
        if not m:
            continue
        frame = re.search(r"#0 0x[0-9a-f]+ in (\S+) (\S+)", block)
        where = frame.group(2) if frame else "?"
        key = (m.group(1), frame.group(1) if frame else "?", f"{where} {pyx_line(where)}")
        seen[key] = seen.get(key, 0) + 1
        first = first or block
print("sanitize: AddressSanitizer errors (count, kind, first frame):")
for (kind, fn, where), n in sorted(seen.items(), key=lambda kv: -kv[1]):
    print(f"  {n:5d}  {kind}  {fn}  {where}")
print("sanitize: first report:")
print("\n".join(first.splitlines()[:60]) if first else "(none parsed)")
PYEOF
        echo "sanitize: full reports in $WORK/asan-report.* (KEEP=1 keeps them)" >&2
    fi
    [[ $status == 0 ]] && echo "sanitize: ASan run clean"
fi

if [[ "$WHAT" == "all" || "$WHAT" == "valgrind" ]]; then
    if ! command -v valgrind >/dev/null; then
        echo "sanitize: valgrind is not installed (apt-get install valgrind)" >&2
        exit 2
    fi
    VG_DIR="$WORK/valgrind"
    copy_tree "$VG_DIR"
    build "$VG_DIR" GOAIO_DEBUG=1
    echo "sanitize: valgrind memcheck run"
    # A representative subset: IO, close, buffers and the pool, the state
    # machine; timing-sensitive tests (timeouts within 100 ms) are left to ASan.
    VG_ARGS=(tests/test_io.py tests/test_close.py tests/test_pool.py tests/test_buffers.py tests/test_stateful.py
             -k "epoll and not mib and not large and not storm and not sigpipe")
    if [[ -n "${VALGRIND_TESTS:-}" ]]; then eval "VG_ARGS=($VALGRIND_TESTS)"; fi
    # shellcheck disable=SC2086
    (cd "$VG_DIR" && \
        PYTHONMALLOC=malloc PYTHONDONTWRITEBYTECODE=1 GOAIO_STATEFUL_EXAMPLES=6 \
        valgrind --tool=memcheck --leak-check=no --track-origins=yes \
            --log-file="$WORK/valgrind.%p.log" \
            --num-callers=30 --trace-children=no --suppressions="$REPO/scripts/valgrind-python.supp" \
            "$PY" -m pytest "${VG_ARGS[@]}" -q -p no:cacheprovider -o timeout=0 ${PYTEST_ARGS:-}) || {
        echo "sanitize: tests failed under valgrind" >&2
        status=1
    }
    # CPython itself is not valgrind-clean (uninitialised small-int digits
    # propagate into the GC, AVX string functions over-read): only errors with
    # a goaio frame in their stack count; the others are summed up as noise.
    "$PY" - "$WORK"/valgrind.*.log <<'PYEOF' >&2 || status=1
import re, sys
ours, noise = [], 0
for path in sys.argv[1:]:
    blocks, cur = [], []
    for line in open(path, errors="replace"):
        body = re.sub(r"^==\d+== ?", "", line.rstrip("\n"))
        if body == "":
            if cur:
                blocks.append(cur)
            cur = []
        else:
            cur.append(body)
    if cur:
        blocks.append(cur)
    for b in blocks:
        head = b[0]
        if not re.match(r"(Invalid |Conditional jump|Use of uninitialised|Syscall param|"
                        r"Source and destination|Mismatched free|Argument .* of function)", head):
            continue
        if any(re.search(r"goaio|_epoll\.c|_kqueue\.c|_core\.pxi", l) for l in b):
            ours.append((path, b))
        else:
            noise += 1
print(f"sanitize: valgrind: {len(ours)} error(s) with a goaio frame, {noise} in the interpreter only (ignored)")
for path, b in ours[:20]:
    print(f"---- {path}")
    print("\n".join(b[:40]))
sys.exit(1 if ours else 0)
PYEOF
    [[ $status == 0 ]] && echo "sanitize: valgrind run clean"
fi

exit $status
