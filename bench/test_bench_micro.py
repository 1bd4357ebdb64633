"""Micro benchmarks of the backends: the cost of one operation.

- ``cycle``: one post-and-complete cycle, a 64-byte send on one end of a
  loopback pair and a recv on the other, both collected; a blocking
  ``socket`` send+recv is the reference.
- ``collect``: 64 completions (32 one-byte sends, 32 one-byte recvs) taken
  one by one with ``get_complete_status`` or in batches with
  ``get_complete_statuses``.
- ``pool``: one ``BufferPool`` acquire + release.
"""

import pytest

MSG = b"m" * 64
N_OPS = 32


def _check(res):
    if res is None or res.err is not None:
        raise AssertionError(f"unexpected completion {res!r}")


@pytest.mark.benchmark(group="micro: post+complete cycle (64 B send + recv)")
def test_cycle(benchmark, backend, tcp_pair):
    a, b = tcp_pair
    with backend.AIOService(1) as svc:
        ca, cb = svc.bind(a), svc.bind(b)
        buf = bytearray(len(MSG))
        get = svc.get_complete_status

        def cycle():
            cb.recv(None, buf)
            ca.send(None, MSG)
            got = 0
            for _ in range(2):
                res = get(5)
                _check(res)
                if res.conn is cb:
                    got = res.bytes_transferred
            while got < len(MSG):  # a split segment: read the rest
                cb.recv(None, memoryview(buf)[got:])
                res = get(5)
                _check(res)
                got += res.bytes_transferred

        benchmark(cycle)
        assert buf == MSG


@pytest.mark.benchmark(group="micro: post+complete cycle (64 B send + recv)")
def test_cycle_blocking_socket_reference(benchmark, tcp_pair):
    a, b = tcp_pair
    buf = bytearray(len(MSG))

    def cycle():
        a.sendall(MSG)
        got = 0
        while got < len(MSG):
            got += b.recv_into(memoryview(buf)[got:])

    benchmark(cycle)
    assert buf == MSG


@pytest.mark.parametrize("how", ["one-by-one", "batch"])
@pytest.mark.benchmark(group=f"micro: collect {2 * N_OPS} completions")
def test_collect(benchmark, backend, tcp_pair, how):
    a, b = tcp_pair
    with backend.AIOService(1) as svc:
        ca, cb = svc.bind(a, recvq_size=N_OPS, sendq_size=N_OPS), svc.bind(b, recvq_size=N_OPS)
        bufs = [bytearray(1) for _ in range(N_OPS)]
        one = b"x"
        total = 2 * N_OPS

        def post():
            for buf in bufs:
                cb.recv(None, buf)
            for _ in range(N_OPS):
                ca.send(None, one)

        if how == "one-by-one":
            def run():
                post()
                get = svc.get_complete_status
                for _ in range(total):
                    _check(get(5))
        else:
            def run():
                post()
                left = total
                while left:
                    batch = svc.get_complete_statuses(total, 5)
                    if not batch:
                        raise AssertionError("timed out")
                    for res in batch:
                        _check(res)
                    left -= len(batch)

        benchmark(run)


@pytest.mark.benchmark(group="micro: BufferPool acquire+release")
def test_pool(benchmark, backend):
    pool = backend.BufferPool(4096)

    def cycle():
        pool.release(pool.acquire())

    benchmark(cycle)
    assert getattr(pool, "outstanding", 0) == 0
