"""A peer that resets the connection: every receive pending then completes
with ConnectionResetError (as every pending receive gets EOFError at EOF);
one posted later gets what the socket reports afterwards (EOF on Linux).
"""

import sys
import time

import pytest

from support import collect, collect_one, reset


@pytest.mark.parametrize("share", [False, True], ids=["own-buffers", "share-buffers"])
def test_every_pending_receive_gets_the_reset(backend, svc, connect, share):
    pool = backend.BufferPool(64) if share else None
    conn, peer = connect(**({"share_buff": pool} if share else {}))
    for i in range(3):
        conn.recv(i, None if share else bytearray(8))
    time.sleep(0.05)
    reset(peer)
    results = collect(svc, 3)
    assert [r.context for r in results] == [0, 1, 2]
    assert [type(r.err) for r in results] == [ConnectionResetError] * 3, [r.err for r in results]
    assert len({id(r.err) for r in results}) == 3, "each result has its own exception"
    if share:
        assert all(r.buff is None for r in results)
        assert pool.outstanding == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="what a read after a reset says is the OS's")
def test_receive_posted_after_the_reset_gets_what_the_socket_says(backend, svc, connect):
    conn, peer = connect()
    conn.recv("first", bytearray(8))
    time.sleep(0.05)
    reset(peer)
    assert type(collect_one(svc).err) is ConnectionResetError
    conn.recv("later", bytearray(8))
    res = collect_one(svc)
    assert res.context == "later"
    assert type(res.err) is EOFError, repr(res.err)
