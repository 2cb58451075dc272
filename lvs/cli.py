"""The `lvs` command: subcommands around the engine."""

import argparse
import sys

from . import __version__


def _replay(args):
    from .replay import ReplayError, replay
    try:
        return replay(args.rules, args.capture, args.output, sysctls=args.sysctl,
                      fwmarks=args.fwmark, neigh=args.neigh, mac=args.mac, seed=args.seed,
                      director=args.director, scheduler_paths=args.scheduler_path,
                      max_conns=args.max_conns)
    except ReplayError as e:
        sys.stderr.write("lvs replay: %s\n" % e)
        return 2


def _daemon(args):
    from . import ctl
    from .daemon import DaemonError, own_vips, print_stats, start, stop
    from .daemon import cleanup
    path = ctl.socket_path(args.socket)
    ifaces = [name for item in args.iface for name in item.split(",") if name]
    try:
        if args.cleanup:
            return cleanup(args.state_file)
        if args.stop:
            return stop(path)
        if args.own_vips or args.release_vips:
            return own_vips(path, args.own_vips)
        if args.stats:
            return print_stats(path)
        return start(path, args.rules, args.feed, detach=args.detach, clock=args.clock,
                     ifaces=ifaces, state_path=args.state_file, log_path=args.log,
                     ring=not args.no_ring, workers=args.workers, standby=args.standby,
                     max_conns=args.max_conns, sysctls=args.sysctl, procfs=args.procfs,
                     metrics=args.metrics, scheduler_paths=args.scheduler_path)
    except DaemonError as e:
        sys.stderr.write("lvs daemon: %s\n" % e)
        return 1


def _sysctl(args):
    from . import ctl
    from .daemon import DaemonError, sysctl
    try:
        return sysctl(ctl.socket_path(args.socket), args.items)
    except DaemonError as e:
        sys.stderr.write("lvs sysctl: %s\n" % e)
        return 1


def build_parser():
    parser = argparse.ArgumentParser(prog="lvs", description="Linux IPVS as a userspace program.")
    parser.add_argument("--version", action="version", version="pylvs %s" % __version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    rp = sub.add_parser("replay", help="run a capture through the engine, offline",
                        description="Run a pcap/pcapng capture of what arrives at the director "
                                    "through the engine; print ipvsadm's listings and the drops.")
    rp.add_argument("--rules", required=True, metavar="RULES",
                    help="ipvsadm-save lines; '@SECONDS <ipvsadm args>' lines apply at that time")
    rp.add_argument("capture", metavar="IN", help="pcap or pcapng capture (Ethernet, raw IP, Linux cooked; IPv4 and IPv6)")
    rp.add_argument("-o", "--output", metavar="OUT", help="write the frames the director sends here (Ethernet pcap)")
    rp.add_argument("--sysctl", action="append", default=[], metavar="NAME=VALUE",
                    help="an IPVS sysctl, as named under /proc/sys/net/ipv4/vs/ (repeatable)")
    rp.add_argument("--fwmark", action="append", default=[], metavar="PROTO:ADDR[:PORT]=MARK",
                    help="mark matching packets before service lookup (first match wins)")
    rp.add_argument("--neigh", action="append", default=[], metavar="IP=MAC",
                    help="MAC address of a next hop, IPv4 or IPv6 (default: 02:00 + the IPv4 "
                         "address, 02:06 + the IPv6 address's last 4 bytes)")
    rp.add_argument("--mac", default="02:00:00:00:00:01", help="the director's own MAC")
    rp.add_argument("--director", action="append", metavar="IP",
                    help="the director's address, source of tunnels and of its ICMP errors "
                         "(default: the VIP); IPv4 or IPv6, give it twice for both families")
    rp.add_argument("--seed", type=int, default=0, help="key for values the kernel draws at random (IP IDs)")
    rp.add_argument("--scheduler-path", action="append", default=[], metavar="FILE",
                    help="a Python file with scheduler classes; the rules name them with -s (repeatable)")
    rp.add_argument("--max-conns", type=int, metavar="N",
                    help="bound the connection table at N entries, as lvs daemon --max-conns "
                         "(the defense modes measure pressure against it)")
    rp.set_defaults(func=_replay)

    dp = sub.add_parser("daemon", help="hold the tables and serve lvsadm on a control socket",
                        description="Hold the engine's tables and answer lvsadm on a Unix socket.")
    dp.add_argument("--socket", metavar="PATH",
                    help="control socket (default: $LVS_SOCKET, else /run/pylvs/lvs.sock)")
    dp.add_argument("--rules", metavar="FILE", help="ipvsadm-save lines to load at start (all or nothing)")
    dp.add_argument("--feed", action="append", default=[], metavar="IN.pcap",
                    help="run a capture through the engine at start, as lvs replay does (repeatable)")
    dp.add_argument("--detach", action="store_true",
                    help="run in the background; return once the socket answers (10 s at most)")
    dp.add_argument("--stop", action="store_true", help="stop the daemon on the socket and wait until it is gone")
    dp.add_argument("--clock", choices=("monotonic", "capture"), default="monotonic",
                    help="'capture': time moves only with fed packets (reproducible listings)")
    dp.add_argument("--iface", action="append", default=[], metavar="IF[,IF...]",
                    help="serve the VIPs on these interfaces (AF_PACKET; root; repeatable)")
    dp.add_argument("--state-file", metavar="PATH",
                    help="where host changes are recorded for --cleanup "
                         "(default: daemon.state beside the default socket)")
    dp.add_argument("--log", metavar="FILE", help="append the daemon's log here (with --detach: instead of nowhere)")
    dp.add_argument("--no-ring", action="store_true",
                    help="receive with recvfrom() instead of a PACKET_MMAP ring")
    dp.add_argument("--workers", type=int, default=1, metavar="N",
                    help="with --iface: N processes share the interfaces (PACKET_FANOUT by client "
                         "address); listings add them up (default 1)")
    dp.add_argument("--sysctl", action="append", default=[], metavar="NAME=VALUE",
                    help="an IPVS sysctl at start, as named under /proc/sys/net/ipv4/vs/ "
                         "(repeatable; `lvs sysctl` changes them while it runs)")
    dp.add_argument("--max-conns", type=int, metavar="N",
                    help="at most N connections and templates in the table: new ones beyond are "
                         "dropped and counted (table_full; sync_table_full for synced ones)")
    dp.add_argument("--standby", action="store_true",
                    help="with --iface: start without answering ARP for the VIPs (a backup director)")
    dp.add_argument("--procfs", metavar="DIR",
                    help="keep DIR/net/ip_vs, ip_vs_stats, ip_vs_stats_percpu, ip_vs_conn and "
                         "ip_vs_conn_sync in the kernel's formats (for node_exporter --path.procfs DIR)")
    dp.add_argument("--metrics", metavar="ADDR:PORT",
                    help="serve Prometheus metrics there (node_exporter's node_ipvs_* and pylvs_*)")
    dp.add_argument("--stats", action="store_true",
                    help="print the running daemon's counters: drops by reason, the live side, "
                         "the sync daemons (JSON)")
    dp.add_argument("--own-vips", action="store_true",
                    help="tell the running daemon to answer ARP for its VIPs, announced by "
                         "gratuitous ARP (a takeover)")
    dp.add_argument("--release-vips", action="store_true",
                    help="tell the running daemon to stop answering ARP for its VIPs")
    dp.add_argument("--cleanup", action="store_true",
                    help="undo the host changes of a daemon that was killed (from its state file)")
    dp.add_argument("--scheduler-path", action="append", default=[], metavar="FILE",
                    help="a Python file with scheduler classes, usable with -s NAME (repeatable)")
    dp.set_defaults(func=_daemon)

    sp = sub.add_parser("sysctl", help="show or set the running daemon's IPVS sysctls",
                        description="As `sysctl net.ipv4.vs.NAME[=VALUE]` on a kernel director: "
                                    "the running daemon's IPVS sysctls (all of them without NAME).")
    sp.add_argument("items", nargs="*", metavar="NAME[=VALUE]")
    sp.add_argument("--socket", metavar="PATH", help="the daemon's control socket")
    sp.set_defaults(func=_sysctl)

    from . import ha, lab, realserver, sim
    realserver.add_subparser(sub)
    sim.add_subparser(sub)
    lab.add_subparser(sub)
    from . import lab_flood
    lab_flood.add_arguments(sub.choices["lab"])
    ha.add_subparser(sub)
    from . import top
    top.add_subparser(sub)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
