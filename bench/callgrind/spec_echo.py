"""The SPEC-form echo server the issue-13 instruction counts are taken on.

    python bench/callgrind/spec_echo.py PORT [share] [nbytes] [N]

One collector (the main thread), get_complete_status() one at a time; on a
receive it sends memoryview(buff)[:n] with the buffer as context (with
``nbytes``: send(buff, buff, nbytes=n)); on a send completion it posts the
next receive into the same 64 KiB buffer, or in share-buffer mode releases
the buffer to a BufferPool(65536) and posts recv(None, None). It exits after
N round trips (0: never), so that callgrind counts a fixed amount of work.
"""

import sys

import goaio


def main():
    port = int(sys.argv[1])
    flags = sys.argv[2:]
    share = "share" in flags
    nb = "nbytes" in flags
    nums = [int(a) for a in flags if a.isdigit()]
    limit = nums[0] if nums else 0
    svc = goaio.AIOService(1)
    pool = goaio.BufferPool(65536) if share else None
    ln = svc.listen(("127.0.0.1", port), backlog=4096, **({"share_buff": pool} if share else {}))
    acc = object()
    for _ in range(64):
        ln.accept(acc)
    print("listening", port, goaio.BACKEND, flush=True)
    n = 0
    get = svc.get_complete_status
    while True:
        res = get()
        ctx = res.context
        conn = res.conn
        if ctx is acc:
            if res.err is None:
                conn.recv(None, None if share else bytearray(65536))
            ln.accept(acc)
            continue
        if res.err is not None:
            if share and ctx is not None:
                pool.release(ctx)
            conn.close()
            continue
        if ctx is None:
            buff = res.buff
            if nb:
                conn.send(buff, buff, nbytes=res.bytes_transferred)
            else:
                conn.send(buff, memoryview(buff)[:res.bytes_transferred])
            n += 1
            if limit and n >= limit:
                break
        elif share:
            pool.release(ctx)
            conn.recv(None, None)
        else:
            conn.recv(None, ctx)
    svc.close()


if __name__ == "__main__":
    main()
