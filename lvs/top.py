"""`lvs top`: a live view of a running daemon, through its control socket.

Every --interval seconds (default 1) it asks the daemon for a snapshot (the
control socket's "top" request, lvs/ctl.py) and draws one screen: each
service with its scheduler and each real server with its forwarding method
and weight, their active and inactive connections, and their rates as the
kernel's estimator has them (ipvsadm --rate: connections, packets in and out,
bytes in and out per second, updated every 2 s), then the drops by reason and,
with --iface, the live side's counters. On a terminal each screen replaces the
last (ANSI: cursor home, clear to end of line and of screen; no curses);
elsewhere screens follow each other, a blank line apart. --once prints one
screen and exits, --count N stops after N. Ctrl-C ends it (status 0); a daemon
that is not there, or goes away, ends it with a message and status 1.
"""

import sys
import time

from . import ctl

HOME, CLEAR_LINE, CLEAR_DOWN = "\x1b[H", "\x1b[K", "\x1b[J"


# ---------------------------------------------------------------- the daemon's side

def _rates(stats):
    return list(stats.rates())


def snapshot(engine):
    """What a "top" request answers (besides the daemon's counters): the services
    and real servers in ipvsadm -Ln's order, with their counts and rates."""
    from . import listing
    services = []
    for svc in listing.listed_services(engine, True):
        line = listing.service_name(svc, True, rule=False)
        dests = []
        for dest in listing.listed_dests(svc, True):
            dests.append({
                "name": listing.addrport_to_anyname(dest.addr, dest.port,
                                                    listing.listed_protocol(svc), True),
                "fwd": listing.fwd_name(dest.conn_flags) or "?",
                "weight": listing.int32(dest.weight),
                "active": dest.activeconns, "inactive": dest.inactconns,
                "persistent": dest.persistconns,
                "overloaded": bool(dest.overloaded),
                "rates": _rates(dest.stats)})
        services.append({
            "name": line, "scheduler": svc.sched_name,
            "persistent": int(svc.timeout) if svc.persistent else None,
            "active": sum(d["active"] for d in dests),
            "inactive": sum(d["inactive"] for d in dests),
            "rates": _rates(svc.stats), "dests": dests})
    return {"services": services}


# ---------------------------------------------------------------- drawing

def _num(value):
    """A count in at most 6 characters: 123456, 1234K, 123M, 12G."""
    for unit, size in (("", 1), ("K", 10 ** 3), ("M", 10 ** 6), ("G", 10 ** 9), ("T", 10 ** 12)):
        if value < 1000000 * size or unit == "T":
            return "%d%s" % (value // size, unit)


def render(snap, path, interval=None, clock=None):
    """One screen of text (lines ending in newlines) for a snapshot."""
    services = snap.get("services") or []
    width = max([len("Prot LocalAddress:Port")]
                + [len(s["name"]) for s in services]
                + [len(d["name"]) + 5 for s in services for d in s["dests"]])
    stamp = time.strftime("%H:%M:%S", time.localtime(clock if clock is not None else time.time()))
    head = "pylvs top  %s  pid %s  %s" % (path, snap.get("pid", "?"), stamp)
    if interval:
        head += "  every %gs" % interval
    total_active = sum(s["active"] for s in services)
    total_inactive = sum(s["inactive"] for s in services)
    totals = [sum(s["rates"][i] for s in services) for i in range(5)]
    lines = [head,
             "%d services, %d real servers, %d active and %d inactive connections, "
             "%s conn/s, %s/%s pkt/s in/out, %s/%s B/s in/out" % (
                 len(services), sum(len(s["dests"]) for s in services), total_active,
                 total_inactive, _num(totals[0]), _num(totals[1]), _num(totals[2]),
                 _num(totals[3]), _num(totals[4])),
             ""]
    fmt = "%-{0}s %-9s %6s %8s %9s %6s %6s %6s %7s %7s".format(width)
    lines.append(fmt % ("Prot LocalAddress:Port", "Sched/Fwd", "Weight", "ActConn", "InActConn",
                        "CPS", "InPPS", "OutPPS", "InB/s", "OutB/s"))
    lines.append(fmt % ("  -> RemoteAddress:Port", "", "", "", "", "", "", "", "", ""))
    for s in services:
        sched = s["scheduler"] + (" p%d" % s["persistent"] if s["persistent"] is not None else "")
        lines.append(fmt % ((s["name"], sched, "", s["active"], s["inactive"])
                            + tuple(_num(v) for v in s["rates"])))
        for d in s["dests"]:
            lines.append(fmt % (("  -> " + d["name"], d["fwd"] + ("*" if d["overloaded"] else ""),
                                 d["weight"], d["active"], d["inactive"])
                                + tuple(_num(v) for v in d["rates"])))
    if not services:
        lines.append("(no services)")
    lines.append("")
    drops = snap.get("drops") or {}
    lines.append("drops: " + (" ".join("%s=%d" % (k, v) for k, v in sorted(drops.items()) if v)
                              or "none"))
    live = snap.get("director")
    if live:
        lines.append("live: " + " ".join("%s=%s" % (k, v) for k, v in sorted(live.items())
                                         if isinstance(v, int) and v))
    return "".join(line.rstrip() + "\n" for line in lines)


def _fetch(path, timeout):
    answer = ctl.request(path, {"op": "top"}, timeout=timeout)
    if "error" in answer:
        raise ctl.NoDaemon("it answered: %s" % answer["error"])
    return answer


def run(path, interval=1.0, count=None, once=False, out=None, err=None, clear=None):
    """`lvs top`: returns the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    if once:
        count = 1
    if clear is None:
        clear = not once and hasattr(out, "isatty") and out.isatty()
    shown = 0
    try:
        while True:
            try:
                snap = _fetch(path, timeout=max(5.0, 2 * interval))
            except (ctl.NoDaemon, OSError, ValueError) as e:
                if shown:
                    err.write("%slvs top: the daemon on %s went away (%s)\n"
                              % ("\n" if clear else "", path, e))
                else:
                    err.write("lvs top: no daemon answers on %s (%s)\n" % (path, e))
                return 1
            screen = render(snap, path, None if count == 1 else interval)
            if clear:
                screen = HOME + screen.replace("\n", CLEAR_LINE + "\n") + CLEAR_DOWN
            elif shown:
                screen = "\n" + screen
            out.write(screen)
            out.flush()
            shown += 1
            if count is not None and shown >= count:
                return 0
            time.sleep(interval)
    except KeyboardInterrupt:
        if clear:
            out.write("\n")
        return 0
    except BrokenPipeError:   # `lvs top | head`
        return 0


def _command(args):
    if args.interval <= 0:
        sys.stderr.write("lvs top: --interval must be positive\n")
        return 2
    if args.count is not None and args.count < 1:
        sys.stderr.write("lvs top: --count must be at least 1\n")
        return 2
    return run(ctl.socket_path(args.socket), args.interval, args.count, args.once)


def add_subparser(sub):
    p = sub.add_parser(
        "top", help="a live view of the running daemon: services, real servers, rates, drops",
        description="Show the running daemon's services and real servers (weights, active and "
                    "inactive connections, the estimator's rates) and its drops by reason, "
                    "refreshed every --interval seconds until Ctrl-C.")
    p.add_argument("--socket", metavar="PATH",
                   help="the daemon's control socket (default: $LVS_SOCKET, else /run/pylvs/lvs.sock)")
    p.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                   help="seconds between refreshes (default 1)")
    p.add_argument("--count", type=int, metavar="N", help="stop after N refreshes")
    p.add_argument("--once", action="store_true", help="print one screen and exit")
    p.set_defaults(func=_command)
    return p
