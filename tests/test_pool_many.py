"""BufferPool.release() among many buffers (the compiled pool finds a buffer
by its address in a table it grows as the pool grows)."""

import random

import pytest


def test_release_finds_each_of_many_buffers(backend):
    pool = backend.BufferPool(32)
    bufs = [pool.acquire() for _ in range(300)]
    assert len({id(b) for b in bufs}) == 300
    order = list(range(300))
    random.Random(13).shuffle(order)
    for k, i in enumerate(order):
        pool.release(bufs[i])
        assert pool.outstanding == 299 - k
    for b in bufs[:20]:
        with pytest.raises(ValueError):
            pool.release(b)         # released already
    with pytest.raises(ValueError):
        pool.release(bytearray(32))     # not the pool's
    again = [pool.acquire() for _ in range(300)]     # the same buffers come back
    assert {id(b) for b in again} == {id(b) for b in bufs}
    for b in again:
        pool.release(b)
    assert pool.free == 300 and pool.outstanding == 0
