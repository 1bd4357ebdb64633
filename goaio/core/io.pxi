# core/io.pxi -- the system calls: run a connection's receive and send queues
# as far as the socket allows (c.lock held throughout; every syscall on c.fd
# is made under c.lock after checking c.closed).


cdef inline void advance(op_t *op, Py_ssize_t n) noexcept nogil:
    """Move op's iovec position past n bytes (the op is the caller's)."""
    while n > 0 and op.iovcnt > 0:
        if <size_t>n >= op.iov.iov_len:
            n -= op.iov.iov_len
            op.iov += 1
            op.iovcnt -= 1
        else:
            op.iov.iov_base = <char *>op.iov.iov_base + n
            op.iov.iov_len -= n
            n = 0
    # skip zero-length entries so the next call never passes an empty iovec first
    while op.iovcnt > 0 and op.iov.iov_len == 0:
        op.iov += 1
        op.iovcnt -= 1



cdef void process_recv_locked(svc_t *s, conn_t *c, oplist_t *done) noexcept nogil:
    """Run the receive queue of c as far as the socket allows (c.lock held;
    dropped and retaken inside attach_buffer/detach_buffer, see sharebuf.pxi)."""
    cdef op_t *op
    cdef ssize_t n
    cdef size_t want
    cdef int e, r
    if c.tls != NULL:
        tls_process_locked(s, c, done)      # core/tls.pxi
        return
    while c.rq.head != NULL and not c.closed:
        op = c.rq.head
        if tls_pending(c):
            break           # a start_tls is pending: receives get TLS plaintext

        if c.eof:
            finish_op_locked(c, opq_pop_locked(&c.rq), ERR_EOF, done)
            continue
        if not c.readable:
            return
        if (op.flags & OPF_NEEDBUF) and op.buffobj == NULL:
            r = attach_buffer_locked(s, c, op, done)
            if r < 0:
                return
            if r == 0:
                continue
        if op.iovcnt == 1:
            want = op.iov.iov_len
            n = recv(c.fd, op.iov.iov_base, want, 0)
        else:
            want = 0
            for r in range(op.iovcnt if op.iovcnt < IOV_MAX else IOV_MAX):
                want += op.iov[r].iov_len
            n = readv(c.fd, op.iov, op.iovcnt if op.iovcnt < IOV_MAX else IOV_MAX)
        if n > 0:
            op.done += n
            if <size_t>n < want and not c.hup:
                # A short read drained the socket and new data raises a new
                # edge; but a FIN that came with the data raised its edge
                # already, so after a hang-up we read on until EOF.
                c.readable = 0
            if op.kind == OP_RECV or op.done >= op.total:
                finish_op_locked(c, opq_pop_locked(&c.rq), 0, done)
            else:
                advance(op, n)
            continue
        if n == 0:
            c.eof = 1
            continue
        e = errno
        if e == EINTR:
            continue
        if goaio_would_block(e):
            c.readable = 0
            if op.flags & OPF_NEEDBUF:
                cq_push(s, done)        # (detach_buffer_locked may drop c.lock)
                detach_buffer_locked(c, op)
            return
        opq_fail_locked(c, &c.rq, e, done)
        return


cdef void process_send_locked(svc_t *s, conn_t *c, oplist_t *done) noexcept nogil:
    """Run the send queue of c as far as the socket allows (c.lock held)."""
    cdef op_t *op
    cdef ssize_t n
    cdef size_t want
    cdef int e, i, cnt
    cdef msghdr msg
    if c.tls != NULL:
        tls_process_locked(s, c, done)      # core/tls.pxi
        return
    while c.sq.head != NULL and not c.closed:
        op = c.sq.head
        if op.kind == OP_STARTTLS:
            tls_try_start_locked(s, c, done)    # (TLS runs from here on, if it started)
            return
        if op.kind == OP_SHUTDOWN:
            run_shutdown_locked(c, done)    # core/halfclose.pxi
            continue
        if op.total == 0:
            finish_op_locked(c, opq_pop_locked(&c.sq), ERR_EMPTY, done)
            continue
        if not c.writable:
            return
        if op.iovcnt == 1:
            want = op.iov.iov_len
            n = send(c.fd, op.iov.iov_base, want, MSG_NOSIGNAL | MSG_DONTWAIT)
        else:
            cnt = op.iovcnt if op.iovcnt < IOV_MAX else IOV_MAX
            want = 0
            for i in range(cnt):
                want += op.iov[i].iov_len
            memset(&msg, 0, sizeof(msg))
            msg.msg_iov = op.iov
            msg.msg_iovlen = cnt
            n = sendmsg(c.fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT)
        if n >= 0:
            op.done += n
            if <size_t>n < want:
                c.writable = 0    # the socket buffer is full; EPOLLOUT comes when it drains
            if op.done >= op.total:
                finish_op_locked(c, opq_pop_locked(&c.sq), 0, done)
            else:
                advance(op, n)
            continue
        e = errno
        if e == EINTR:
            continue
        if goaio_would_block(e):
            c.writable = 0
            return
        if c.shut == 1:
            share_send_error_locked(c, op, e)   # the pending shutdown fails with it
        finish_op_locked(c, opq_pop_locked(&c.sq), e, done)

