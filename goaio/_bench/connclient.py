"""The connect-heavy clients of ``python -m goaio bench --connect``.

    python connclient.py KIND HOST PORT TOTAL CONCURRENCY SIZE

KIND: ``goaio`` (svc.connect; the backend from GOAIO_BACKEND), ``asyncio``
or ``uvloop`` (loop.create_connection with a Protocol). Each opens TOTAL
connections, CONCURRENCY at a time (closed loop), and on each does one round
trip of SIZE bytes (checked), then closes it. Prints one JSON line: conns,
errors, bad_bytes, seconds, cps and cpu_s (this process's user + system CPU
time over the run, getrusage). Run as a script: for asyncio/uvloop it
imports nothing of goaio.
"""

import json
import resource
import sys
import time


def _cpu():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def run_goaio(host, port, total, conc, size):
    import goaio

    msg = bytes((31 * i + 7) & 255 for i in range(size))
    stats = {"conns": 0, "errors": 0, "bad_bytes": 0}
    started = 0
    live = 0
    with goaio.AIOService(1) as svc:
        def start():
            nonlocal started, live
            started += 1
            live += 1
            svc.connect("connect", (host, port), timeout=10)

        for _ in range(min(conc, total)):
            start()
        deadline = time.monotonic() + 120
        while live and time.monotonic() < deadline:
            for res in svc.get_complete_statuses(256, timeout=1):
                ctx = res.context
                if ctx == "send":
                    if res.err is not None:
                        res.conn.close()  # the receive completes with the error
                    continue
                if res.err is not None or ctx == "recv" and res.buff != msg:
                    if res.err is None:
                        stats["bad_bytes"] += sum(a != b for a, b in zip(res.buff, msg))
                    stats["errors"] += 1
                    if res.conn is not None:
                        res.conn.close()
                elif ctx == "connect":
                    conn = res.conn
                    conn.send("send", msg)
                    conn.recv_full("recv", bytearray(size))
                    continue
                else:
                    stats["conns"] += 1
                    res.conn.close()
                live -= 1
                if started < total:
                    start()
        stats["errors"] += live
    return stats


def run_asyncio(host, port, total, conc, size, uv):
    import asyncio

    msg = bytes((31 * i + 7) & 255 for i in range(size))
    stats = {"conns": 0, "errors": 0, "bad_bytes": 0}

    class Once(asyncio.Protocol):
        def __init__(self, done):
            self.done = done
            self.got = bytearray()

        def connection_made(self, transport):
            self.transport = transport
            transport.write(msg)

        def data_received(self, data):
            self.got += data
            if len(self.got) >= size:
                self.transport.close()
                if not self.done.done():
                    self.done.set_result(bytes(self.got))

        def connection_lost(self, exc):
            if not self.done.done():
                self.done.set_exception(exc or EOFError())

    async def worker(left):
        loop = asyncio.get_running_loop()
        while left[0] > 0:
            left[0] -= 1
            done = loop.create_future()
            try:
                await asyncio.wait_for(loop.create_connection(lambda: Once(done), host, port), 10)
                got = await asyncio.wait_for(done, 10)
            except (OSError, asyncio.TimeoutError, EOFError):
                stats["errors"] += 1
                continue
            if got != msg:
                stats["errors"] += 1
                stats["bad_bytes"] += sum(a != b for a, b in zip(got, msg)) + abs(len(got) - size)
            else:
                stats["conns"] += 1

    async def main():
        left = [total]
        await asyncio.wait_for(asyncio.gather(*(worker(left) for _ in range(min(conc, total)))), 120)

    if uv:
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
    return stats


def main(argv):
    kind, host, port, total, conc, size = argv[0], argv[1], int(argv[2]), int(argv[3]), int(argv[4]), int(argv[5])
    if kind not in ("goaio", "asyncio", "uvloop"):
        print(f"unknown client {kind!r}", file=sys.stderr)
        return 2
    if kind == "uvloop":
        import uvloop  # noqa: F401  (imported before the clock starts)
    elif kind == "goaio":
        import goaio  # noqa: F401
    t0, c0 = time.perf_counter(), _cpu()
    if kind == "goaio":
        stats = run_goaio(host, port, total, conc, size)
    else:
        stats = run_asyncio(host, port, total, conc, size, kind == "uvloop")
    secs, cpu = time.perf_counter() - t0, _cpu() - c0
    stats.update(seconds=secs, cps=stats["conns"] / secs, cpu_s=cpu)
    print(json.dumps(stats), flush=True)
    return 0 if not stats["errors"] and not stats["bad_bytes"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
