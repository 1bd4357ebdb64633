"""``python -m goaio bench --accept-storm N`` and ``--connect-storm N``:
connections per second, not bytes.

- accept storm: the C client ``storm.c`` opens N connections to the server
  under test, ``--conns`` at a time (closed loop), each doing one round trip
  of ``--size`` bytes (0: none, closed as soon as it is connected), then
  closing. The servers are the bench's echo servers (goaio's is
  ``python -m goaio echo``: svc.listen and 64 posted accepts; the peers
  ``loop.create_server``). Figures: connections/s, and the server's CPU time
  per connection (user + system, from /proc), steadier than throughput on a
  loaded machine; and the client's own CPU share ("client CPU busy": near
  100 % would mean the client, not the server, set the pace). The C epoll
  echo server is here a reference for the CPU cost, not a ceiling of the rate.
- connect storm: the clients of ``connclient.py`` (goaio ``svc.connect`` on
  each backend, asyncio and uvloop ``create_connection``) do the same
  against one C epoll echo server. Figures: connections/s and the client's
  CPU time per connection (getrusage).

Rounds are interleaved across servers/clients, the median run is shown.
"""

import json
import os
import subprocess
import sys
import time

from . import native
from . import servers as srvmod

HERE = os.path.dirname(os.path.abspath(__file__))
ACCEPT_DEFAULT = ["goaio-epoll", "goaio-epoll-share", "goaio-pure", "uvloop", "asyncio", "c-epoll"]
CONNECT_CLIENTS = [("goaio-epoll", "goaio", "epoll"), ("goaio-pure", "goaio", "pure"),
                   ("uvloop", "uvloop", None), ("asyncio", "asyncio", None)]


def _pin(pid, cpus):
    if cpus and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(pid, cpus)
        except OSError:
            pass


def _storm_once(exe, port, total, conc, size, cpus, server):
    cpu0 = server.cpu_seconds()
    proc = subprocess.Popen([exe, "127.0.0.1", str(port), str(total), str(conc), str(size)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _pin(proc.pid, cpus)
    out, err = proc.communicate(timeout=180)
    time.sleep(0.05)  # the last closes reach the server
    cpu1 = server.cpu_seconds()
    fields = dict(kv.split("=") for kv in out.split()[1:]) if out.startswith("result") else {}
    if not fields:
        raise RuntimeError(f"storm client failed: {err.strip()[-300:]}")
    res = {k: float(v) for k, v in fields.items()}
    res["cpu_us_per_conn"] = None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) * 1e6 / max(res["conns"], 1)
    res["exit"] = proc.returncode
    return res


def _connect_once(kind, backend, port, total, conc, size, cpus):
    env = dict(os.environ)
    env.pop("GOAIO_BACKEND", None)
    if kind == "goaio":
        env["PYTHONPATH"] = srvmod.goaio_for_servers()["pythonpath"]
        env["GOAIO_BACKEND"] = backend
    argv = [sys.executable, "-P", os.path.join(HERE, "connclient.py"), kind, "127.0.0.1", str(port),
            str(total), str(conc), str(size)]
    proc = subprocess.Popen(argv, env=env, cwd=srvmod.SERVER_CWD, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _pin(proc.pid, cpus)
    out, err = proc.communicate(timeout=180)
    try:
        res = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise RuntimeError(f"{kind} client failed: {err.strip()[-300:]}") from None
    res["cpu_us_per_conn"] = res["cpu_s"] * 1e6 / max(res["conns"], 1)
    return res


def _settle(rows):
    """Give every row that ran cleanly its median; 1 if any row failed."""
    failed = 0
    for row in rows:
        if row["runs"] and not row.get("failed"):
            row["best"] = _median(row["runs"])
        elif row.get("failed"):
            failed = 1
    return failed


def _median(runs):
    runs = sorted(runs, key=lambda r: r["cps"])
    return runs[(len(runs) - 1) // 2]


def _table(title, rows, cpu_head):
    by = {r["name"]: r for r in rows if r.get("best")}
    uv = by.get("uvloop", {}).get("best", {}).get("cps")
    aio = by.get("asyncio", {}).get("best", {}).get("cps")
    head = ["", "conns/s", "runs (conns/s)", cpu_head, "vs uvloop", "vs asyncio", "client CPU busy"]
    out = []
    for r in rows:
        if r.get("skipped") or r.get("failed"):
            out.append([r["label"], "–", r.get("skipped") and "skipped: " + r["skipped"][:50]
                        or "FAILED: " + r["failed"][:50], "–", "–", "–", "–"])
            continue
        b = r["best"]
        cpu = sorted(x["cpu_us_per_conn"] for x in r["runs"] if x["cpu_us_per_conn"] is not None)
        out.append([r["label"], f"{b['cps']:,.0f}".replace(",", " "),
                    ", ".join(f"{x['cps']:,.0f}".replace(",", " ") for x in r["runs"]),
                    "–" if not cpu else f"{cpu[(len(cpu) - 1) // 2]:.1f}",
                    "–" if not uv else f"{b['cps'] / uv:.2f}×", "–" if not aio else f"{b['cps'] / aio:.2f}×",
                    "–" if b.get("cpu_s") is None else f"{100 * b['cpu_s'] / b['seconds']:.0f} %"])
    widths = [max(len(str(c)) for c in col) for col in zip(head, *out)]
    lines = [title, "", "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |",
             "|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"]
    for cells in out:
        lines.append("| " + " | ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                                       for i, (c, w) in enumerate(zip(cells, widths))) + " |")
    return "\n".join(lines)


def _run_rounds(progress, rows, rounds, what, load, run_once, side):
    """Run ``run_once(row)`` for every row still in the race, ``rounds`` times
    interleaved; a run with failed connections or wrong bytes fails its row."""
    for rnd in range(1, rounds + 1):
        for row in rows:
            if row.get("skipped") or row.get("failed"):
                continue
            tag = f"[{what} round {rnd}/{rounds}] {row['name']:<18}"
            progress.update(f"{tag} {load} ...")
            try:
                res = run_once(row)
                if res["errors"] or res["bad_bytes"]:
                    row["failed"] = f"{res['errors']:.0f} failed connections, {res['bad_bytes']:.0f} wrong bytes"
                row["runs"].append(res)
                progress.line(f"{tag} {res['cps']:,.0f} conns/s, {side} "
                              f"{res['cpu_us_per_conn'] or 0:.1f} µs CPU per connection")
            except Exception as exc:
                row["failed"] = f"{type(exc).__name__}: {exc}"
                progress.line(f"{tag} FAILED: {row['failed']}")


def main(args, progress, server_cpus, client_cpus):
    status = 0
    results = {}
    total, conc, size, rounds = None, args.conns, args.storm_size, args.rounds
    if args.accept_storm:
        total = args.accept_storm
        exe = native.build("storm")
        if exe is None:
            print(f"goaio bench: the accept storm needs its C client: {native.why_not('storm')}", file=sys.stderr)
            return 2
        names = srvmod.parse_list(args.servers) if args.servers else list(ACCEPT_DEFAULT)
        rows = []
        for name in names:
            spec = srvmod.BY_NAME[name]
            label = "C epoll echo server (reference)" if name == "c-epoll" else spec.label
            row = {"name": name, "label": label, "runs": []}
            ok, why = srvmod.availability(name)
            if not ok:
                row["skipped"] = why
                progress.line(f"{name}: skipped ({why})")
            rows.append(row)
        def accept_once(row):
            with srvmod.Server(srvmod.BY_NAME[row["name"]], args.workers, cpus=server_cpus) as srv:
                return _storm_once(exe, srv.port, total, conc, size, client_cpus, srv)

        _run_rounds(progress, rows, rounds, "accept storm", f"{total} connections, {conc} at a time",
                    accept_once, "server")
        status |= _settle(rows)
        results["accept_storm"] = rows
        print()
        print(_table(f"accept storm: {total} connections, {conc} at a time, "
                     f"{'one %d B round trip each' % size if size else 'no data'}, C client, "
                     f"median of {rounds}", rows, "server CPU µs/conn"))
    if args.connect_storm:
        total = args.connect_storm
        rows = []
        for name, kind, backend in CONNECT_CLIENTS:
            row = {"name": name, "label": {"goaio": f"goaio {backend} svc.connect"}.get(kind, f"{kind} create_connection"),
                   "runs": [], "kind": kind, "backend": backend}
            if kind == "goaio":
                why = srvmod.goaio_for_servers()["why"].get(backend)
                if why:
                    row["skipped"] = why
            elif kind == "uvloop":
                ok, why = srvmod.availability("uvloop")
                if not ok:
                    row["skipped"] = why
            rows.append(row)
        ok, why = srvmod.availability("c-epoll")
        if not ok:
            print(f"goaio bench: the connect storm needs the C echo server: {why}", file=sys.stderr)
            return 2
        def connect_once(row):
            with srvmod.Server(srvmod.BY_NAME["c-epoll"], cpus=server_cpus) as srv:
                return _connect_once(row["kind"], row["backend"], srv.port, total, conc, size, client_cpus)

        _run_rounds(progress, rows, rounds, "connect storm", f"{total} connections, {conc} at a time",
                    connect_once, "client")
        status |= _settle(rows)
        results["connect_storm"] = rows
        print()
        print(_table(f"connect storm: {total} connections, {conc} at a time, "
                     f"{'one %d B round trip each' % size if size else 'no data'}, against the C epoll "
                     f"echo server, median of {rounds}", rows, "client CPU µs/conn"))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if load is not None:
        print(f"\n- load average at the end: {load:.1f} on {os.cpu_count()} CPUs"
              + (" (the machine was busy: compare within one run)" if load > (os.cpu_count() or 1) else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
    return status
