"""lvs sim's outputs: the summary table, the CSV/JSON files, the plots (matplotlib,
where installed) and the index a person opens (lvs/sim.py runs, this writes)."""

import csv
import json
import math
import os
import sys


def percentile(sorted_values, p):
    """Nearest-rank percentile of an already sorted list (None if empty)."""
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, int(math.ceil(p / 100.0 * len(sorted_values))) - 1))
    return sorted_values[k]


def _ratio(a, b):
    return _r(a / b) if b else None


def _r(v, digits=6):
    return None if v is None else round(v, digits)


# ---------------------------------------------------------------- outputs

def _csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        for row in rows:
            w.writerow(["" if v is None else v for v in row])


def _fmt(v, scale=1.0, spec="%.1f"):
    return "-" if v is None else spec % (v * scale)


def summary_table(summaries):
    """The text table printed to stdout (and in index.md)."""
    head = ["scheduler", "conns", "no-dest", "refused", "lost", "broken", "queued",
            "p50 ms", "p90 ms", "p99 ms", "imb mean", "imb max", "cv mean", "conns per server"]
    rows = []
    for s in summaries:
        rows.append([s["scheduler"], str(s["scheduled"]), str(s["no_destination"]), str(s["refused"]),
                     str(s["lost"]), str(s["broken"]), str(s["queued"]),
                     _fmt(s["rt_p50"], 1000), _fmt(s["rt_p90"], 1000), _fmt(s["rt_p99"], 1000),
                     _fmt(s["imbalance_mean"], spec="%.2f"), _fmt(s["imbalance_max"], spec="%.2f"),
                     _fmt(s["cv_mean"], spec="%.2f"),
                     "/".join(str(r["conns"]) for r in s["servers"])])
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) if i and i < len(head) - 1 else c.ljust(w)
                       for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in [head] + rows]
    return "\n".join(lines) + "\n"


def capture_line(wl):
    """What a trace-driven run took from its capture (None for a synthetic workload)."""
    info = wl.capture_info
    if info is None:
        return None
    text = "capture %s: %d %s connection%s to %s from %d client%s over %gs" % (
        info["file"], info["connections"], wl.protocol.upper(), "" if info["connections"] == 1 else "s",
        wl.service.endpoint, info["clients"], "" if info["clients"] == 1 else "s", wl.duration)
    if info["responses_drawn"]:
        text += "; %d with the response in it, %d sized from connections.size" % (
            info["responses_seen"], info["responses_drawn"])
    return text


def remap_lines(summaries):
    lines = []
    if not summaries or not summaries[0]["remaps"]:
        return lines
    for k, rm in enumerate(summaries[0]["remaps"]):
        parts = []
        for s in summaries:
            r = s["remaps"][k]
            parts.append("%s %s (collateral %s, of %d)" % (
                s["scheduler"], _fmt(r["moved_share"], 100, "%.1f%%"),
                _fmt(r["collateral_share"], 100, "%.1f%%"), r["clients_compared"]))
        lines.append("clients remapped at %gs (%s): %s" % (rm["at"], "; ".join(rm["events"]), ", ".join(parts)))
    return lines


def write_outputs(outdir, wl, seed, runs, summaries, plots=True):
    """Every file of OUTDIR; returns (the plot file names, or None and why not)."""
    os.makedirs(outdir, exist_ok=True)
    meta = {"workload": wl.name, "seed": seed, "duration": wl.duration, "sample": wl.sample,
            "schedulers": [r.sched for r in runs], "servers": [s.name for s in wl.servers],
            "events": [{"at": e.at, "event": e.describe()} for e in wl.events]}
    if wl.capture_info is not None:
        meta["capture"] = dict(wl.capture_info)
    with open(os.path.join(outdir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "schedulers": summaries}, f, indent=1)
        f.write("\n")
    keys = [k for k in summaries[0] if k not in ("servers", "remaps", "engine_drops")]
    _csv(os.path.join(outdir, "summary.csv"), keys + ["engine_drops"],
         [[s[k] for k in keys] + [" ".join("%s=%d" % kv for kv in s["engine_drops"].items())]
          for s in summaries])
    skeys = list(summaries[0]["servers"][0])
    _csv(os.path.join(outdir, "servers.csv"), ["scheduler"] + skeys,
         [[s["scheduler"]] + [r[k] for k in skeys] for s in summaries for r in s["servers"]])
    # time series
    rows, ts = [], {}
    for run in runs:
        ts[run.sched] = {"time": [_r(t) for t in run.times], "imbalance": [_r(v) for v in run.imb],
                         "cv": [_r(v) for v in run.cvs], "servers": run.series}
        for i, t in enumerate(run.times):
            for name, s in run.series.items():
                rows.append([run.sched, _r(t), name, s["weight"][i], s["active"][i], s["inactive"][i],
                             s["load"][i], s["open"][i], s["overloaded"][i]])
    _csv(os.path.join(outdir, "timeseries.csv"),
         ["scheduler", "time", "server", "weight", "active", "inactive", "load", "open", "overloaded"], rows)
    _csv(os.path.join(outdir, "imbalance.csv"), ["scheduler", "time", "max_over_mean", "cv"],
         [[run.sched, _r(t), _r(run.imb[i]), _r(run.cvs[i])] for run in runs for i, t in enumerate(run.times)])
    with open(os.path.join(outdir, "timeseries.json"), "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "schedulers": ts}, f)
        f.write("\n")
    # events: the commands, and the remapping
    _csv(os.path.join(outdir, "events.csv"), ["scheduler", "time", "command", "status", "output"],
         [[run.sched, _r(t), "lvsadm " + " ".join(argv), status, text.strip()]
          for run in runs for t, argv, text, status in run.commands])
    _csv(os.path.join(outdir, "remaps.csv"),
         ["scheduler", "time", "events", "clients_compared", "moved", "moved_share", "collateral",
          "collateral_share", "unscheduled"],
         [[s["scheduler"], r["at"], "; ".join(r["events"]), r["clients_compared"], r["moved"],
           r["moved_share"], r["collateral"], r["collateral_share"], r["unscheduled"]]
          for s in summaries for r in s["remaps"]])
    # per client: where its connections went (the capture's clients, for a trace-driven run)
    order = [s.name for s in wl.servers]
    crows = []
    for run in runs:
        for c, counts in enumerate(run.client_conns):
            if counts:
                named = [n for n in order if n in counts]
                crows.append([run.sched, str(wl.clients[c]), sum(counts.values()), len(named),
                              " ".join("%s=%d" % (n, counts[n]) for n in named)
                              + (" none=%d" % counts[None] if None in counts else "")])
    _csv(os.path.join(outdir, "clients.csv"), ["scheduler", "client", "conns", "servers", "by_server"], crows)
    levels = [i / 100.0 for i in range(101)]
    qrows = []
    for run in runs:
        rts = sorted(run.rts)
        for q in levels:
            qrows.append([run.sched, q, _r(percentile(rts, q * 100) if q > 0 else (rts[0] if rts else None))])
    _csv(os.path.join(outdir, "response_times.csv"), ["scheduler", "quantile", "seconds"], qrows)

    made, why = None, None
    if plots:
        made, why = make_plots(outdir, wl, runs)
    _index(outdir, wl, seed, summaries, made, why)
    return made, why


def make_plots(outdir, wl, runs):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None, ("matplotlib is not installed for this interpreter (%s %s)"
                      % (sys.implementation.name, sys.version.split()[0]))
    plt.rcParams["svg.hashsalt"] = "pylvs-sim"
    made = []
    ylabel = "ActiveConn" if wl.protocol == "tcp" else "load (served + waiting)"

    def save(fig, stem):
        for ext in ("png", "svg"):
            name = "%s.%s" % (stem, ext)
            fig.savefig(os.path.join(outdir, name), dpi=100,
                        metadata={"Date": None} if ext == "svg" else {"Software": None})
            made.append(name)
        plt.close(fig)

    def marks(ax):
        for ev in wl.events:
            ax.axvline(ev.at, color="grey", linestyle="--", linewidth=0.8)

    fig, axes = plt.subplots(len(runs), 1, figsize=(9, 2.2 * len(runs) + 0.6), sharex=True, squeeze=False)
    for ax, run in zip(axes[:, 0], runs):
        for name, s in run.series.items():
            ax.plot(run.times, s["active"] if wl.protocol == "tcp" else s["load"], label=name, linewidth=1)
        marks(ax)
        ax.set_title(run.sched, fontsize=9, loc="left")
        ax.set_ylabel(ylabel, fontsize=8)
    axes[0, 0].legend(fontsize=7, ncol=4, loc="upper right")
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    save(fig, "active")

    fig, (a1, a2) = plt.subplots(2, 1, figsize=(9, 5), sharex=True)
    for run in runs:
        a1.plot(run.times, [float("nan") if v is None else v for v in run.imb], label=run.sched, linewidth=1)
        a2.plot(run.times, [float("nan") if v is None else v for v in run.cvs], label=run.sched, linewidth=1)
    marks(a1)
    marks(a2)
    a1.set_ylabel("max / mean")
    a2.set_ylabel("coefficient of variation")
    a2.set_xlabel("seconds")
    a1.legend(fontsize=8)
    fig.tight_layout()
    save(fig, "imbalance")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run in runs:
        rts = sorted(run.rts)
        if rts:
            n = len(rts)
            ax.step(rts, [(i + 1) / n for i in range(n)], where="post", label=run.sched, linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("response time, seconds (queueing + service)")
    ax.set_ylabel("share of connections")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", linewidth=0.3)
    fig.tight_layout()
    save(fig, "response_cdf")
    return made, None


def _index(outdir, wl, seed, summaries, plots, why):
    lines = ["# lvs sim: %s" % wl.name, "",
             "Seed %d, %g s of arrivals, %s %s service %s, schedulers %s." % (
                 seed, wl.duration, wl.protocol.upper(), wl.service.method, wl.service.endpoint,
                 ", ".join(s["scheduler"] for s in summaries)), ""]
    if wl.capture_info is not None:
        lines += ["Trace-driven: the connections (clients, ports, times, request bytes, responses and "
                  "hold times where the capture has them) are the capture's.", "",
                  capture_line(wl) + ".", ""]
    if wl.events:
        lines += ["Events: " + "; ".join("%gs %s" % (e.at, e.describe()) for e in wl.events), ""]
    lines += ["```", summary_table(summaries).rstrip("\n"), "```", ""]
    rl = remap_lines(summaries)
    if rl:
        lines += ["## Clients remapped by the events", "",
                  "| scheduler | time | events | clients compared | moved | share | collateral share |",
                  "|---|---|---|---|---|---|---|"]
        for s in summaries:
            for r in s["remaps"]:
                lines.append("| %s | %g | %s | %d | %d | %s | %s |" % (
                    s["scheduler"], r["at"], "; ".join(r["events"]), r["clients_compared"], r["moved"],
                    _fmt(r["moved_share"], 100, "%.1f%%"), _fmt(r["collateral_share"], 100, "%.1f%%")))
        lines.append("")
    lines += ["## Files", ""]
    for name, what in (("summary.json", "everything in the table, per server and per event"),
                       ("summary.csv", "one row per scheduler"),
                       ("servers.csv", "one row per scheduler and server (the model's and the engine's counters)"),
                       ("timeseries.csv", "per sample and server: weight, ActiveConn, InActConn, load, open, overload"),
                       ("timeseries.json", "the same, as arrays"),
                       ("imbalance.csv", "max/mean and coefficient of variation per sample"),
                       ("remaps.csv", "clients remapped at each event time"),
                       ("events.csv", "every lvsadm command run, its time and status"),
                       ("clients.csv", "per scheduler and client: its connections and the servers they reached"),
                       ("response_times.csv", "response-time quantiles per scheduler")):
        lines.append("- [%s](%s): %s" % (name, name, what))
    lines.append("")
    lines += ["## Plots", ""]
    if plots:
        for stem, title in (("active", "Active connections per server"), ("imbalance", "Imbalance over time"),
                            ("response_cdf", "Response-time CDF")):
            lines += ["### %s" % title, "", "![%s](%s.png)" % (title, stem), "",
                      "[SVG](%s.svg)" % stem, ""]
    else:
        lines += ["No plots: %s." % why, ""]
    with open(os.path.join(outdir, "index.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


