"""A sock_sendall/sock_recv ping-pong (docs/aio.md, "sock_* on goaio").

    python scripts/aio_sock_pingpong.py default|epoll|pure|kqueue|uvloop [ROUND_TRIPS]
"""
import asyncio, os, socket, sys, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import goaio.aio, goaio._aio_sock as S

N = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
kind = sys.argv[1]

binds = [0]
orig = S._SockState.ensure_conn
def ensure(self, sock):
    if self.conn is None:
        binds[0] += 1
    return orig(self, sock)
S._SockState.ensure_conn = ensure

def mkloop():
    if kind == "default":
        return asyncio.SelectorEventLoop()
    if kind == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    import importlib
    return goaio.aio.Loop(backend=importlib.import_module("goaio._" + kind))

async def main(loop):
    lst = socket.create_server(("127.0.0.1", 0))
    a = socket.create_connection(lst.getsockname()); b, _ = lst.accept(); lst.close()
    for s in (a, b):
        s.setblocking(False); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    msg = b"x" * 64
    async def client():
        for _ in range(N):
            await loop.sock_sendall(a, msg)
            got = 0
            while got < 64:
                got += len(await loop.sock_recv(a, 4096))
    async def server():
        for _ in range(N):
            got = 0
            while got < 64:
                got += len(await loop.sock_recv(b, 4096))
            await loop.sock_sendall(b, msg)
    t0 = time.perf_counter(); c0 = time.process_time()
    await asyncio.gather(client(), server())
    c1 = time.process_time(); t1 = time.perf_counter()
    a.close(); b.close()
    print(f"{kind:8s} {N} round trips: {N/(t1-t0):8.0f} rt/s, CPU {1e6*(c1-c0)/N:6.2f} us/rt, binds {binds[0]}")

loop = mkloop()
loop.run_until_complete(main(loop))
loop.close()
