"""The TLS measurements of the README (issue 11's targets), side by side in one run.

    python -m goaio._bench.tls_measure [--c-server EXE] [--peer-python PY] [--seconds S]
                                       [--rounds R] [--idle N] [--only echo,idle,handshake,https]
                                       [--json FILE]

Four measures, each over the same servers in turn (rounds interleaved; the
median run is shown):

- ``echo``: ``--conns`` (50) TLS connections x ``--size`` (64) B echo with the
  bench's C TLS client (loadgen_tls.c): round trips/s and the server's CPU
  time per round trip (user + system of all its threads, from /proc);
- ``idle``: the server's RSS per idle TLS connection, ``--idle`` (2000)
  connections handshaken, one byte echoed on each, then silent;
- ``handshake``: a new connection with a full handshake per round trip,
  ``--hs-conns`` (10) at a time: handshakes/s and CPU per handshake;
- ``https``: ``wrk`` (if installed) on an HTTPS keep-alive "Hello, World!"
  server: examples/https_server.py on goaio vs the same server as an
  asyncio Protocol on uvloop: requests/s, errors.

Servers: goaio's ``echo --tls`` (compiled and pure, share buffers and own
buffers), uvloop's and asyncio's TLS Protocol servers (tls_peers.py, run by
``--peer-python``, the interpreter that has uvloop), and ``--c-server EXE``,
a C TLS echo server started as ``EXE PORT CERT KEY`` that prints
``listening`` (the yardstick's echo_tls_c.c is one; without it, the bench's
own echo_tls_epoll.c). Client and server are
unpinned unless ``--pin``. The certificate is the bench's (RSA 2048).
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time

from . import client as clientmod
from . import native
from . import servers as srvmod
from . import tlscert

EXAMPLES = os.path.join(srvmod.PACKAGE_ROOT, "examples")


def _servers(args, cert, key):
    """name -> (label, argv, env) of every server this machine can run."""
    goaio_env = dict(os.environ, PYTHONPATH=srvmod.goaio_for_servers()["pythonpath"])
    goaio_env.pop("GOAIO_BACKEND", None)
    found = srvmod.goaio_for_servers()["why"]
    out = {}
    for backend in ("epoll", "pure"):
        if found.get(backend):
            continue
        env = dict(goaio_env, GOAIO_BACKEND=backend)
        base = [sys.executable, "-P", "-m", "goaio", "echo", "--port", "0", "--quiet", "--tls", cert, key]
        out[f"goaio-{backend}-share"] = (f"goaio {backend}, share buffers", base + ["--share-buff"], env)
        out[f"goaio-{backend}-share-w2"] = (f"goaio {backend}, share buffers, 2 workers",
                                            base + ["--share-buff", "--workers", "2"], env)
        out[f"goaio-{backend}"] = (f"goaio {backend}", base, env)
        out[f"https-goaio-{backend}"] = (f"goaio {backend} (examples/https_server.py)",
                                         [sys.executable, "-P", os.path.join(EXAMPLES, "https_server.py"),
                                          cert, key, "0"], env)
    peer_py = args.peer_python or sys.executable
    for kind in ("uvloop", "asyncio"):
        if kind == "uvloop" and subprocess.run([peer_py, "-c", "import uvloop"], capture_output=True).returncode:
            continue
        out[kind] = (f"{kind} Protocol", [peer_py, srvmod.TLS_PEERS, kind, "echo", cert, key, "--port", "0"],
                     None)
        out[f"https-{kind}"] = (f"{kind} Protocol", [peer_py, srvmod.TLS_PEERS, kind, "https", cert, key,
                                                     "--port", "0"], None)
    if args.c_server:
        out["c"] = ("C epoll on OpenSSL (--c-server)", [args.c_server, "{port}", cert, key], None)
    elif native.build("echo_tls_epoll"):
        out["c"] = ("C epoll on OpenSSL (echo_tls_epoll.c)", [native.build("echo_tls_epoll"), "0", cert, key],
                    None)
    return out


def _start(name, entry, cpus):
    label, argv, env = entry
    spec = srvmod.Spec(name, label, "c" if name == "c" else "peer", tls=True)
    return srvmod.Server(spec, cpus=cpus, argv=argv, env=env)


def _echo(server, args, handshake, client_cpus):
    exe = native.build("loadgen_tls")
    conns = args.hs_conns if handshake else args.conns
    prefix = [exe] + (["-H"] if handshake else [])
    cpu0 = server.cpu_seconds()
    res = clientmod.run_timed(prefix, server.port, conns, args.size, args.seconds, 0.5, cpus=client_cpus)
    cpu1 = server.cpu_seconds()
    res["cpu_us_per_rt"] = (cpu1 - cpu0) * 1e6 / max(res.get("completed", 0), 1)
    if res["bad_bytes"] or res["errors"]:
        res["failed"] = f"{res['bad_bytes']:.0f} wrong bytes, {res['errors']:.0f} failed connections"
    return res


def _wrk(server, args, client_cpus):
    wrk = shutil.which("wrk")
    argv = [wrk, "-t1", f"-c{args.conns}", f"-d{args.seconds:g}s", f"https://127.0.0.1:{server.port}/"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if client_cpus:
        try:
            os.sched_setaffinity(proc.pid, client_cpus)
        except OSError:
            pass
    cpu0 = server.cpu_seconds()
    out, err = proc.communicate(timeout=args.seconds + 60)
    cpu1 = server.cpu_seconds()
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res = {"rps": float(m.group(1)) if m else None,
           "errors": (sum(map(int, errs.groups())) if errs else 0) + (int(non2xx.group(1)) if non2xx else 0),
           "wrk": " ".join(out.split())[-300:]}
    if total:
        res["cpu_us_per_rt"] = (cpu1 - cpu0) * 1e6 / max(int(total.group(1)), 1)
    if res["rps"] is None:
        res["failed"] = f"wrk: {err.strip()[-300:] or out.strip()[-300:]}"
    elif res["errors"]:
        res["failed"] = f"{res['errors']} wrk errors"
    return res


MEASURES = {
    "echo": ["goaio-epoll-share", "goaio-epoll", "goaio-pure-share", "uvloop", "asyncio", "c"],
    "idle": ["goaio-epoll-share", "goaio-pure-share", "uvloop", "asyncio", "c"],
    "handshake": ["goaio-epoll-share", "goaio-epoll-share-w2", "goaio-pure-share", "uvloop", "asyncio", "c"],
    "https": ["https-goaio-epoll", "https-goaio-pure", "https-uvloop", "https-asyncio"],
}


def _table(title, rows, fields, base_names):
    by = {r["name"]: r for r in rows}
    head = ["server"] + [h for h, _ in fields] + [f"vs {b.removeprefix('https-')}" for b in base_names]
    lines = [f"**{title}**", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in rows:
        if r.get("failed"):
            lines.append(f"| {r['label']} | FAILED: {r['failed']} |")
            continue
        cells = [fmt(r.get(k)) for _, (k, fmt) in fields]
        for b in base_names:
            base = by.get(b)
            key = fields[0][1][0]
            ok = base and not base.get("failed") and base.get(key) and r.get(key) is not None
            cells.append(f"{r[key] / base[key]:.2f}×" if ok else "–")
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _f0(v):
    return "–" if v is None else f"{v:,.0f}".replace(",", " ")


def _f1(v):
    return "–" if v is None else f"{v:.1f}"


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m goaio._bench.tls_measure", description=__doc__.split("\n")[0])
    ap.add_argument("--c-server", help="a C TLS echo server: EXE PORT CERT KEY, prints 'listening'")
    ap.add_argument("--peer-python", help="the interpreter that runs the uvloop/asyncio servers")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--hs-conns", type=int, default=10)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--idle", type=int, default=2000)
    ap.add_argument("--only", default="echo,idle,handshake,https")
    ap.add_argument("--servers", default=None, help="comma-separated subset of the server names")
    ap.add_argument("--pin", action="store_true", help="server on CPU 0, client on the others")
    ap.add_argument("--json", help="write the raw figures here")
    args = ap.parse_args(argv)
    if native.build("loadgen_tls") is None:
        sys.exit(f"no TLS client: {native.why_not('loadgen_tls')}")
    pair = tlscert.ensure()
    if pair is None:
        sys.exit(tlscert.why_not())
    clientmod.raise_nofile_limit()
    servers = _servers(args, *pair)
    wanted = set(args.servers.split(",")) if args.servers else None
    server_cpus = client_cpus = None
    if args.pin and len(os.sched_getaffinity(0)) >= 2:
        cpus = sorted(os.sched_getaffinity(0))
        server_cpus, client_cpus = {cpus[0]}, set(cpus[1:])
    load0 = os.getloadavg()
    print(f"{datetime.datetime.now():%Y-%m-%d %H:%M}, Python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, {'pinned' if server_cpus else 'unpinned'}, load average "
          f"{load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}", flush=True)
    results = {}
    for measure in args.only.split(","):
        names = [n for n in MEASURES[measure] if n in servers and (wanted is None or n in wanted
                                                                   or n.removeprefix("https-") in wanted)]
        if measure == "https" and shutil.which("wrk") is None:
            print("https: skipped (no wrk)", flush=True)
            continue
        rows = {n: {"name": n, "label": servers[n][0], "runs": []} for n in names}
        for rnd in range(args.rounds if measure != "idle" else 1):
            for n in names:
                row = rows[n]
                try:
                    with _start(n, servers[n], server_cpus) as server:
                        if measure == "idle":
                            res = srvmod.measure_idle_tls(server, args.idle)
                        elif measure == "https":
                            res = _wrk(server, args, client_cpus)
                        else:
                            res = _echo(server, args, measure == "handshake", client_cpus)
                except Exception as exc:  # one server failing does not stop the others
                    res = {"failed": f"{type(exc).__name__}: {exc}"}
                row["runs"].append(res)
                print(f"  {measure} {n}: " + " ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                                                      for k, v in res.items() if k != "wrk"), flush=True)
        for row in rows.values():
            ok = [r for r in row["runs"] if not r.get("failed")]
            if not ok:
                row["failed"] = row["runs"][-1].get("failed")
                continue
            key = "bytes_per_conn" if measure == "idle" else "rps"
            ok.sort(key=lambda r: r.get(key) or 0)
            row.update(ok[(len(ok) - 1) // 2])
        results[measure] = list(rows.values())
    load1 = os.getloadavg()
    print()
    bases = {"echo": ["uvloop", "c"], "handshake": ["uvloop", "c"], "idle": [], "https": ["https-uvloop"]}
    titles = {"echo": f"TLS echo, {args.conns} connections × {args.size} B, {args.seconds:g} s",
              "handshake": f"TLS handshakes (a new connection per round trip, {args.hs_conns} at a time)",
              "idle": f"server memory per idle TLS connection, {args.idle} connections",
              "https": f"HTTPS keep-alive under wrk -t1 -c{args.conns} -d{args.seconds:g}s"}
    for measure, rows in results.items():
        if measure == "idle":
            fields = [("B/conn", ("bytes_per_conn", _f0))]
        else:
            fields = [("rps", ("rps", _f0)), ("server CPU µs/rt", ("cpu_us_per_rt", _f1))]
            if measure != "https":
                fields.append(("p99 µs", ("p99_us", _f0)))
        print(_table(titles[measure], rows, fields, bases[measure]))
        print()
    print(f"load average before {load0[0]:.2f}, after {load1[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"load": [load0, load1], "args": vars(args), "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
