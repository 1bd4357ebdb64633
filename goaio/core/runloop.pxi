# core/runloop.pxi -- goaio.aio's loop iteration and its per-callback
# methods, compiled (issue 12).
#
# AioRunLoop holds a goaio.aio.Loop and gives it compiled versions of the
# asyncio methods an application calls per request: call_soon,
# create_future, create_task, get_debug, and the loop iteration _run_once
# (goaio.aio.Loop binds them on the instance; docs/aio.md, "The run loop").
# Each keeps BaseEventLoop's semantics: the same asyncio.Handle objects in the
# same _ready deque, the same timer heap (cancelled-handle cleanup included),
# the same exception reports. In debug mode, on a closed loop and with a task
# factory, each delegates to asyncio's own Python method, which makes the
# checks and the source tracebacks debug mode asks for.
#
# What is saved is CPython frames: asyncio's call_soon is five of them
# (call_soon, _check_closed, _call_soon, Handle.__init__, get_debug), and
# every callback runs through Handle._run and Context.run; here a handle of
# asyncio's own classes is run by entering its context from C. GIL held
# everywhere here.

from cpython.contextvars cimport PyContext_Enter, PyContext_Exit, PyContext_CopyCurrent
from cpython.dict cimport PyDict_GetItem

cdef extern from "Python.h":
    ctypedef struct PyMemberDef:
        int type
        Py_ssize_t offset
    ctypedef struct PyMemberDescrObject:
        PyMemberDef *d_member
    ctypedef struct rl_typeobj "PyTypeObject":
        void *tp_alloc
    PyObject *PyType_GenericAlloc(PyObject *, Py_ssize_t)

# asyncio.Handle's slots (its __slots__ member descriptors), by offset: a
# Handle is filled and read without an attribute lookup per field. Found at
# init from the descriptors; any that is not a plain object slot turns the
# offsets off (-1) and the attribute protocol is used instead.
cdef enum:
    RL_CALLBACK
    RL_ARGS
    RL_CANCELLED
    RL_LOOP
    RL_TB
    RL_REPR
    RL_CONTEXT
    RL_NSLOTS
cdef Py_ssize_t _rl_off[RL_NSLOTS]
cdef bint _rl_slots = False
_RL_SLOT_NAMES = ("_callback", "_args", "_cancelled", "_loop", "_source_traceback", "_repr",
                  "_context")

# set once by aio_runloop_init() (goaio.aio imports asyncio; the backend does not)
cdef object _rl_handle_cls = None        # asyncio.Handle
cdef object _rl_timer_cls = None         # asyncio.TimerHandle
cdef object _rl_future_cls = None        # asyncio.Future
cdef object _rl_task_cls = None          # asyncio.Task
cdef object _rl_context_cls = None       # contextvars.Context
cdef object _rl_heappop = None
cdef object _rl_heapify = None
cdef object _rl_base = None              # asyncio.BaseEventLoop: the Python methods
cdef object _rl_handle_error = None      # goaio.aio: Handle._run's exception report
cdef object _rl_run_debug = None         # goaio.aio: _run_once's debug-mode handle run
cdef double _rl_max_timeout = 86400.0    # base_events.MAXIMUM_SELECT_TIMEOUT
cdef Py_ssize_t _rl_min_sched = 100      # base_events._MIN_SCHEDULED_TIMER_HANDLES
cdef double _rl_min_frac = 0.5           # base_events._MIN_CANCELLED_TIMER_HANDLES_FRACTION


def aio_runloop_init(handle_cls, timer_cls, future_cls, task_cls, context_cls, heappop,
                     heapify, base, handle_error, run_debug, max_timeout, min_sched,
                     min_frac):
    """goaio.aio hook: the asyncio objects and constants AioRunLoop uses."""
    global _rl_handle_cls, _rl_timer_cls, _rl_future_cls, _rl_task_cls, _rl_context_cls
    global _rl_heappop, _rl_heapify, _rl_base, _rl_handle_error, _rl_run_debug
    global _rl_max_timeout, _rl_min_sched, _rl_min_frac
    _rl_handle_cls = handle_cls
    _rl_timer_cls = timer_cls
    _rl_future_cls = future_cls
    _rl_task_cls = task_cls
    _rl_context_cls = context_cls
    _rl_heappop = heappop
    _rl_heapify = heapify
    _rl_base = base
    _rl_handle_error = handle_error
    _rl_run_debug = run_debug
    _rl_max_timeout = max_timeout
    _rl_min_sched = min_sched
    _rl_min_frac = min_frac
    _rl_find_slots(handle_cls)


cdef void _rl_find_slots(object cls):
    global _rl_slots
    cdef PyMemberDescrObject *d
    cdef int i
    _rl_slots = False
    if (<rl_typeobj *><PyObject *>cls).tp_alloc != <void *>PyType_GenericAlloc:
        return
    for i, name in enumerate(_RL_SLOT_NAMES):
        desc = cls.__dict__.get(name)
        if desc is None or type(desc).__name__ != "member_descriptor":
            return
        d = <PyMemberDescrObject *><PyObject *>desc
        if d.d_member.type != 16:           # T_OBJECT_EX: a plain object slot
            return
        _rl_off[i] = d.d_member.offset
    _rl_slots = True


cdef inline PyObject *rl_get(object h, int i) noexcept:
    # the slot's object, borrowed (NULL: unset)
    return (<PyObject **>(<char *><PyObject *>h + _rl_off[i]))[0]


cdef inline void rl_put(object h, int i, object v) noexcept:
    # set a slot of a new handle (unset before)
    Py_INCREF(v)
    (<PyObject **>(<char *><PyObject *>h + _rl_off[i]))[0] = <PyObject *>v


cdef object rl_new_handle(object loop, object callback, object args, object context):
    """asyncio.Handle(callback, args, loop, context) outside debug mode."""
    cdef object h
    cdef PyObject *o
    if not _rl_slots:
        h = _rl_handle_cls.__new__(_rl_handle_cls)
        h._context = context
        h._loop = loop
        h._callback = callback
        h._args = args
        h._cancelled = False
        h._repr = None
        h._source_traceback = None
        return h
    o = PyType_GenericAlloc(<PyObject *>_rl_handle_cls, 0)
    if o == NULL:
        raise MemoryError()
    h = <object>o
    Py_DECREF(h)                              # (the cast took a reference of its own)
    rl_put(h, RL_CONTEXT, context)
    rl_put(h, RL_LOOP, loop)
    rl_put(h, RL_CALLBACK, callback)
    rl_put(h, RL_ARGS, args)
    rl_put(h, RL_CANCELLED, False)
    rl_put(h, RL_REPR, None)
    rl_put(h, RL_TB, None)
    return h


cdef inline bint rl_cancelled(object h) except -1:
    # handle._cancelled of an asyncio.Handle / TimerHandle
    cdef PyObject *p
    if _rl_slots:
        p = rl_get(h, RL_CANCELLED)
        if p == <PyObject *>True:
            return True
        if p == <PyObject *>False:
            return False
    return bool(h._cancelled)


cdef int rl_run_handle(object h) except -1:
    """Handle._run for a handle of asyncio's own classes: its callback in its
    context, an exception reported as Handle._run reports it."""
    cdef object ctx
    cdef object cb
    cdef object args
    cdef object err = None
    cdef PyObject *p
    if _rl_slots:
        p = rl_get(h, RL_CONTEXT)
        ctx = <object>p if p != NULL else None
        p = rl_get(h, RL_CALLBACK)
        cb = <object>p if p != NULL else None
        p = rl_get(h, RL_ARGS)
        args = <object>p if p != NULL else None
    else:
        ctx = h._context
        cb = h._callback
        args = h._args
    if type(ctx) is not _rl_context_cls or type(args) is not tuple:
        h._run()
        return 0
    try:
        PyContext_Enter(ctx)
    except RuntimeError:
        # already entered: Context.run raises the same, and Handle._run
        # reports it
        h._run()
        return 0
    try:
        cb(*args)
    except BaseException as exc:
        err = exc
    PyContext_Exit(ctx)
    if err is not None:
        if isinstance(err, (SystemExit, KeyboardInterrupt)):
            raise err
        _rl_handle_error(h, err)
    return 0


@cython.final
cdef class AioRunLoop:
    """goaio.aio hook: compiled call_soon / create_future / create_task /
    get_debug / _run_once of one loop (bound on the loop instance)."""
    cdef object loop
    cdef object ready                 # the loop's _ready deque
    cdef object ready_append          # its append
    cdef object ready_popleft         # its popleft
    cdef dict ldict                   # the loop's __dict__: its _debug, _closed, _task_factory

    cdef inline object attr(self, str name):
        # loop.<name> for an attribute BaseEventLoop keeps in the instance
        # (read from its __dict__, no type lookup first); getattr if absent
        cdef PyObject *p = PyDict_GetItem(self.ldict, name)
        if p != NULL:
            return <object>p
        return getattr(self.loop, name)

    def __init__(self, loop, ready):
        self.loop = loop
        self.ldict = loop.__dict__
        self.ready = ready
        self.ready_append = ready.append
        self.ready_popleft = ready.popleft

    def get_debug(self):
        return self.attr("_debug")

    def call_soon(self, callback, *args, context=None):
        loop = self.loop
        if self.attr("_closed") or self.attr("_debug"):
            # the checks (closed, thread, callback) and the source traceback
            return _rl_base.call_soon(loop, callback, *args, context=context)
        if context is None:
            context = PyContext_CopyCurrent()
        h = rl_new_handle(loop, callback, args, context)
        self.ready_append(h)
        return h

    def create_future(self):
        return _rl_future_cls(loop=self.loop)

    def create_task(self, coro, *, name=None, context=None, **kwargs):
        loop = self.loop
        if (kwargs or self.attr("_closed") or self.attr("_debug")
                or self.attr("_task_factory") is not None):
            # (kwargs: what a later asyncio's create_task takes, eager_start)
            return _rl_base.create_task(loop, coro, name=name, context=context, **kwargs)
        return _rl_task_cls(coro, loop=loop, name=name, context=context)

    def _run_once(self):
        """One loop iteration, as BaseEventLoop._run_once."""
        cdef object loop = self.loop
        cdef object ready = self.ready
        cdef object scheduled
        cdef object h
        cdef object new_scheduled
        cdef object timeout
        cdef object event_list
        cdef object t
        cdef object end_time
        cdef Py_ssize_t count, ntodo, i
        if loop._debug:
            _rl_base._run_once(loop)
            return
        scheduled = loop._scheduled
        count = len(scheduled)
        if count > _rl_min_sched and loop._timer_cancelled_count / count > _rl_min_frac:
            # many cancelled timers: drop them all at once
            new_scheduled = []
            for h in scheduled:
                if h._cancelled:
                    h._scheduled = False
                else:
                    new_scheduled.append(h)
            _rl_heapify(new_scheduled)
            loop._scheduled = scheduled = new_scheduled
            loop._timer_cancelled_count = 0
        else:
            while scheduled and scheduled[0]._cancelled:
                loop._timer_cancelled_count -= 1
                h = _rl_heappop(scheduled)
                h._scheduled = False
        timeout = None
        if ready or loop._stopping:
            timeout = 0
        elif scheduled:
            timeout = min(max(0, scheduled[0]._when - loop.time()), _rl_max_timeout)
        event_list = loop._selector.select(timeout)
        loop._process_events(event_list)
        event_list = None
        end_time = loop.time() + loop._clock_resolution
        scheduled = loop._scheduled
        while scheduled:
            h = scheduled[0]
            if h._when >= end_time:
                break
            h = _rl_heappop(scheduled)
            h._scheduled = False
            ready.append(h)
        ntodo = len(ready)
        popleft = self.ready_popleft
        for i in range(ntodo):
            h = popleft()
            t = type(h)
            if t is _rl_handle_cls or t is _rl_timer_cls:
                if rl_cancelled(h):
                    continue
                if self.attr("_debug"):
                    _rl_run_debug(loop, h)
                    continue
                rl_run_handle(h)
                continue
            if h._cancelled:
                continue
            if loop._debug:
                _rl_run_debug(loop, h)
                continue
            h._run()
        h = None
