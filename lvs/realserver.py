"""`lvs realserver`: prepare this host (or namespace) to be an IPVS real server.

What the tutorial (../shared/seeds) and the LVS documents tell a real
server's administrator to type, done and explained, and undone by `--down`:

  dr      the VIP on lo, so the host accepts packets the director sends to its
          MAC still addressed to the VIP; arp_ignore=1 and arp_announce=2, so it
          never answers ARP for the VIP nor uses it in its own requests (only
          the director may: the "ARP problem" of LVS-DR).
  tunnel  the VIP on the tunnel device, with arp_ignore=8 there (never answer
          ARP on it), arp_ignore=2 on the outside interface, rp_filter loose on
          the tunnel device (the client's address is not routed through it).
          Where the ipip module exists, the kernel's tunl0 decapsulates, as in
          the tutorial. Where it does not (this machine; many containers), we
          do: IPIP, GRE and GUE packets arriving on the outside interface are
          read from an AF_PACKET socket, reassembled if fragmented, checked and
          unwrapped, and the inner packet handed to the local stack through a
          TUN device that carries the VIP. An nftables table keeps the kernel
          from answering the tunnel packets itself (ICMP protocol or port
          unreachable). The host's own TCP stack then answers the client
          directly, from the VIP, as in the tutorial's tcpdump.
  nat     every reply must pass back through the director: the default route
          via the director, and the on-link subnet too (a client on the same
          segment would otherwise be answered directly, from the real server's
          own address, and drop the answer).

Each change is printed with its reason and journalled (lvs/hostconf.py);
`--down` undoes them, stopping a running decapsulator first.
"""

import ipaddress
import json
import os
import selectors
import signal
import socket
import sys
import time

from . import hostconf
from .checksum import checksum, l4_checksum
from .defrag import Reassembler
from .hostconf import HostChanges, HostError

IPPROTO_IPIP, IPPROTO_UDP, IPPROTO_GRE = 4, 17, 47
GRE_CSUM, GRE_ROUTING, GRE_KEY, GRE_SEQ, GRE_VERSION = 0x8000, 0x4000, 0x2000, 0x1000, 0x0007
ETH_P_IP = 0x0800
TUN_NAME = "lvstun0"
BATCH = 64


class RealServerError(Exception):
    """Why the host cannot be prepared; printed, non-zero exit."""


# ---------------------------------------------------------------- decapsulation

def _ipv4_ok(packet, end):
    """A well-formed IPv4 header within packet[:end]: (ihl, total length) or a drop reason."""
    if end < 20:
        return "truncated"
    if packet[0] >> 4 != 4:
        return "not_ipv4"
    ihl = (packet[0] & 15) << 2
    if ihl < 20 or ihl > end:
        return "bad_header_length"
    tot = (packet[2] << 8) | packet[3]
    if tot < ihl or tot > end:
        return "bad_total_length"
    if checksum(packet[:ihl]):
        return "bad_ip_checksum"
    return ihl, tot


def decapsulate(packet, encap, vips, gue_port=None):
    """Unwrap one whole (reassembled) outer IPv4 packet.

    Returns (inner packet, None) or (None, drop reason). encap is "ipip",
    "gre" or "gue"; vips the set of 4-byte VIPs the inner packet may be for.
    """
    outer = _ipv4_ok(packet, len(packet))
    if isinstance(outer, str):
        return None, outer
    ihl, tot = outer
    proto = packet[9]
    start = ihl
    if encap == "ipip":
        if proto != IPPROTO_IPIP:
            return None, "not_tunnel"
    elif encap == "gre":
        if proto != IPPROTO_GRE:
            return None, "not_tunnel"
        if tot - ihl < 4:
            return None, "truncated"
        flags = (packet[ihl] << 8) | packet[ihl + 1]
        if flags & (GRE_ROUTING | GRE_KEY | GRE_SEQ | GRE_VERSION):
            return None, "gre_options"  # IPVS's GRE carries none of these
        if (packet[ihl + 2] << 8) | packet[ihl + 3] != ETH_P_IP:
            return None, "gre_protocol"
        start = ihl + 4
        if flags & GRE_CSUM:
            if tot - ihl < 8:
                return None, "truncated"
            if checksum(packet[ihl:tot]):
                return None, "bad_gre_checksum"
            start = ihl + 8
    elif encap == "gue":
        if proto != IPPROTO_UDP:
            return None, "not_tunnel"
        if tot - ihl < 12:
            return None, "truncated"
        if (packet[ihl + 2] << 8) | packet[ihl + 3] != gue_port:
            return None, "not_tunnel"
        ulen = (packet[ihl + 4] << 8) | packet[ihl + 5]
        if ulen < 12 or ulen > tot - ihl:
            return None, "bad_udp_length"
        if (packet[ihl + 6] or packet[ihl + 7]) and l4_checksum(
                bytes(packet[12:16]), bytes(packet[16:20]), IPPROTO_UDP, bytes(packet[ihl:ihl + ulen])) != 0:
            return None, "bad_udp_checksum"
        g = ihl + 8
        if packet[g] >> 6 != 0:
            return None, "gue_version"   # IPVS sends GUE version 0
        if packet[g] & 0x20:
            return None, "gue_control"
        if packet[g + 1] != IPPROTO_IPIP:
            return None, "gue_protocol"
        start = g + 4 + ((packet[g] & 0x1F) << 2)
        tot = ihl + ulen
    else:
        raise ValueError(encap)
    inner = packet[start:tot]
    checked = _ipv4_ok(inner, len(inner))
    if isinstance(checked, str):
        return None, "inner_" + checked
    if bytes(inner[16:20]) not in vips:
        return None, "inner_not_vip"
    return bytes(inner[:checked[1]]), None


class Decapsulator:
    """AF_PACKET in, TUN out: the userspace stand-in for the ipip (gre, fou) module."""

    def __init__(self, raw, tun, encap, vips, local_addrs, gue_port=None):
        self.raw, self.tun = raw, tun
        self.encap, self.vips, self.gue_port = encap, vips, gue_port
        self.local = local_addrs
        self.defrag = Reassembler()
        self.decapsulated = 0
        self.drops = {}
        self.proto = {"ipip": IPPROTO_IPIP, "gre": IPPROTO_GRE, "gue": IPPROTO_UDP}[encap]

    def _drop(self, reason):
        self.drops[reason] = self.drops.get(reason, 0) + 1

    def receive(self, frames, now):
        mac = self.raw.mac
        for frame in frames:
            if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[0:6] != mac:
                continue
            packet = frame[14:]
            if packet[9] != self.proto or bytes(packet[16:20]) not in self.local:
                continue  # not a tunnel packet for us: the host's business
            try:
                self._one(bytearray(packet), now)
            except Exception:  # malformed input must never stop the helper
                self._drop("internal_error")

    def _one(self, packet, now):
        ok = _ipv4_ok(packet, len(packet))
        if isinstance(ok, str):
            return self._drop(ok)
        ihl, tot = ok
        packet = packet[:tot]
        if ((packet[6] << 8) | packet[7]) & 0x3FFF:
            r = self.defrag.add(packet, ihl, now)
            if r is None:
                return
            if isinstance(r, str):
                return self._drop(r)
            packet = bytearray(r.packet)
        inner, reason = decapsulate(packet, self.encap, self.vips, self.gue_port)
        if inner is None:
            return self._drop(reason)
        if self.tun.send(inner):
            self.decapsulated += 1
        else:
            self._drop("tun_write")

    def next_deadline(self):
        return self.defrag.next_deadline()

    def summary(self):
        drops = " ".join("%s=%d" % kv for kv in sorted(self.drops.items()))
        return "decapsulated %d, dropped %s" % (self.decapsulated, drops or "none")


# ---------------------------------------------------------------- host setup

def _addresses(ifname):
    out = hostconf.run(["ip", "-j", "-4", "addr", "show", "dev", ifname])
    return [(a["local"], a.get("prefixlen", 32)) for link in json.loads(out or "[]")
            for a in link.get("addr_info", ()) if a.get("family") == "inet"]


def _kernel_ipip():
    """Does this kernel decapsulate IPIP itself (tunl0 exists or can be made)?"""
    if os.path.exists("/sys/class/net/tunl0"):
        return True
    try:
        hostconf.run(["ip", "link", "add", "name", "lvsprobe0", "type", "ipip"])
    except HostError:
        return False
    hostconf.run(["ip", "link", "del", "lvsprobe0"], check=False)
    return True


def _setup_dr(changes, vips, iface):
    for vip in vips:
        changes.command(["ip", "addr", "add", vip + "/32", "dev", "lo"],
                        ["ip", "addr", "del", vip + "/32", "dev", "lo"],
                        "accept packets the director sends to our MAC still addressed to the VIP")
    for scope in ["all"] + ([iface] if iface else []):
        changes.sysctl("net.ipv4.conf.%s.arp_ignore" % scope, 1,
                       "answer ARP only for addresses of the interface asked on: never for the VIP on lo")
        changes.sysctl("net.ipv4.conf.%s.arp_announce" % scope, 2,
                       "never name the VIP as the source of our own ARP requests")


def _setup_nat(changes, iface, director):
    addrs = _addresses(iface)
    if not addrs:
        raise RealServerError("%s has no IPv4 address" % iface)
    rip, plen = addrs[0]
    net = ipaddress.IPv4Network("%s/%d" % (rip, plen), strict=False)
    if ipaddress.IPv4Address(director) not in net:
        raise RealServerError("the director %s is not on %s's subnet %s" % (director, iface, net))
    old = json.loads(hostconf.run(["ip", "-j", "-4", "route", "show", "default"]) or "[]")
    if old:
        o = old[0]
        undo = ["ip", "route", "replace", "default"] + (["via", o["gateway"]] if o.get("gateway") else []) + \
               ["dev", o["dev"]]
        changes.command(["ip", "route", "replace", "default", "via", director, "dev", iface], undo,
                        "replies to clients elsewhere go back through the director, which rewrites them")
    else:
        changes.command(["ip", "route", "add", "default", "via", director, "dev", iface],
                        ["ip", "route", "del", "default", "via", director, "dev", iface],
                        "replies to clients elsewhere go back through the director, which rewrites them")
    if net.prefixlen < 32:
        changes.command(["ip", "route", "add", director + "/32", "dev", iface, "src", rip],
                        ["ip", "route", "del", director + "/32", "dev", iface],
                        "the director stays on-link when its subnet is routed through it")
        changes.command(["ip", "route", "replace", str(net), "via", director, "dev", iface, "src", rip],
                        ["ip", "route", "replace", str(net), "dev", iface, "proto", "kernel", "scope", "link",
                         "src", rip],
                        "clients on this segment too: answered directly they would get a reply from %s, "
                        "not from the VIP, and drop it" % rip)


def _guard_table(encap, gue_port):
    # Protocol numbers, not names: /etc/protocols calls 4 "ipencap" and 94 "ipip".
    rules = {"ipip": "ip protocol 4 drop", "gre": "ip protocol 47 drop",
             "gue": "udp dport %d drop" % (gue_port or 0)}[encap]
    return ("    chain input {\n        type filter hook input priority filter - 10; policy accept;\n"
            "        %s\n    }" % rules)


# ---------------------------------------------------------------- the command

def _parse_vips(text):
    vips = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        try:
            vips.append(str(ipaddress.IPv4Address(item)))
        except ValueError:
            raise RealServerError("bad VIP %r: want an IPv4 address" % item)
    return vips


def default_state_path():
    return os.path.join(hostconf.run_dir(), "realserver.state")


def down(state_path, out):
    log = lambda text: out.write(text + "\n")
    try:
        with open(state_path) as f:
            pid = json.load(f).get("pid")
    except FileNotFoundError:
        out.write("lvs realserver: nothing to undo (%s does not exist)\n" % state_path)
        return 0
    except (OSError, ValueError):
        pid = None
    if isinstance(pid, int) and pid != os.getpid() and hostconf.process_alive(pid) and _is_ours(pid):
        # The decapsulator undoes its own changes when it ends.
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while hostconf.process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not os.path.exists(state_path):
            out.write("lvs realserver: stopped pid %d; host restored\n" % pid)
            return 0
    found, failures = hostconf.cleanup(state_path, log=log, owner="lvs realserver")
    for failure in failures:
        sys.stderr.write("lvs realserver: %s\n" % failure)
    if failures:
        return 1
    out.write("lvs realserver: host restored\n")
    return 0


def _is_ours(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return b"realserver" in f.read()
    except OSError:
        return False


def run(args, out=sys.stdout):
    state_path = args.state_file or default_state_path()
    if args.down:
        return down(state_path, out)
    if os.geteuid() != 0:
        raise RealServerError("needs root (addresses, sysctls, nftables, AF_PACKET and TUN)")
    if not args.method:
        raise RealServerError("--method dr|tunnel|nat is required (or --down)")
    vips = _parse_vips(args.vip)
    if args.method in ("dr", "tunnel") and not vips:
        raise RealServerError("--vip is required for %s" % args.method)
    if args.method in ("tunnel", "nat") and not args.iface:
        raise RealServerError("--iface (the outside interface) is required for %s" % args.method)
    if args.method == "nat" and not args.director:
        raise RealServerError("--director (its address on this segment) is required for nat")
    if args.encap == "gue" and not args.gue_port:
        raise RealServerError("--gue-port is required with --encap gue (the service's --tun-port)")
    log = lambda text: (out.write(text + "\n"), out.flush())
    changes = HostChanges(state_path, log=log, owner="lvs realserver")
    try:
        changes.claim()
    except HostError as e:
        raise RealServerError("%s (lvs realserver --down)" % e)
    try:
        if args.method == "dr":
            _setup_dr(changes, vips, args.iface)
            log("lvs realserver: direct-routing real server for %s ready" % ", ".join(vips))
            return 0
        if args.method == "nat":
            _setup_nat(changes, args.iface, args.director)
            log("lvs realserver: NAT real server ready (replies through %s)" % args.director)
            return 0
        return _tunnel(args, changes, vips, log)
    except (HostError, RealServerError, OSError) as e:
        for failure in changes.undo():
            log("lvs realserver: could not undo: %s" % failure)
        raise RealServerError(str(e))


def _tunnel(args, changes, vips, log):
    iface = args.iface
    changes.sysctl("net.ipv4.conf.%s.arp_ignore" % iface, 2,
                   "answer ARP on %s only for its own addresses, from senders on its subnet" % iface)
    for scope in ("all", iface):
        # Our replies leave from the VIP: without this, the ARP request that
        # resolves the client would name the VIP as its sender, and the
        # client would send the next packets for the VIP to us, not the director.
        changes.sysctl("net.ipv4.conf.%s.arp_announce" % scope, 2,
                       "never name the VIP as the source of our own ARP requests")
    kernel = args.kernel or (not args.userspace and args.encap == "ipip" and _kernel_ipip())
    if kernel:
        if args.encap != "ipip":
            raise RealServerError("the kernel path decapsulates ipip only; use --userspace for %s" % args.encap)
        if not os.path.exists("/sys/class/net/tunl0"):
            changes.command(["ip", "link", "add", "name", "tunl0", "type", "ipip"],
                            ["ip", "link", "del", "tunl0"], "the ipip module's fallback tunnel device")
        _vip_on(changes, "tunl0", vips, transient=False)
        log("lvs realserver: tunnel real server for %s ready (the kernel's tunl0 decapsulates)" % ", ".join(vips))
        return 0

    from .ports import RawPort, TunPort
    local = {socket.inet_aton(a) for a, _ in _addresses(iface)}
    if not local:
        raise RealServerError("%s has no IPv4 address: tunnel packets are sent to it" % iface)
    changes.nft_table("ip", "pylvs_rs", _guard_table(args.encap, args.gue_port),
                      "this kernel has no %s decapsulation: keep it from answering the tunnel packets "
                      "with ICMP unreachables; pylvs unwraps them" % args.encap)
    tun = TunPort(args.tun_name)
    try:
        log("lvs realserver: TUN device %s created: inner packets enter the local stack through it" % tun.name)
        _vip_on(changes, tun.name, vips, transient=True)
        raw = RawPort(iface)
    except BaseException:
        tun.close()
        raise
    decap = Decapsulator(raw, tun, args.encap, {socket.inet_aton(v) for v in vips}, local, args.gue_port)
    ready = ("lvs realserver: tunnel real server for %s ready (userspace %s decapsulation on %s -> %s)"
             % (", ".join(vips), args.encap, iface, tun.name))
    if args.detach:
        pid = os.fork()
        if pid:
            raw.close()
            tun.close()  # the child holds the device open
            log(ready + ", pid %d" % pid)
            return 0
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        changes.save()  # the state file names the process that will undo
        status = 1
        try:
            _serve(decap, changes, lambda text: None)
            status = 0
        finally:
            os._exit(status)
    log(ready)
    _serve(decap, changes, log)
    return 0


def _vip_on(changes, dev, vips, transient):
    undo_link = ["ip", "link", "set", dev, "down"]
    if transient:
        hostconf.run(["ip", "link", "set", dev, "up"])
        changes.log("lvs realserver: ip link set %s up (goes with the device)" % dev)
        for vip in vips:
            hostconf.run(["ip", "addr", "add", vip + "/32", "dev", dev])
            changes.log("lvs realserver: ip addr add %s/32 dev %s: the inner packets are addressed to the VIP "
                        "(goes with the device)" % (vip, dev))
        for name, value, why in (("arp_ignore", 8, "never answer ARP on the tunnel device"),
                                 ("rp_filter", 2, "loose: the clients' addresses are not routed through it")):
            hostconf.write_sysctl("net.ipv4.conf.%s.%s" % (dev, name), value)
            changes.log("lvs realserver: sysctl net.ipv4.conf.%s.%s=%d: %s (goes with the device)"
                        % (dev, name, value, why))
        return
    changes.command(["ip", "link", "set", dev, "up"], undo_link, "the tunnel device carries the VIP")
    for vip in vips:
        changes.command(["ip", "addr", "add", vip + "/32", "dev", dev], ["ip", "addr", "del", vip + "/32", "dev", dev],
                        "the inner packets are addressed to the VIP")
    changes.sysctl("net.ipv4.conf.%s.arp_ignore" % dev, 8, "never answer ARP on the tunnel device")
    changes.sysctl("net.ipv4.conf.%s.rp_filter" % dev, 2, "loose: the clients' addresses are not routed through it")


def _serve(decap, changes, log):
    """The decapsulator's loop, until SIGTERM/SIGINT; the host is restored on the way out."""
    stopping = []
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno())
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stopping.append(signum))
    sel = selectors.DefaultSelector()
    sel.register(decap.raw, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    try:
        while not stopping:
            deadline = decap.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            for key, _ in sel.select(timeout):
                if key.fileobj is wake_r:
                    try:
                        wake_r.recv(64)
                    except OSError:
                        pass
                    continue
                decap.receive(decap.raw.recv_batch(BATCH), time.monotonic())
            if deadline is not None and time.monotonic() >= deadline:
                decap.defrag.expire(time.monotonic())
    finally:
        sel.close()
        log("lvs realserver: " + decap.summary())
        for failure in changes.undo():
            log("lvs realserver: could not undo: %s" % failure)
        decap.raw.close()
        decap.tun.close()


def add_subparser(sub):
    p = sub.add_parser("realserver", help="prepare this host to be a real server (DR, tunnel, NAT)",
                       description="Prepare this host or namespace to be an IPVS real server, as the "
                                   "tutorial explains; print each setting and why. --down undoes them.")
    p.add_argument("--method", choices=("dr", "tunnel", "nat"), help="how the director forwards to us")
    p.add_argument("--vip", metavar="VIP[,VIP...]", help="the virtual addresses (dr, tunnel)")
    p.add_argument("--iface", metavar="IF", help="the outside interface (tunnel, nat; dr: its ARP settings too)")
    p.add_argument("--encap", choices=("ipip", "gue", "gre"), default="ipip",
                   help="the service's --tun-type (tunnel; default ipip)")
    p.add_argument("--gue-port", type=int, metavar="PORT", help="the service's --tun-port (--encap gue)")
    p.add_argument("--director", metavar="DIP", help="the director's address on our segment (nat)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--userspace", action="store_true", help="tunnel: decapsulate in userspace even if "
                                                              "the kernel could")
    how.add_argument("--kernel", action="store_true", help="tunnel: use the kernel's tunl0 (ipip module)")
    p.add_argument("--tun-name", default=TUN_NAME, help="tunnel, userspace: the TUN device (default %s)" % TUN_NAME)
    p.add_argument("--detach", action="store_true", help="tunnel, userspace: decapsulate in the background")
    p.add_argument("--state-file", metavar="PATH", help="where changes are recorded for --down "
                                                        "(default: realserver.state beside the daemon's socket)")
    p.add_argument("--down", action="store_true", help="undo what an earlier run did")
    p.set_defaults(func=_main)


def _main(args):
    try:
        return run(args)
    except RealServerError as e:
        sys.stderr.write("lvs realserver: %s\n" % e)
        return 1
