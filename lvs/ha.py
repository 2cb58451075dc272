"""A failover pair of directors: keepalived's VRRP decides who is master,
pylvs follows.

keepalived runs in VRRP-only mode (`keepalived --vrrp`, no virtual_server
blocks: pylvs is the load balancer). Its notify script is `lvs vrrp-notify`,
which keepalived calls with the instance's new state; on MASTER it makes the
daemon answer ARP for the VIPs (announced by gratuitous ARP) and turns its
sync daemon into a master, on BACKUP/FAULT/STOP it releases the VIPs and
turns it into a backup. An address keepalived moves itself (the NAT real
servers' gateway, virtual_ipaddress) goes with the same state.

In keepalived.conf:

    vrrp_instance lvs {
        state BACKUP
        nopreempt
        interface eth0
        virtual_router_id 51
        priority 150                  # the other director: 100
        advert_int 1
        virtual_ipaddress { 198.51.100.254/32 }       # NAT servers' gateway
        notify "/usr/local/bin/lvs vrrp-notify --mcast-interface eth0 --syncid 5"
    }
"""

import sys
import time

from . import ctl

VRRP_STATES = ("MASTER", "BACKUP", "FAULT", "STOP")


def keepalived_config(name, iface, priority, vrid, notify_argv, addresses=(), advert=1.0):
    """A VRRP-only keepalived.conf for one director of a pair (both start BACKUP
    and never preempt: a director that comes back stays backup)."""
    notify = " ".join(notify_argv)
    advert_text = ("%g" % advert)
    version = 3 if advert < 1 else 2   # sub-second adverts are VRRPv3's
    lines = [
        "global_defs {",
        "    router_id %s" % name,
        "    script_user root",
        "    vrrp_version %d" % version,
        "}",
        "vrrp_instance lvs {",
        "    state BACKUP",
        "    nopreempt",
        "    interface %s" % iface,
        "    virtual_router_id %d" % vrid,
        "    priority %d" % priority,
        "    advert_int %s" % advert_text,
    ]
    if addresses:
        lines += ["    virtual_ipaddress {"] + ["        %s dev %s" % (a, iface) for a in addresses] + ["    }"]
    lines += ['    notify "%s"' % notify, "}"]
    return "\n".join(lines) + "\n"


def notify(state, mcast_ifn, syncid, path=None, log=None):
    """Follow a VRRP state change: VIP ownership and the sync daemon's role."""
    path = path or ctl.socket_path()
    master = state == "MASTER"
    answers = []
    answers.append(ctl.request(path, {"op": "vips", "own": master}, timeout=10.0))
    old, new = ("backup", "master") if master else ("master", "backup")
    # The daemon answers "No daemon is running" when there is none to stop: fine.
    answers.append(ctl.request(path, {"op": "adm", "argv": ["--stop-daemon", old]}, timeout=10.0))
    running = ctl.request(path, {"op": "adm", "argv": ["-L", "--daemon"]}, timeout=10.0)
    if "%s sync daemon" % new not in running.get("stdout", ""):
        answers.append(ctl.request(path, {"op": "adm", "argv": [
            "--start-daemon", new, "--mcast-interface", mcast_ifn, "--syncid", str(syncid)]},
            timeout=10.0))
    if log is not None:
        log("%.3f lvs vrrp-notify %s: %s" % (time.time(), state, answers))
    return answers


def add_subparser(sub):
    p = sub.add_parser("vrrp-notify", help="keepalived's notify script for a pair of directors",
                       description="Called by keepalived (notify) with TYPE NAME STATE [PRIORITY]: "
                                   "on MASTER the daemon owns the VIPs and becomes the sync master, "
                                   "otherwise it releases them and becomes a sync backup.")
    p.add_argument("--mcast-interface", required=True, metavar="IF", help="the sync daemons' interface")
    p.add_argument("--syncid", type=int, default=0, help="the sync daemons' syncid (default 0)")
    p.add_argument("--socket", metavar="PATH", help="the daemon's control socket")
    p.add_argument("--log", metavar="FILE", help="append what was done here")
    p.add_argument("args", nargs="*", metavar="TYPE NAME STATE", help="what keepalived passes")
    p.set_defaults(func=_main)


def _main(args):
    state = next((a for a in args.args if a in VRRP_STATES), None)
    if state is None:
        sys.stderr.write("lvs vrrp-notify: no VRRP state (MASTER, BACKUP, FAULT, STOP) in %r\n" % args.args)
        return 2
    def log(text):
        if args.log:
            with open(args.log, "a") as f:
                f.write(text + "\n")
    try:
        notify(state, args.mcast_interface, args.syncid, ctl.socket_path(args.socket), log)
    except ctl.NoDaemon as e:
        sys.stderr.write("lvs vrrp-notify: no daemon: %s\n" % e)
        log("%.3f lvs vrrp-notify %s: no daemon (%s)" % (time.time(), state, e))
        return 1
    return 0
