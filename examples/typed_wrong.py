"""Deliberately wrong calls: `mypy --strict` must reject this file
(tests/test_typing.py checks it fails, and on which lines). Not meant to run."""

import socket

import goaio

svc = goaio.AIOService(workers="two")  # WRONG: workers is an int
a, b = socket.socketpair()
conn = svc.bind(a)
conn.recv("ctx", "not a buffer")  # WRONG: a str is not a buffer
conn.send("ctx", 42)  # WRONG: an int is not a buffer
conn.set_recv_timeout("soon")  # WRONG: seconds is a number or None
res = svc.get_complete_status()
n: int = res.bytes_transferred  # WRONG: res may be None (a timeout)
svc.bind(a, goaio.AIOConnOption(), share_buff=goaio.BufferPool())  # WRONG: an option and keywords
