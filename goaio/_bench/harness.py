"""``python -m goaio bench``: run every echo server under the same load and
print one comparison table (markdown, so it can be pasted as is).

Each server runs in its own process on a free 127.0.0.1 port, pinned to
CPU 0 while the client runs on CPU 1 (when there are two CPUs and ``--no-pin``
is not given). Every step is bounded in time; a server that is not installed
or not built is skipped with a note.
"""

import datetime
import json
import os
import platform
import sys
import threading
import time

from . import client as clientmod
from . import servers as srvmod


class Progress:
    """One status line on stderr: rewritten in place on a terminal, a line
    per step otherwise."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.tty = stream.isatty()
        self._width = 0

    def update(self, text):
        if self.tty:
            pad = max(0, self._width - len(text))
            self.stream.write("\r" + text + " " * pad)
            self.stream.flush()
            self._width = len(text)

    def line(self, text):
        if self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self._width = 0
        self.stream.write(text + "\n")
        self.stream.flush()


def _drive(prefix, port, args, procs, cpus, show):
    """Run the client(s) once; returns merged result fields."""
    conns = [args.conns // procs + (1 if i < args.conns % procs else 0) for i in range(procs)]
    conns = [c for c in conns if c > 0]
    msgs = [0.0] * len(conns)
    ts = [0.0] * len(conns)
    results = [None] * len(conns)
    errors = []

    def progress(i):
        def cb(t, m):
            msgs[i], ts[i] = m, t
            show(min(ts), sum(msgs))
        return cb

    def run(i):
        try:
            results[i] = clientmod.run_timed(prefix, port, conns[i], args.size, args.seconds,
                                             args.warmup, on_progress=progress(i), cpus=cpus)
        except Exception as exc:  # reported below, per server
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(conns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    merged = {k: sum(r[k] for r in results) for k in ("rps", "MBps", "msgs", "bad_bytes", "errors",
                                                       "unfinished")}
    if all("completed" in r for r in results):
        merged["completed"] = sum(r["completed"] for r in results)
    # percentiles cannot be merged exactly: with several client processes
    # the worst process's figure is reported
    merged["p50_us"] = max(r["p50_us"] for r in results)
    merged["p99_us"] = max(r["p99_us"] for r in results)
    merged["exit"] = max(r["exit"] for r in results)
    return merged


def _fmt_int(v):
    return "–" if v is None else f"{v:,.0f}".replace(",", " ")


def _fmt_k(v):
    if v is None:
        return "–"
    return f"{v / 1000:.1f} k" if v >= 1000 else f"{v:.0f}"


def _fmt_ratio(v, base):
    if v is None or not base:
        return "–"
    return f"{v / base:.2f}×"


def table(rows, idle, tls=False):
    """A markdown table of the measured rows (``tls``: the ratios are to the
    peers' TLS servers)."""
    by = {r["name"]: r for r in rows if r.get("rps") is not None}
    suffix = "-tls" if tls else ""
    base_asyncio = by.get("asyncio" + suffix, {}).get("rps")
    base_uvloop = by.get("uvloop" + suffix, {}).get("rps")
    ceilings = [r for r in rows if r.get("ceiling") and r.get("rps")]
    ceiling = by.get("raw-epoll", ceilings[0] if ceilings else {}).get("rps")
    head = ["server", "rps", "MB/s", "p50 µs", "p99 µs", "peak RSS MiB", "vs asyncio", "vs uvloop",
            "% of ceiling"]
    cpu = any(r.get("cpu_us_per_rt") is not None for r in rows)
    if cpu:
        head.append("server CPU µs/rt")
    if idle:
        head.append(f"idle B/conn @{idle}")
    out = []
    for r in rows:
        if r.get("skipped"):
            continue
        cells = [r["label"]]
        if r.get("rps") is None:
            cells += ["failed"] + ["–"] * (len(head) - 2)
        else:
            cells += [_fmt_k(r["rps"]), f"{r['MBps']:.1f}", f"{r['p50_us']:.0f}", f"{r['p99_us']:.0f}",
                      "–" if r.get("peak_rss") is None else f"{r['peak_rss'] / 2**20:.1f}",
                      _fmt_ratio(r["rps"], base_asyncio), _fmt_ratio(r["rps"], base_uvloop),
                      "–" if not ceiling else f"{100 * r['rps'] / ceiling:.0f} %"]
            if cpu:
                c = r.get("cpu_us_per_rt")
                cells.append("–" if c is None else f"{c:.1f}")
            if idle:
                b = (r.get("idle") or {}).get("bytes_per_conn")
                cells.append(_fmt_int(b))
        out.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(head, *out)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |",
             "|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"]
    for cells in out:
        lines.append("| " + " | ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                                       for i, (c, w) in enumerate(zip(cells, widths))) + " |")
    return "\n".join(lines)


def _short(text, n=60):
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def plot(rows, meta, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    # Every server asked for gets a row; one that was not measured (not
    # installed, not built, failed) gets no bar but a marked label and the
    # reason, so a missing server never silently drops out of the picture.
    def missing(r):
        if r.get("skipped"):
            return "not run: " + _short(r["skipped"])
        if r.get("rps") is None or r.get("failed"):
            return "FAILED: " + _short(r.get("failed") or "no result")
        return None

    idle_rows = [r for r in rows if missing(r) or (r.get("idle") or {}).get("bytes_per_conn") is not None]
    has_idle = any(not missing(r) for r in idle_rows) and meta.get("idle")
    panels = [("round trips / s", rows, lambda r: r["rps"]),
              ("p99 latency (µs)", rows, lambda r: r["p99_us"])]
    if has_idle:
        panels.append(("idle bytes / connection", idle_rows, lambda r: r["idle"]["bytes_per_conn"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 0.45 * len(rows) + 1.8),
                             squeeze=False)
    for ax, (title, sel, value) in zip(axes[0], panels):
        values = [0 if missing(r) else value(r) for r in sel]
        labels = [r["label"] + (" ✗" if missing(r) else "") for r in sel]
        colors = ["#2a7ab0" if r["name"].startswith("goaio") else
                  "#999999" if r.get("ceiling") else "#e08a2c" for r in sel]
        ax.barh(range(len(sel)), values, color=colors)
        ax.set_yticks(range(len(sel)), labels)
        for tick, r in zip(ax.get_yticklabels(), sel):
            if missing(r):
                tick.set_color("#b00020")
        ax.invert_yaxis()
        ax.set_title(title)
        for i, (v, r) in enumerate(zip(values, sel)):
            why = missing(r)
            if why:
                ax.text(0, i, f" {why}", va="center", fontsize=7, color="#b00020")
            else:
                ax.text(v, i, f" {v:,.0f}", va="center", fontsize=8)
        ax.margins(x=0.25)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:g} k" if x >= 1000 else f"{x:g}"))
    fig.suptitle(f"echo, {meta['conns']} connections × {meta['size']} B, {meta['client']} client, "
                 f"{meta['date']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [[t.get_text() for t in ax.get_yticklabels()] for ax in axes[0]]


def tls_prefix(args):
    """The TLS client's argv prefix (loadgen_tls; ``-H`` in handshake mode)."""
    from . import native

    exe = native.build("loadgen_tls")
    return [exe] + (["-H"] if getattr(args, "tls_handshake", False) else [])


def _run_one(row, tag, idle, args, prefix, server_cpus, client_cpus, progress):
    """One timed run of one server (and, if ``idle``, its idle measure);
    appends to ``row["runs"]`` or sets ``row["failed"]``."""
    spec = srvmod.BY_NAME[row["name"]]
    if spec.tls:
        prefix = tls_prefix(args)
    progress.line(f"{tag} {args.conns} conns × {args.size} B, {args.seconds:g} s ...")
    last = [time.monotonic(), 0.0]

    def show(t, msgs):
        now = time.monotonic()
        rate = (msgs - last[1]) / max(now - last[0], 1e-6)
        last[:] = [now, msgs]
        phase = "warm-up" if t < 0 else f"{min(t, args.seconds):4.1f}/{args.seconds:g} s"
        progress.update(f"{tag} {phase}  {rate / 1000:7.1f} k rps")

    try:
        with srvmod.Server(spec, args.workers, cpus=server_cpus) as server:
            cpu0 = server.cpu_seconds()
            res = _drive(prefix, server.port, args, args.client_procs, client_cpus, show)
            cpu1 = server.cpu_seconds()
            # the TLS client counts every round trip of the run (warm-up and
            # drain included): the server's CPU time per round trip, steadier
            # than rps on a shared machine
            if res.get("completed") and cpu0 is not None and cpu1 is not None:
                res["cpu_us_per_rt"] = (cpu1 - cpu0) * 1e6 / res["completed"]
            res["peak_rss"] = server.peak_rss()
            res["cpu_s"] = server.cpu_seconds()
            res["server_exit"] = server.stop()
        row["runs"].append(res)
        if res["bad_bytes"] or res["errors"]:
            row["failed"] = f"{res['bad_bytes']:.0f} wrong bytes, {res['errors']:.0f} failed connections"
        elif spec.kind == "goaio" and res["server_exit"] != 0:
            row["failed"] = f"server exit status {res['server_exit']} on SIGTERM (expected 0)"
        elif idle:
            progress.update(f"{tag} idle: {idle} connections ...")
            with srvmod.Server(spec, args.workers, cpus=server_cpus) as server:
                measure = srvmod.measure_idle_tls if spec.tls else srvmod.measure_idle
                row["idle"] = measure(server, idle)
    except Exception as exc:  # one server failing does not stop the comparison
        row["failed"] = f"{type(exc).__name__}: {exc}"
    if row.get("failed"):
        progress.line(f"{tag} FAILED: {row['failed']}")
    else:
        extra = ""
        if row.get("idle") and idle:
            extra = f", idle {_fmt_int(row['idle']['bytes_per_conn'])} B/conn"
        progress.line(f"{tag} {res['rps']:,.0f} rps, p99 {res['p99_us']:.0f} µs{extra}")


def main(args):
    tls = bool(getattr(args, "tls", False) or getattr(args, "tls_handshake", False))
    try:
        names = srvmod.parse_list(args.servers, tls=tls)
    except ValueError as exc:
        print(f"goaio bench: {exc}", file=sys.stderr)
        return 2
    if args.list:
        for spec in srvmod.SPECS:
            ok, why = srvmod.availability(spec.name)
            print(f"{spec.name:22} {spec.label:32} {'available' if ok else 'unavailable: ' + why}")
        found = srvmod.goaio_for_servers()
        print(found["note"] or f"the goaio servers import goaio from {found['root']}")
        return 0
    if not args.seconds > 0:
        print("goaio bench: --seconds must be > 0", file=sys.stderr)
        return 2
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("goaio bench: --plot needs matplotlib: pip install 'goaio[plot]'", file=sys.stderr)
            return 2
    for stream in (sys.stdout, sys.stderr):  # µ, ×: never fail on a narrow terminal
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    progress = Progress()
    try:
        prefix, client_kind, note = clientmod.client_command(args.client)
    except clientmod.ClientError as exc:
        print(f"goaio bench: {exc}", file=sys.stderr)
        return 2
    if note:
        progress.line(f"note: {note}")
    clientmod.raise_nofile_limit()
    pin = args.pin and hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2
    cpus = sorted(os.sched_getaffinity(0)) if pin else []
    server_cpus, client_cpus = ({cpus[0]}, set(cpus[1:])) if pin else (None, None)

    if getattr(args, "accept_storm", None) or getattr(args, "connect_storm", None):
        from . import conns

        print(f"{datetime.datetime.now():%Y-%m-%d %H:%M}, Python {platform.python_version()}, "
              f"{os.cpu_count()} CPUs" + (f", server on CPU {min(server_cpus)}, client on the rest" if pin else ""))
        return conns.main(args, progress, server_cpus, client_cpus)

    meta = {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "host": platform.node(), "machine": platform.machine(), "cpus": os.cpu_count(),
        "python": platform.python_version(), "client": client_kind, "client_procs": args.client_procs,
        "conns": args.conns, "size": args.size, "seconds": args.seconds, "warmup": args.warmup,
        "workers": args.workers, "pinned": pin, "idle": args.idle, "rounds": args.rounds,
        "tls": tls, "tls_handshake": bool(getattr(args, "tls_handshake", False)),
    }
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    rows = []
    if any(srvmod.BY_NAME[n].kind == "goaio" for n in names) and srvmod.goaio_for_servers()["note"]:
        progress.line(f"note: {srvmod.goaio_for_servers()['note']}")
    for name in names:
        spec = srvmod.BY_NAME[name]
        row = {"name": name, "label": spec.label, "ceiling": spec.ceiling, "runs": []}
        ok, why = srvmod.availability(name)
        if not ok:
            row["skipped"] = why
            progress.line(f"{name}: skipped ({why})")
        rows.append(row)
    todo = [r for r in rows if not r.get("skipped")]
    # Rounds are interleaved (every server once, then again), so a burst of
    # outside load hits one run of several servers rather than every run of one.
    for rnd in range(1, args.rounds + 1):
        for i, row in enumerate(todo, 1):
            if row.get("failed"):
                continue
            tag = f"[{i}/{len(todo)}{f' round {rnd}/{args.rounds}' if args.rounds > 1 else ''}] {row['name']:<18}"
            _run_one(row, tag, rnd == 1 and args.idle, args, prefix, server_cpus, client_cpus, progress)
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    meta["loadavg"] = [load_before, load_after]
    status = 0
    for row in todo:
        if row.get("failed"):
            status = 1
        elif row["runs"]:
            # the run of median rps stands for the server (all runs are in the JSON)
            runs = sorted(row["runs"], key=lambda r: r["rps"])
            row.update({k: v for k, v in runs[(len(runs) - 1) // 2].items()})

    print()
    if meta["tls_handshake"]:
        what = (f"TLS handshakes (a new connection, full handshake and one {args.size} B echo per "
                f"round trip; rps = handshakes/s): {args.conns} at a time")
    elif any(srvmod.BY_NAME[r["name"]].tls for r in rows):
        what = f"echo (TLS rows: TLS 1.3, RSA 2048): {args.conns} connections × {args.size} B"
    else:
        what = f"echo: {args.conns} connections × {args.size} B"
    if any(srvmod.BY_NAME[r["name"]].tls for r in rows):
        client_kind = client_kind + " (TLS rows: C loadgen_tls)"
    print(f"{what}, {args.seconds:g} s per run, "
          f"{client_kind} client, {meta['date']}, Python {meta['python']}, {meta['cpus']} CPUs"
          f"{', server on CPU ' + str(min(server_cpus)) + ', client on the rest' if pin else ''}")
    print()
    print(table(rows, args.idle, tls=tls))
    notes = [f"- {r['name']}: skipped ({r['skipped']})" for r in rows if r.get("skipped")]
    if any(srvmod.BY_NAME[r["name"]].kind == "goaio" for r in rows):
        found = srvmod.goaio_for_servers()
        meta["goaio_root"] = found["root"]
        if found["note"]:
            notes.append(f"- {found['note']}")
    notes += [f"- {r['name']}: FAILED ({r['failed']})" for r in rows if r.get("failed")]
    busy = max((x for x in (load_before, load_after) if x is not None), default=0)
    if busy > (meta["cpus"] or 1):
        notes.append(f"- the machine was busy (load average up to {busy:.1f} on {meta['cpus']} CPUs): "
                     "expect noise, repeat with --rounds")
    if args.rounds > 1:
        notes.append(f"- each figure is the run of median rps out of {args.rounds} interleaved rounds")
    if args.client_procs > 1:
        notes.append(f"- {args.client_procs} client processes: p50/p99 are the worst process's")
    if notes:
        print()
        print("\n".join(notes))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": rows}, f, indent=2)
            f.write("\n")
        progress.line(f"raw figures written to {args.json}")
    if args.plot:
        plot(rows, meta, args.plot)
        progress.line(f"chart written to {args.plot}")
    return status
