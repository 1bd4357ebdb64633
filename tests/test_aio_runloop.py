"""goaio.aio's run loop: call_soon, create_task, the loop iteration behave as
asyncio's default loop (compiled on the compiled backends: core/runloop.pxi;
asyncio's Python on pure), on every backend."""

import asyncio
import contextvars
import sys

import pytest

import goaio.aio
from support import WAIT, close_aio_loop


@pytest.fixture
def loop(backend):
    lp = goaio.aio.Loop(backend=backend.module)
    yield lp
    close_aio_loop(lp)


def test_compiled_runloop_is_bound_on_compiled_backends(loop, backend):
    compiled = hasattr(backend.module, "AioRunLoop")
    assert ("_run_once" in vars(loop)) == compiled
    assert ("call_soon" in vars(loop)) == compiled
    # a subclass that overrides a method keeps its own
    class Sub(goaio.aio.Loop):
        def call_soon(self, *a, **k):
            return super().call_soon(*a, **k)
    sub = Sub(backend=backend.module)
    try:
        assert "call_soon" not in vars(sub)
        assert ("_run_once" in vars(sub)) == compiled
        assert sub.run_until_complete(asyncio.sleep(0, 7)) == 7
    finally:
        sub.close()


def test_call_soon_handles_fifo_cancel_and_repr(loop):
    got = []

    def cb(*args):
        got.append(args)

    h1 = loop.call_soon(cb, 1)
    h2 = loop.call_soon(cb, 2, "x")
    h3 = loop.call_soon(cb, 3)
    assert type(h1) is asyncio.Handle
    assert h1._args == (1,) and h1._loop is loop and not h1.cancelled()
    assert h1._source_traceback is None
    # the repr asyncio gives the same handle made by hand (3.13 shows the
    # arguments in debug mode only)
    assert repr(h2) == repr(asyncio.Handle(cb, (2, "x"), loop))
    assert repr(h2).startswith("<Handle ") and ".cb(" in repr(h2)
    h2.cancel()
    assert h2.cancelled() and "cancelled" in repr(h2)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert got == [(1,), (3,)]
    assert h3 is not None


def test_callbacks_run_in_their_context(loop):
    var = contextvars.ContextVar("var", default="none")
    seen = []
    ctx = contextvars.copy_context()
    ctx.run(var.set, "given")
    var.set("current")
    loop.call_soon(lambda: seen.append(var.get()), context=ctx)
    loop.call_soon(lambda: seen.append(var.get()))
    # a callback's set stays in its own copy of the context
    loop.call_soon(var.set, "changed")
    loop.call_soon(lambda: seen.append(var.get()))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == ["given", "current", "current"]
    assert var.get() == "current"


def test_exception_in_callback_reaches_the_handler(loop):
    reports = []
    loop.set_exception_handler(lambda lp, context: reports.append(context))

    def bad(x):
        raise ValueError(x)

    h = loop.call_soon(bad, 5)
    later = []
    loop.call_soon(later.append, 1)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert later == [1]
    assert len(reports) == 1
    ctx = reports[0]
    assert set(ctx) == {"message", "exception", "handle"}
    assert ctx["handle"] is h
    assert isinstance(ctx["exception"], ValueError) and ctx["exception"].args == (5,)
    assert ctx["message"].startswith("Exception in callback ") and ".bad(" in ctx["message"]


def test_keyboard_interrupt_leaves_the_loop(loop):
    def stop():
        raise KeyboardInterrupt

    after = []
    loop.call_soon(stop)
    loop.call_soon(after.append, 1)
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    # the rest of the iteration's callbacks stay queued, as on asyncio's loop
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert after == [1]


def test_debug_mode_source_traceback_and_thread_check(loop):
    loop.set_debug(True)
    assert loop.get_debug()
    h = loop.call_soon(print)
    assert h._source_traceback and h._source_traceback[-1].name == \
        "test_debug_mode_source_traceback_and_thread_check"
    h.cancel()
    with pytest.raises(TypeError):
        loop.call_soon(None)         # debug mode checks the callback
    loop.set_debug(False)
    assert not loop.get_debug()
    assert loop.call_soon(print)._source_traceback is None


def test_closed_loop_refuses_callbacks(backend):
    lp = goaio.aio.Loop(backend=backend.module)
    lp.close()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        lp.call_soon(print)
    coro = asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        lp.create_task(coro)
    coro.close()


def test_create_task_future_and_task_factory(loop):
    async def work(n):
        await asyncio.sleep(0)
        return n * 2

    t = loop.create_task(work(4), name="w4")
    assert isinstance(t, asyncio.Task) and t.get_name() == "w4"
    f = loop.create_future()
    assert isinstance(f, asyncio.Future) and f.get_loop() is loop
    loop.call_soon(f.set_result, "r")
    assert loop.run_until_complete(t) == 8
    assert loop.run_until_complete(f) == "r"

    made = []

    def factory(lp, coro, **kw):
        made.append(kw)
        return asyncio.Task(coro, loop=lp, **kw)

    # a keyword asyncio's create_task does not take is refused as asyncio refuses it
    coro = work(0)
    with pytest.raises(TypeError):
        loop.create_task(coro, no_such_keyword=1)
    coro.close()

    loop.set_task_factory(factory)
    assert loop.run_until_complete(loop.create_task(work(1))) == 2
    assert len(made) == 1


def test_timers_order_and_cancelled_cleanup(loop):
    got = []
    t0 = loop.time()
    for d in (0.03, 0.01, 0.02):
        loop.call_at(t0 + d, got.append, d)
    # many cancelled timers: the heap is rebuilt without them (asyncio's rule)
    hs = [loop.call_later(100 + i, got.append, i) for i in range(300)]
    for h in hs:
        h.cancel()
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert got == [0.01, 0.02, 0.03]
    assert len(loop._scheduled) < 150
    assert loop.time() - t0 >= 0.05
    assert loop.time() - t0 < WAIT


def test_slow_callback_warning_in_debug(loop, caplog):
    import time
    loop.set_debug(True)
    loop.slow_callback_duration = 0.01
    loop.call_soon(time.sleep, 0.03)
    loop.call_soon(loop.stop)
    with caplog.at_level("WARNING", logger="asyncio"):
        loop.run_forever()
    assert any("Executing <Handle sleep(" in r.getMessage() for r in caplog.records)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.Runner")
def test_runner_and_gather(backend):
    async def main():
        async def one(i):
            await asyncio.sleep(0.001 * (i % 3))
            return i
        return await asyncio.gather(*(one(i) for i in range(50)))

    with asyncio.Runner(loop_factory=lambda: goaio.aio.Loop(backend=backend.module)) as r:
        assert r.run(main()) == list(range(50))
