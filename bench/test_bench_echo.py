"""Echo benchmarks: goaio's echo server against its peers, same client.

Servers: goaio on each backend (plain and share-buffer mode), asyncio
Protocol, asyncio streams, uvloop (when installed), a thread per
connection, and the raw-epoll Python ceiling. Cases: 64 B / 4 KiB / 64 KiB
messages on 1 / 50 / 1000 connections; one group per case, so
``--benchmark-group-by=group`` lines the servers up.

Each timed round is exactly K closed-loop round trips (K fixed per case,
the same for every server, so the times compare); the client process is
connected beforehand and only told to go, so a round holds nothing but the
round trips. ``extra_info`` keeps rps, MB/s and the client's p50/p99.
"""

import statistics

import pytest

from benchsupport import CLIENT_CPUS, note

from goaio._bench import client as clientmod

SERVERS = ["goaio-epoll", "goaio-epoll-share", "goaio-pure", "goaio-pure-share", "asyncio",
           "asyncio-streams", "uvloop", "threads", "raw-epoll"]
SIZES = [64, 4096, 65536]
CONNS = [1, 50, 1000]
#: round trips per timed round, by message size (at least 3 per connection)
MESSAGES = {64: 20000, 4096: 10000, 65536: 2000}


def _size_id(size):
    return f"{size // 1024}KiB" if size >= 1024 else f"{size}B"


@pytest.mark.parametrize("conns", CONNS, ids=lambda c: f"{c}conn")
@pytest.mark.parametrize("size", SIZES, ids=_size_id)
@pytest.mark.parametrize("echo_server", SERVERS, indirect=True)
def test_echo(benchmark, echo_server, load_client, size, conns, request):
    benchmark.group = f"echo {_size_id(size)} x {conns} conn"
    k = max(MESSAGES[size], 3 * conns)
    runs = []
    with clientmod.CommandClient(load_client, echo_server.port, conns, size, cpus=CLIENT_CPUS) as client:
        def once():
            res = client.run(k)
            runs.append(res)
            if res["bad_bytes"] or res["errors"] or res["msgs"] != k:
                raise AssertionError(f"{echo_server.spec.name}: {res}")

        benchmark.pedantic(once, rounds=request.config.getoption("--echo-rounds"), iterations=1,
                           warmup_rounds=1)
    timed = runs[1:] or runs
    benchmark.extra_info.update(
        server=echo_server.spec.name,
        messages_per_round=k,
        rps=round(statistics.median(r["rps"] for r in timed)),
        MBps=round(statistics.median(r["MBps"] for r in timed), 2),
        p50_us=statistics.median(r["p50_us"] for r in timed),
        p99_us=statistics.median(r["p99_us"] for r in timed),
        server_rss_bytes=echo_server.rss(),
    )
    info = benchmark.extra_info
    note(benchmark.group, f"{echo_server.spec.name:18} {info['rps']:>9,} rps {info['MBps']:>9.1f} MB/s "
                          f"p50 {info['p50_us']:>7.0f} us  p99 {info['p99_us']:>7.0f} us")
