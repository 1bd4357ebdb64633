"""Memory: server RSS per idle connection.

``--idle-conns`` connections (default 10 000) are opened, each pinged once
(so the server has served it and posted its next receive), then held silent;
the figure is (RSS after - RSS before) / connections, in ``extra_info``.
goaio's plain mode holds a 64 KiB receive buffer per connection; in
share-buffer mode a receive posted with no buffer holds none, which is the
point of it. The timed figure is how long opening and pinging took.
"""

import pytest

from benchsupport import note, start_server

from goaio._bench import servers as srvmod

SERVERS = ["goaio-epoll", "goaio-epoll-share", "goaio-pure", "goaio-pure-share", "asyncio",
           "asyncio-streams", "uvloop", "threads"]


@pytest.mark.parametrize("name", SERVERS)
@pytest.mark.benchmark(group="memory: idle connections")
def test_idle_rss(benchmark, name, request):
    n = request.config.getoption("--idle-conns")
    results = []
    with start_server(name) as server:
        benchmark.pedantic(lambda: results.append(srvmod.measure_idle(server, n)), rounds=1, iterations=1)
    res = results[0]
    benchmark.extra_info.update(server=name, conns=n, bytes_per_conn=round(res["bytes_per_conn"]),
                                rss_before=res["rss_before"], rss_after=res["rss_after"])
    note(f"memory: idle connections ({n})", f"{name:18} {res['bytes_per_conn']:>9,.0f} B/conn")
    if name.endswith("-share"):
        # no receive buffer per idle connection (a 64 KiB one would be >= 65536)
        assert res["bytes_per_conn"] < 16384, res
