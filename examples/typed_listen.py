"""Typed user code for the posted accept/connect API: a server and a client
on one service, with no thread of their own. `mypy --strict` checks it
against the stubs (tests/test_typing.py); ``python examples/typed_listen.py``
runs it on a goaio whose services have ``listen`` and ``connect``.
"""

from __future__ import annotations

import goaio

ACCEPT = "accept"
CONNECT = "connect"
MESSAGE = b"ping over a posted connect"


def run(svc: goaio.AIOService) -> bytes:
    """Listen, connect to it, send MESSAGE, echo it back, half-close; returns
    what the client received."""
    got = bytearray()
    with svc.listen(("127.0.0.1", 0), backlog=16, recvq_size=4) as ln:
        ln.accept(ACCEPT)
        svc.connect(CONNECT, ln.address, timeout=5.0)
        client: goaio.AIOConn | None = None
        while client is None or len(got) < len(MESSAGE):
            res = svc.get_complete_status(timeout=5.0)
            if res is None:
                raise TimeoutError("no completion within 5 s")
            if res.err is not None:
                raise res.err
            conn = res.conn
            assert conn is not None  # None only for a failed accept/connect
            if res.context == ACCEPT:
                conn.recv("server-recv", bytearray(64))
            elif res.context == CONNECT:
                client = conn
                client.send("client-send", MESSAGE)
                client.recv("client-recv", bytearray(64))
            elif res.context == "server-recv":
                data = memoryview(res.buff)[: res.bytes_transferred]
                conn.send("server-send", bytes(data))
            elif res.context == "client-recv":
                got += memoryview(res.buff)[: res.bytes_transferred]
                if len(got) < len(MESSAGE):
                    conn.recv("client-recv", bytearray(64))
        client.shutdown("client-shutdown")
        cancelled: int = client.cancel("client-recv")
        assert cancelled == 0
        peer = client.peername
        assert peer is not None
    stats: dict[str, int] = svc.stats()
    assert stats["accepted"] >= 1
    return bytes(got)


def main() -> None:
    with goaio.AIOService() as svc:
        print(run(svc))


if __name__ == "__main__":
    main()
