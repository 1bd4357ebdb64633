# core/consts.pxi -- constants shared by the compiled core and its pollers
# (included before the poller).
cdef enum:
    POLL_BATCH_MAX = 1024 # bound of the event arrays; a poll takes POLL_BATCH_N (_messages.POLL_BATCH)
    PF_READ = 1           # poller event flags
    PF_WRITE = 2
    PF_HUP = 4            # hang-up or error seen: EOF or an error is pending


# A timeout of this many ns (~146 years) or more means no limit: deadlines
# (now + timeout) then never overflow int64.
cdef int64_t NO_LIMIT_NS = (<int64_t>1) << 62
cdef int QUEUE_MAX = 0x7FFFFFFF   # recvq_size / sendq_size are clamped to this
