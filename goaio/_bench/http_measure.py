"""The HTTP rows of the bench (issue 13's "pure >= 1.0x asyncio under wrk"):
``wrk`` against keep-alive "Hello, World!" servers, side by side in one run.

    python -m goaio bench --http [--conns N] [--seconds S] [--rounds R] [--servers a,b]
    python -m goaio._bench.http_measure [same options] [--threads T] [--peer-python PY]

Servers: examples/http_server.py (goaio's API) on the compiled backend
(``goaio-epoll``) and on the pure one (``goaio-pure``); the same server as
an asyncio ``Protocol`` on the default loop (``asyncio``) and on uvloop
(``uvloop``, when the peer interpreter has it): goaio/_bench/http_peers.py,
whose parsing is the example's, line for line. Each round runs every server
in turn (rounds interleaved; the median round by rps is shown) with ``wrk
-tT -cN -dSs``, and reads the server's CPU time (user + system, all its
threads, from /proc) over the run: CPU µs per request is the figure that
holds on a loaded machine, where rps moves ±30 % from run to run. Loopback
only; needs ``wrk`` on PATH.
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

from . import servers as srvmod



def _example():
    """examples/http_server.py: the checkout's (the bench imported from one),
    else under $GOAIO_EXAMPLES; None when neither has it (the examples are
    not installed with the package)."""
    for d in (os.path.join(srvmod.PACKAGE_ROOT, "examples"), os.environ.get("GOAIO_EXAMPLES")):
        if d and os.path.isfile(os.path.join(d, "http_server.py")):
            return os.path.join(d, "http_server.py")
    return None

HTTP_PEERS = os.path.join(srvmod.HERE, "http_peers.py")
ORDER = ["goaio-epoll", "goaio-pure", "asyncio", "uvloop"]


def _servers(peer_python):
    """name -> (label, argv, env), or name -> why it cannot run here."""
    found = srvmod.goaio_for_servers()
    env = dict(os.environ, PYTHONPATH=found["pythonpath"])
    env.pop("GOAIO_BACKEND", None)
    out = {}
    example = _example()
    for backend in ("epoll", "pure"):
        why = found["why"].get(backend)
        if example is None:
            why = ("examples/http_server.py is not here (it is not installed with goaio): run from "
                   "a checkout, or set GOAIO_EXAMPLES to its examples/ folder")
        if why:
            out[f"goaio-{backend}"] = why
            continue
        out[f"goaio-{backend}"] = (f"goaio {backend}, examples/http_server.py",
                                   [sys.executable, "-P", example, "0"],
                                   dict(env, GOAIO_BACKEND=backend))
    py = peer_python or sys.executable
    for kind in ("asyncio", "uvloop"):
        if kind == "uvloop" and subprocess.run([py, "-c", "import uvloop"], capture_output=True).returncode:
            out[kind] = f"{py} cannot import uvloop"
            continue
        out[kind] = (f"{kind} Protocol (http_peers.py)", [py, HTTP_PEERS, kind, "--port", "0"], None)
    return out


def _duration(seconds):
    """wrk's -d takes whole seconds: at least 1."""
    return max(1, round(seconds))


def _wrk(server, args):
    argv = [shutil.which("wrk"), f"-t{args.threads}", f"-c{max(args.conns, args.threads)}",
            f"-d{_duration(args.seconds)}s",
            f"http://127.0.0.1:{server.port}/"]
    cpu0 = server.cpu_seconds()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=_duration(args.seconds) + 60)
    cpu1 = server.cpu_seconds()
    out = proc.stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res = {"rps": float(m.group(1)) if m else None,
           "errors": (sum(map(int, errs.groups())) if errs else 0) + (int(non2xx.group(1)) if non2xx else 0)}
    if total:
        res["requests"] = int(total.group(1))
        res["cpu_us_per_req"] = (cpu1 - cpu0) * 1e6 / max(res["requests"], 1)
    if res["rps"] is None:
        res["failed"] = "wrk: " + (proc.stderr.strip()[-300:] or out.strip()[-300:])
    elif res["errors"]:
        res["failed"] = f"{res['errors']} wrk errors"
    return res


def _f0(v):
    return "–" if v is None else f"{v:,.0f}".replace(",", " ")


def _f1(v):
    return "–" if v is None else f"{v:.1f}"


def run(args):
    """Measure and print the table; returns the exit status."""
    if shutil.which("wrk") is None:
        print("bench --http: wrk is not on PATH", file=sys.stderr)
        return 2
    servers = _servers(getattr(args, "peer_python", None))
    wanted = args.servers.split(",") if args.servers else ORDER
    unknown = [n for n in wanted if n not in ORDER]
    if unknown:
        print(f"bench --http: unknown server(s) {', '.join(unknown)}; names: {', '.join(ORDER)}",
              file=sys.stderr)
        return 2
    names = [n for n in ORDER if n in wanted]
    for n in names:
        if isinstance(servers[n], str):
            print(f"  {n}: skipped ({servers[n]})", flush=True)
    names = [n for n in names if not isinstance(servers[n], str)]
    load0 = os.getloadavg()
    print(f"{datetime.datetime.now():%Y-%m-%d %H:%M}, Python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, wrk -t{args.threads} -c{args.conns} -d{_duration(args.seconds)}s, "
          f"load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}", flush=True)
    rows = {n: {"name": n, "label": servers[n][0], "runs": []} for n in names}
    for _ in range(args.rounds):
        for n in names:
            label, argv, env = servers[n]
            try:
                with srvmod.Server(srvmod.Spec(n, label, "peer"), argv=argv, env=env) as server:
                    res = _wrk(server, args)
            except Exception as exc:  # one server failing does not stop the others
                res = {"failed": f"{type(exc).__name__}: {exc}"}
            rows[n]["runs"].append(res)
            print(f"  {n}: " + " ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                                        for k, v in res.items()), flush=True)
    for row in rows.values():
        ok = [r for r in row["runs"] if not r.get("failed")]
        if not ok:
            row["failed"] = row["runs"][-1].get("failed")
            continue
        ok.sort(key=lambda r: r["rps"])
        row.update(ok[(len(ok) - 1) // 2])
        row["cpu_runs"] = [r.get("cpu_us_per_req") for r in ok]
    load1 = os.getloadavg()
    bases = [b for b in ("asyncio", "uvloop") if b in rows and not rows[b].get("failed")]
    head = ["server", "rps", "CPU µs/request"] + [f"vs {b} (rps / CPU)" for b in bases]
    print()
    print(f"**HTTP keep-alive \"Hello, World!\" under wrk -t{args.threads} -c{args.conns} "
          f"-d{_duration(args.seconds)}s, median of {args.rounds} round(s)**")
    print()
    print("| " + " | ".join(head) + " |")
    print("|---" + "|--:" * (len(head) - 1) + "|")
    for n in names:
        r = rows[n]
        if r.get("failed"):
            print(f"| {r['label']} | FAILED: {r['failed']} |")
            continue
        cells = [_f0(r["rps"]), _f1(r.get("cpu_us_per_req"))]
        for b in bases:
            base = rows[b]
            cpu = (f"{base['cpu_us_per_req'] / r['cpu_us_per_req']:.2f}×"
                   if r.get("cpu_us_per_req") and base.get("cpu_us_per_req") else "–")
            cells.append(f"{r['rps'] / base['rps']:.2f}× / {cpu}")
        print(f"| {r['label']} | " + " | ".join(cells) + " |")
    print()
    print("(vs X: rps ÷ X's rps / X's CPU per request ÷ this one's: above 1 is better)")
    print(f"load average before {load0[0]:.2f}, after {load1[0]:.2f}")
    if getattr(args, "json", None):
        with open(args.json, "w") as f:
            json.dump({"load": [load0, load1], "args": {k: v for k, v in vars(args).items()
                                                        if isinstance(v, (int, float, str, type(None)))},
                       "results": list(rows.values())}, f, indent=2)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m goaio._bench.http_measure",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--servers", default=None, help="comma-separated subset of " + ",".join(ORDER))
    ap.add_argument("--peer-python", help="the interpreter that runs the asyncio/uvloop servers")
    ap.add_argument("--json", help="write the raw figures here")
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
