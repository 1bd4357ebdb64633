# core/consts.pxi -- constants shared by the compiled core and its pollers
# (included before the poller).
cdef enum:
    POLL_BATCH = 128      # events taken by one poll
    PF_READ = 1           # poller event flags
    PF_WRITE = 2
    PF_HUP = 4            # hang-up or error seen: EOF or an error is pending
