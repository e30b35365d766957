#!/usr/bin/env python3
"""The echo comparison matrix: every server x message size x connection count.

Run with the project venv's python (uvloop and matplotlib come from there):

    .venv/bin/python benches/run_matrix.py            # or: make -C benches bench VPY=...

The server runs pinned to CPU 0 and echoload to CPU 1. All servers are started first; each cell
is then measured in BENCH_REPEAT rounds, every server once per round, and the run with the median
requests/s is kept. A ratio column is the median of the per-round ratios. Writes benches/out/results.json,
benches/out/results.md and the chart benches/out/echo.svg/.png (copied to benches/results/).

Environment knobs (defaults fit the whole matrix in about 10 minutes on 2 cores):
  BENCH_DURATION  seconds measured per run (1.0)     BENCH_WARMUP  seconds of warm-up (0.25)
  BENCH_REPEAT    runs per cell (3)                  BENCH_SIZES   bytes, comma-separated (1024,10240,102400)
  BENCH_CONNECTIONS  comma-separated (10,100)        BENCH_SERVERS  regex on server names (all)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import statistics
import sys
import time

import benchlib
from benchlib import RunningServer, ServerUnavailable

SERVER_CPU = 0
CLIENT_CPU = 1


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        parsed = float(value)
    except ValueError:
        sys.exit(f"{name}={value!r} is not a number")
    if parsed <= 0:
        sys.exit(f"{name} must be positive")
    return parsed


def env_ints(name: str, default: str) -> list[int]:
    value = os.environ.get(name) or default
    try:
        parsed = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        sys.exit(f"{name}={value!r}: expected comma-separated integers")
    if not parsed or min(parsed) <= 0:
        sys.exit(f"{name} must list positive integers")
    return parsed


def human_size(n: int) -> str:
    return f"{n // 1024} KiB" if n % 1024 == 0 else f"{n} B"


def fmt_rate(rps: float) -> str:
    return f"{rps:,.0f}"


def render_only(path: str) -> int:
    """Re-renders the table and chart of an earlier run (`run_matrix.py --render results.json`)."""
    summary = json.loads(open(path).read())
    config = summary["config"]
    cells = [(size, conns) for size in config["sizes"] for conns in config["connections"]]
    markdown = render_markdown(summary, cells)
    (benchlib.OUT / "results.md").write_text(markdown)
    print(markdown)
    draw_chart(summary, cells)
    return 0


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--render":
        return render_only(sys.argv[2])
    if len(sys.argv) != 1:
        sys.exit("usage: run_matrix.py [--render results.json]   (settings come from BENCH_* variables)")
    benchlib.need_echoload()
    duration = env_float("BENCH_DURATION", 1.0)
    warmup = env_float("BENCH_WARMUP", 0.25)
    repeat = int(env_float("BENCH_REPEAT", 3))
    sizes = env_ints("BENCH_SIZES", "1024,10240,102400")
    connections = env_ints("BENCH_CONNECTIONS", "10,100")
    pattern = re.compile(os.environ.get("BENCH_SERVERS", ".*"))

    servers = [s for s in benchlib.python_servers(sys.executable) + benchlib.c_servers() if pattern.search(s.name)]
    cells = [(size, conns) for size in sizes for conns in connections]
    total_runs = len(servers) * len(cells) * repeat
    estimate = total_runs * (duration + warmup + 0.1) + len(servers) * 0.5
    print(
        f"matrix: {len(servers)} servers x {len(cells)} cells x {repeat} runs of {warmup:g}+{duration:g} s "
        f"(server on CPU {SERVER_CPU}, client on CPU {CLIENT_CPU}); about {estimate / 60:.1f} min",
        flush=True,
    )

    results = []
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    started = time.monotonic()
    done_runs = 0
    with contextlib.ExitStack() as stack:
        running = []
        for spec in servers:
            try:
                running.append(stack.enter_context(RunningServer(spec, cpu=SERVER_CPU)))
            except ServerUnavailable as exc:
                print(f"  {spec.name:<34} missing ({str(exc)[:100]})", flush=True)
                for size, conns in cells:
                    results.append(cell_record(spec, size, conns, "missing", [], detail=str(exc)))
                done_runs += len(cells) * repeat
        # Every server of a cell runs once per round, one after another, so that each run is
        # compared with its baselines' runs of the same round, taken seconds apart: the host's
        # speed drifts over minutes on a shared machine, and a cell's ratios should not.
        dead: dict[str, str] = {}
        for size, conns in cells:
            runs: dict[str, list] = {server.spec.name: [] for server in running}
            failed: dict[str, tuple[str, str]] = {}
            for r in range(repeat):
                for server in running:
                    name = server.spec.name
                    if name in dead or name in failed:
                        continue
                    if not server.alive():
                        dead[name] = f"server exited: {server.stderr_tail()}"
                        failed[name] = ("died", dead[name])
                        continue
                    report = benchlib.echoload(
                        server.port, size=size, connections=conns, duration=duration, warmup=warmup,
                        server_pid=server.pid, cpu=CLIENT_CPU, seed=r + 1,
                    )
                    runs[name].append(report)
                    if report.get("exit_code") != 0:
                        detail = report.get("first_error") or report.get("stderr") or "echoload failed"
                        failed[name] = ("errors", detail)
                done_runs += len(running)
                elapsed = time.monotonic() - started
                eta = elapsed / max(done_runs, 1) * (total_runs - done_runs)
                print(
                    f"  [{done_runs:>4}/{total_runs}] {human_size(size):>7} x{conns:<4} round {r + 1}/{repeat} "
                    f"of {len(running)} servers  (eta {eta:.0f} s)",
                    flush=True,
                )
            for server in running:
                name = server.spec.name
                status, detail = failed.get(name, ("ok", ""))
                if name in dead and not runs[name]:
                    status, detail = "died", dead[name]
                record = cell_record(server.spec, size, conns, status, runs[name], detail=detail)
                results.append(record)
                shown = (
                    f"{fmt_rate(record['rps']):>9} req/s  p99 {record['p99_us']:>8.0f} µs  "
                    f"srv {record['server_us_per_rt']:.1f} µs/rt  srv {record['server_cpu_share'] * 100:.0f}%"
                    + (
                        f"  steal {record['host_steal_share'] * 100:.0f}%"
                        if record.get("host_steal_share") is not None
                        else ""
                    )
                    if record["status"] == "ok"
                    else f"{record['status'].upper()}: {detail[:90]}"
                )
                print(f"         {name:<34} {human_size(size):>7} x{conns:<4} {shown}", flush=True)

    add_ratios(results)
    machine = benchlib.machine()
    machine["loadavg_at_start"] = load_at_start
    summary = {
        "machine": machine,
        "config": {
            "duration_s": duration, "warmup_s": warmup, "repeat": repeat, "sizes": sizes,
            "connections": connections, "pipeline": 1, "server_cpu": SERVER_CPU, "client_cpu": CLIENT_CPU,
        },
        "elapsed_s": time.monotonic() - started,
        "cells": results,
    }
    benchlib.OUT.mkdir(parents=True, exist_ok=True)
    (benchlib.OUT / "results.json").write_text(json.dumps(summary, indent=1))
    markdown = render_markdown(summary, cells)
    (benchlib.OUT / "results.md").write_text(markdown)
    print()
    print(markdown)
    chart = draw_chart(summary, cells)
    print(f"wrote {benchlib.OUT / 'results.json'}, {benchlib.OUT / 'results.md'}" + (f", {chart}" if chart else ""))
    return 0


def cell_record(spec, size: int, conns: int, status: str, runs: list, detail: str = "") -> dict:
    record = {
        "server": spec.name, "group": spec.group, "loop": spec.loop, "mode": spec.mode,
        "size": size, "connections": conns, "status": status, "detail": detail,
        "rps": None, "p99_us": None, "server_us_per_rt": None, "server_cpu_share": None,
        "bottleneck": None, "runs": runs,
    }
    good = [r for r in runs if r.get("exit_code") == 0 and r.get("requests_per_s")]
    if status == "ok" and good:
        ordered = sorted(good, key=lambda r: r["requests_per_s"])
        median = ordered[(len(ordered) - 1) // 2]  # the lower median: always a real run
        record.update(
            rps=median["requests_per_s"],
            p99_us=median["latency_us"].get("p99"),
            server_us_per_rt=median.get("server_cpu_us_per_round_trip"),
            server_cpu_share=median.get("server_cpu_share"),
            host_steal_share=median.get("host_steal_share"),
            bottleneck=median.get("bottleneck"),
            rps_spread=statistics.pstdev([r["requests_per_s"] for r in good]) / median["requests_per_s"],
        )
    elif status == "ok":
        record["status"] = "errors"
    return record


# Baselines for the ratio columns: Python rows against stdlib asyncio and uvloop in the same mode;
# C rows against the hand-written io_uring server and the libuv server.
def baselines(record: dict) -> tuple[tuple[str, str], tuple[str, str]]:
    if record["group"] == "python":
        mode = benchlib.baseline_mode(record["mode"])
        return (f"py asyncio/{mode}", "asyncio"), (f"py uvloop/{mode}", "uvloop")
    return ("c io_uring (liburing)", "io_uring"), ("c libuv", "libuv")


def add_ratios(results: list) -> None:
    # A ratio is the median of the per-round ratios (run r against the baseline's run r, measured
    # moments apart), not a ratio of medians taken minutes apart.
    index = {(r["server"], r["size"], r["connections"]): r for r in results}
    for record in results:
        record["ratios"] = {}
        if record["rps"] is None:
            continue
        for base_name, label in baselines(record):
            base = index.get((base_name, record["size"], record["connections"]))
            if not (base and base["rps"]):
                continue
            paired = [
                mine["requests_per_s"] / theirs["requests_per_s"]
                for mine, theirs in zip(record["runs"], base["runs"])
                if mine.get("requests_per_s") and theirs.get("requests_per_s")
            ]
            record["ratios"][label] = statistics.median(paired) if paired else record["rps"] / base["rps"]


def steal_summary(summary: dict) -> str:
    """The median (and worst) steal share over every run, for the table's header."""
    shares = sorted(
        run["host_steal_share"]
        for record in summary["cells"]
        for run in record["runs"]
        if run.get("host_steal_share") is not None
    )
    if not shares:
        return "not measured"
    return f"{100 * statistics.median(shares):.0f} % (median; worst run {100 * shares[-1]:.0f} %)"


def render_markdown(summary: dict, cells: list) -> str:
    m = summary["machine"]
    c = summary["config"]
    lines = [
        f"Machine: {m['nproc']} CPUs, {m['cpu']}, Linux {m['kernel']}, Python {m['python']}, "
        f"uvloop {m.get('uvloop')}, libuv {m['libuv']}, liburing {m['liburing']}, ringloop {m['ringloop_commit']}; {m['date']}; "
        f"load average {m.get('loadavg_at_start', ['?'])[0]} at the start, {m.get('loadavg_1_5_15', ['?'])[0]} at the end; "
        f"hypervisor steal {steal_summary(summary)} of the machine's CPU time during the runs.",
        f"Each cell: median of {c['repeat']} rounds (every server once per round) of {c['duration_s']:g} s after "
        f"{c['warmup_s']:g} s warm-up; ratios are medians of the per-round ratios; "
        f"1 message in flight per connection, server on CPU {c['server_cpu']}, echoload on CPU {c['client_cpu']}. "
        "p99 in µs; srv µs/rt = server CPU time per round trip; srv% = server's share of its core; "
        "steal% = the share of the machine's CPU time the hypervisor took during the run (a shared VM: "
        "above a few % the run measured the host as much as the server).",
        "",
    ]
    by_key = {(r["server"], r["size"], r["connections"]): r for r in summary["cells"]}
    names = list(dict.fromkeys(r["server"] for r in summary["cells"]))
    for group, heads in (("python", ("× asyncio", "× uvloop")), ("c", ("× io_uring ref", "× libuv ref"))):
        group_names = [n for n in names if by_key.get((n, cells[0][0], cells[0][1]), {}).get("group") == group]
        if not group_names:
            continue
        for size, conns in cells:
            lines.append(f"### {'Python' if group == 'python' else 'C'} servers — {human_size(size)} messages, {conns} connections")
            lines.append("")
            lines.append(f"| server | req/s | p99 µs | srv µs/rt | srv% | steal% | {heads[0]} | {heads[1]} |")
            lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
            for name in group_names:
                r = by_key.get((name, size, conns))
                if r is None:
                    continue
                if r["rps"] is None:
                    lines.append(f"| {name} | {r['status']} | | | | | | |")
                    continue
                ratio_labels = [b[1] for b in baselines(r)]
                ratios = [f"{r['ratios'][k]:.2f}" if k in r["ratios"] else "–" for k in ratio_labels]
                share = f"{100 * r['server_cpu_share']:.0f}" if r["server_cpu_share"] is not None else "–"
                per_rt = f"{r['server_us_per_rt']:.1f}" if r["server_us_per_rt"] is not None else "–"
                steal = f"{100 * r['host_steal_share']:.0f}" if r.get("host_steal_share") is not None else "–"
                lines.append(
                    f"| {name} | {fmt_rate(r['rps'])} | {r['p99_us']:.0f} | {per_rt} | {share} | {steal} | {ratios[0]} | {ratios[1]} |"
                )
            lines.append("")
    lines.extend(render_summary(summary, names))
    missing = sorted({(r["server"], r["status"], r["detail"]) for r in summary["cells"] if r["status"] != "ok"})
    if missing:
        lines.append("Not measured:")
        lines.append("")
        seen = set()
        for name, status, detail in missing:
            if name in seen:
                continue
            seen.add(name)
            lines.append(f"- {name}: {status} — {detail[:200]}")
        lines.append("")
    return "\n".join(lines)


def geomean(values: list) -> float | None:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def render_summary(summary: dict, names: list) -> list:
    """One line per server: geometric means over the cells of its ratios and CPU cost."""
    lines = [
        "### Summary — geometric mean over all measured cells",
        "",
        "| server | cells | × asyncio / × io_uring ref | × uvloop / × libuv ref | srv µs/rt (geo-mean) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in names:
        rows = [r for r in summary["cells"] if r["server"] == name and r["rps"]]
        if not rows:
            continue
        labels = [b[1] for b in baselines(rows[0])]
        ratio_a = geomean([r["ratios"][labels[0]] for r in rows if labels[0] in r["ratios"]])
        ratio_b = geomean([r["ratios"][labels[1]] for r in rows if labels[1] in r["ratios"]])
        cost = geomean([r["server_us_per_rt"] for r in rows if r["server_us_per_rt"]])
        show = lambda v, unit="": f"{v:.2f}{unit}" if v is not None else "–"  # noqa: E731
        lines.append(f"| {name} | {len(rows)} | {show(ratio_a, f' × {labels[0]}')} | {show(ratio_b, f' × {labels[1]}')} | {show(cost)} |")
    lines.append("")
    return lines


def draw_chart(summary: dict, cells: list):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not available: no chart drawn", file=sys.stderr)
        return None
    names = list(dict.fromkeys(r["server"] for r in summary["cells"]))
    by_key = {(r["server"], r["size"], r["connections"]): r for r in summary["cells"]}
    colors = {
        "asyncio": "#9e9e9e", "uvloop": "#1f77b4", "ringloop-io_uring": "#d62728", "ringloop-epoll": "#ff9896",
        "uring_echo": "#2ca02c", "epoll_echo": "#98df8a", "uv_echo": "#17becf",
    }
    ncols = len({s for s, _ in cells})
    nrows = len({c for _, c in cells})
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 0.28 * len(names) * nrows + 1.5), squeeze=False)
    sizes = sorted({s for s, _ in cells})
    conns_list = sorted({c for _, c in cells})
    for (size, conns) in cells:
        ax = axes[conns_list.index(conns)][sizes.index(size)]
        values = []
        bar_colors = []
        hatches = []
        for name in names:
            r = by_key.get((name, size, conns))
            values.append(r["rps"] if r and r["rps"] else 0)
            bar_colors.append(colors.get(r["loop"] if r else "", "#7f7f7f"))
            hatches.append("//" if r and r["mode"] == "floor" else None)  # a bound, not a loop
        bars = ax.barh(range(len(names)), values, color=bar_colors)
        for bar, hatch in zip(bars, hatches):
            if hatch:
                bar.set_hatch(hatch)
                bar.set_edgecolor("white")
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(names if sizes.index(size) == 0 else [], fontsize=7)
        ax.set_ylim(len(names) - 0.5, -0.5)  # first server on top
        ax.set_title(f"{human_size(size)} x {conns} connections", fontsize=9)
        ax.set_xlabel("round trips / s", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        for i, v in enumerate(values):
            if v == 0:
                ax.text(0, i, " missing", va="center", fontsize=6, color="#999999")
    m = summary["machine"]
    fig.suptitle(f"echo round trips/s (median of {summary['config']['repeat']}) — {m['cpu']}, Linux {m['kernel']}, {m['date']}", fontsize=10)
    fig.tight_layout()
    paths = []
    for ext in ("svg", "png"):
        path = benchlib.OUT / f"echo.{ext}"
        fig.savefig(path, dpi=110)
        paths.append(path)
    plt.close(fig)
    results_dir = benchlib.BENCHES / "results"
    results_dir.mkdir(exist_ok=True)
    for path in paths:
        shutil.copy(path, results_dir / path.name)
    shutil.copy(benchlib.OUT / "results.md", results_dir / "results.md")
    return ", ".join(str(p) for p in paths)


if __name__ == "__main__":
    sys.exit(main())
