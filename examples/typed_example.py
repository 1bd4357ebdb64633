"""A tiny echo over a socketpair, written as typed user code: `mypy --strict`
passes it against goaio's stubs (tests/test_typing.py checks that), and it
runs: ``python examples/typed_example.py`` prints what came back.
"""

from __future__ import annotations

import socket

import goaio


def echo_once(svc: goaio.AIOService, message: bytes, pool: goaio.BufferPool) -> bytes:
    """Send ``message`` from a client socket to a goaio connection that echoes
    it back with share buffers; return what the client read."""
    server_sock, client = socket.socketpair()
    with client:
        conn: goaio.AIOConn = svc.bind(server_sock, share_buff=pool, user_data="server side")
        conn.set_recv_timeout(5.0)
        conn.recv("recv", None)  # a pool buffer is taken when data arrives
        client.sendall(message)
        echoed = bytearray(len(message))
        view = memoryview(echoed)
        done = 0
        while done < len(message):
            res: goaio.AIOResult | None = svc.get_complete_status(timeout=5.0)
            if res is None:
                raise TimeoutError("no completion within 5 s")
            if res.err is not None:
                raise res.err
            assert res.conn is conn
            if res.context == "recv":
                buff: bytearray = res.buff
                # the pool buffer rides along as the send's context
                conn.send(buff, memoryview(buff)[: res.bytes_transferred])
            else:
                pool.release(res.context)
                while done < len(message):
                    n = client.recv_into(view[done:])
                    if not n:
                        raise EOFError("the echo side closed")
                    done += n
                if done < len(message):
                    conn.recv("recv", None)
        conn.close()
    return bytes(echoed)


def gather_send(conn: goaio.AIOConn, parts: list[bytes]) -> None:
    """One writev for several buffers."""
    conn.send("gather", parts)


def main() -> None:
    pool = goaio.BufferPool(buffer_size=4096)
    with goaio.AIOService(workers=1) as svc:
        got = echo_once(svc, b"hello, typed goaio", pool)
        batch: list[goaio.AIOResult] = svc.get_complete_statuses(max_results=8, timeout=0)
        stray = [r for r in batch if r.context != "recv"]
        assert not stray, stray
    reason: str | None = goaio.BACKEND_FALLBACK_REASON
    print(f"{goaio.BACKEND}: {got!r}" + (f" ({reason})" if reason else ""))
    try:
        raise goaio.RecvTimeout("example")
    except TimeoutError as exc:
        assert isinstance(exc, goaio.Error)


if __name__ == "__main__":
    main()
