"""`lvs realserver`: prepare this host (or network namespace) to be an IPVS real server.

What each forwarding method needs on the real server, as the tutorial and
"ARP problem in VS/TUN and VS/DR" describe it:

  dr      the VIP on lo, so that the stack accepts packets addressed to it,
          and ARP kept quiet about it (arp_ignore=1, arp_announce=2): only
          the director may answer who-has VIP.
  tunnel  the VIP on the tunnel device (arp_ignore=8 there), arp_ignore=2 on
          the outside interface, loose rp_filter on the tunnel device (the
          client's address is not routed through it). With the kernel's ipip
          module that device is tunl0 and the kernel decapsulates. Without it
          (or for gue and gre), this process decapsulates: it reads the
          tunnel packets from the outside interface (AF_PACKET), writes the
          inner packets into a TUN device holding the VIP, and an nftables
          table of ours keeps the kernel from answering the tunnel packets
          itself (protocol or port unreachable). The replies leave through
          the normal routes, from the VIP, straight to the client.
  nat     the default route through the director, so replies pass it.

Every change goes through the host-change journal (lvs/hostconf.py): it is
printed with its reason and written to the state file before it is made,
and `--down` undoes exactly what was done, also after a SIGKILL.

The decapsulation itself (decap_frame, decap_packet, Decapsulator) is pure:
bytes in, an inner packet or a drop reason out, so it is tested without root.
"""

import ipaddress
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time
import traceback
from collections import Counter

from . import hostconf
from .checksum import checksum
from .defrag import Reassembled, Reassembler
from .ports.raw import PortGone

OWNER = "lvs realserver"
TUN_NAME = "lvstun0"
NFT_TABLE = "pylvs_rs"
ENCAP_PROTO = {"ipip": 4, "gre": 47, "gue": 17}
BATCH = 64

# ---------------------------------------------------------------- decapsulation (pure)

ETH_P_IP = 0x0800
VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)
IP_MF_OFFSET = 0x3FFF
GRE_CSUM = 0x8000
GRE_MUST_BE_ZERO = 0x7C00     # RFC 2784: bits 1-5 (routing, key, sequence, strict route, recursion)
GRE_VERSION = 0x0007
GUE_FLAG_PRIV = 0x0001        # struct guehdr flags (include/net/gue.h), host order of the be16
GUE_PFLAG_REMCSUM = 0x80000000
INET_ECN_CE = 3

# Reasons that mean "not a tunnel packet for us": left alone, not counted as drops.
IGNORED = frozenset(("not_ipv4", "not_local", "not_tunnel"))
QUEUED = "fragment_queued"    # a fragment held for reassembly: neither a drop nor a packet yet


def ip_of_frame(frame):
    """The IPv4 packet of an Ethernet frame, 802.1Q/802.1ad tags skipped; None if not IPv4."""
    off = 12
    while len(frame) >= off + 2:
        ethertype = (frame[off] << 8) | frame[off + 1]
        if ethertype == ETH_P_IP:
            return frame[off + 2:]
        if ethertype not in VLAN_TPIDS:
            return None
        off += 4
    return None


def decap_frame(frame, encap, local, vips, gue_port=None, mac=None):
    """decap_packet on an Ethernet frame (sent to `mac`, if given: not what a promiscuous
    interface overhears)."""
    if mac is not None and frame[:6] != mac:
        return None, "not_local"
    packet = ip_of_frame(frame)
    if packet is None:
        return None, "not_ipv4"
    return decap_packet(packet, encap, local, vips, gue_port)


def decap_packet(packet, encap, local, vips, gue_port=None, reasm=None, now=0.0):
    """Decapsulate one outer IPv4 packet: (inner packet, None) or (None, reason).

    `local` and `vips` are sets of 4-byte addresses: the outer destination
    must be one of ours, the inner one a VIP. Fragments are dropped
    ("outer_fragment") unless a Reassembler is given; then they are queued
    and the datagram they complete is decapsulated. Never raises on
    malformed input.
    """
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None, "outer_header"
    ihl = (packet[0] & 15) << 2
    if ihl < 20 or len(packet) < ihl:
        return None, "outer_header"
    if packet[16:20] not in local:
        return None, "not_local"
    proto = packet[9]
    if proto != ENCAP_PROTO[encap]:
        return None, "not_tunnel"
    total = (packet[2] << 8) | packet[3]
    if total < ihl or total > len(packet):
        return None, "outer_length"
    if checksum(packet[:ihl]):
        return None, "outer_checksum"
    packet = packet[:total]   # Ethernet padding off, as ip_rcv trims
    if ((packet[6] << 8) | packet[7]) & IP_MF_OFFSET:
        if reasm is None:
            return None, "outer_fragment"
        done = reasm.add(packet, ihl, now)
        if done is None:
            return None, QUEUED
        if not isinstance(done, Reassembled):
            return None, done
        packet = done.packet
        if len(packet) < ihl:   # cannot happen, but malformed input must never raise
            return None, "outer_length"
    payload = packet[ihl:]
    if encap == "ipip":
        inner, remcsum = payload, None
    elif encap == "gre":
        inner, reason = _gre(payload)
        if inner is None:
            return None, reason
        remcsum = None
    else:
        if len(payload) < 8:
            return None, "udp_truncated"
        if gue_port is None or ((payload[2] << 8) | payload[3]) != gue_port:
            return None, "not_tunnel"
        inner, remcsum = _gue(packet[12:20], payload)
        if inner is None:
            return None, remcsum
    return _inner(packet[1], inner, vips, remcsum)


def _gre(payload):
    """GRE (RFC 2784) as IPVS sends it: protocol 0x0800, optionally a checksum."""
    if len(payload) < 4:
        return None, "gre_truncated"
    flags = (payload[0] << 8) | payload[1]
    if flags & GRE_VERSION:
        return None, "gre_version"
    if flags & GRE_MUST_BE_ZERO:
        return None, "gre_flags"     # routing, key, sequence: not what IPVS sends
    hlen = 8 if flags & GRE_CSUM else 4
    if len(payload) < hlen:
        return None, "gre_truncated"
    if flags & GRE_CSUM and checksum(payload):
        return None, "gre_checksum"  # over the GRE header and the payload
    if ((payload[2] << 8) | payload[3]) != ETH_P_IP:
        return None, "gre_protocol"
    return payload[hlen:], None


def _gue(addresses, payload):
    """UDP + GUE (ipvs_gue_encap, fou's gue_udp_recv): the inner packet and its remote
    checksum offload (start, position) or None; or (None, reason)."""
    length = (payload[4] << 8) | payload[5]
    if length < 8 or length > len(payload):
        return None, "udp_length"
    payload = payload[:length]
    if payload[6] or payload[7]:
        pseudo = addresses + b"\0\x11" + struct.pack("!H", length)
        if checksum(pseudo + payload):
            return None, "udp_checksum"
    if len(payload) < 12:
        return None, "gue_truncated"
    version = payload[8] >> 6
    if version == 1:                 # direct IP: the IP header is the GUE header
        if payload[8] >> 4 != 4:
            return None, "gue_protocol"
        return payload[8:], None
    if version != 0:
        return None, "gue_version"
    if payload[8] & 0x20:
        return None, "gue_control"
    optlen = (payload[8] & 0x1F) << 2
    if payload[9] != 4:
        return None, "gue_protocol"   # only IPIP: what IPVS sends
    flags = (payload[10] << 8) | payload[11]
    if flags & ~GUE_FLAG_PRIV:
        return None, "gue_flags"
    if len(payload) < 12 + optlen:
        return None, "gue_truncated"
    remcsum = None
    if flags & GUE_FLAG_PRIV:
        if optlen < 4:
            return None, "gue_options"
        pflags = struct.unpack_from("!I", payload, 12)[0]
        if pflags & ~GUE_PFLAG_REMCSUM:
            return None, "gue_flags"
        if pflags & GUE_PFLAG_REMCSUM:
            if optlen < 8:
                return None, "gue_options"
            remcsum = struct.unpack_from("!HH", payload, 16)
    return payload[12 + optlen:], remcsum


def _inner(outer_tos, inner, vips, remcsum):
    if len(inner) < 20:
        return None, "inner_truncated"
    if inner[0] >> 4 != 4:
        return None, "inner_not_ipv4"
    ihl = (inner[0] & 15) << 2
    if ihl < 20 or len(inner) < ihl:
        return None, "inner_header"
    total = (inner[2] << 8) | inner[3]
    if total < ihl or total > len(inner):
        return None, "inner_length"
    if checksum(inner[:ihl]):
        return None, "inner_checksum"
    if inner[16:20] not in vips:
        return None, "inner_not_vip"
    inner = inner[:total]
    if remcsum is not None:
        # Remote checksum offload: the director left the inner L4 checksum partial
        # (the pseudo-header sum in place); finish it as skb_remcsum_process does.
        start, pos = remcsum
        if start < ihl or pos < start or pos + 2 > total:
            return None, "gue_remcsum"
        buf = bytearray(inner)
        struct.pack_into("!H", buf, pos, checksum(buf[start:]))
        inner = bytes(buf)
    if outer_tos & 3 == INET_ECN_CE:
        # INET_ECN_decapsulate: CE on a not-ECT packet is an error; on ECT it is kept.
        if inner[1] & 3 == 0:
            return None, "ecn"
        if inner[1] & 3 != INET_ECN_CE:
            buf = bytearray(inner)
            buf[1] |= INET_ECN_CE
            buf[10:12] = b"\0\0"
            struct.pack_into("!H", buf, 10, checksum(buf[:ihl]))
            inner = bytes(buf)
    return inner, None


class Decapsulator:
    """decap_frame with outer fragment reassembly and counters (no I/O)."""

    def __init__(self, encap, vips, local, gue_port=None, mac=None):
        self.mac = mac
        self.encap = encap
        self.vips = set(vips)
        self.local = set(local)
        self.gue_port = gue_port
        self.reasm = Reassembler()
        self.decapsulated = 0
        self.drops = Counter()
        self.ignored = Counter()

    def frame(self, frame, now):
        if self.mac is not None and frame[:6] != self.mac:
            self.ignored["not_local"] += 1
            return None
        packet = ip_of_frame(frame)
        if packet is None:
            self.ignored["not_ipv4"] += 1
            return None
        inner, reason = decap_packet(packet, self.encap, self.local, self.vips, self.gue_port,
                                     self.reasm, now)
        if inner is not None:
            self.decapsulated += 1
        elif reason in IGNORED:
            self.ignored[reason] += 1
        elif reason != QUEUED:
            self.drops[reason] += 1
        return inner

    def expire(self, now):
        for _ in self.reasm.expire(now):
            self.drops["fragment_timeout"] += 1

    def summary(self):
        drops = " ".join("%s=%d" % kv for kv in sorted(self.drops.items())) or "none"
        return "decapsulated %d packets; dropped: %s" % (self.decapsulated, drops)


# ---------------------------------------------------------------- host facts

def local_addresses(ifname=None):
    """{address bytes: interface} of this namespace's IPv4 addresses (of one interface)."""
    return {addr: dev for addr, _, dev in hostconf.ipv4_addresses(ifname)}


def default_routes():
    """The main table's default routes as `ip route` prints them, one token list each."""
    return routes_exact("0.0.0.0/0")


def routes_exact(prefix):
    """The main table's routes for exactly `prefix`, as token lists `ip route add` takes back."""
    out = hostconf.run(["ip", "-4", "route", "show", "table", "main", "exact", prefix])
    routes = []
    for line in out.splitlines():
        if line[:1].isspace() and routes:     # a multipath route's "nexthop" lines
            routes[-1] += line.split()
        elif line.strip():
            routes.append(line.split())
    # State flags are printed but not accepted back (ip route add would refuse them).
    state = {"linkdown", "dead", "offload", "trap", "notify", "unresolved", "offload_failed",
             "rt_offload", "rt_trap", "rt_offload_failed"}
    return [[t for t in r if t not in state] for r in routes]


def kernel_ipip():
    """'present' if tunl0 exists here, 'loadable' if the ipip module is loaded or on disk, else None."""
    if hostconf.link_info("tunl0") is not None:
        return "present"
    if os.path.isdir("/sys/module/ipip"):
        return "loadable"   # loaded, but no fallback device in this namespace
    release = os.uname().release
    for name in ("modules.builtin", "modules.dep"):
        try:
            with open(os.path.join("/lib/modules", release, name)) as f:
                if "/ipip.ko" in f.read():
                    return "loadable"
        except OSError:
            pass
    return None


# ---------------------------------------------------------------- the settings

class Setup:
    """The changes one `lvs realserver` makes, through one journal."""

    def __init__(self, args, log):
        self.args = args
        self.log = log
        self.changes = hostconf.HostChanges(args.state_file, log=log, owner=OWNER)
        self.vips = args.vips
        self.decap = None          # how a tunnel server decapsulates: "kernel" or "userspace"
        self.tun = None            # the userspace decapsulator's TunPort and RawPort
        self.raw = None

    def note(self, text):
        self.log("%s: %s" % (OWNER, text))

    def _conf(self, dev, name, value, why):
        self.changes.sysctl("net.ipv4.conf.%s.%s" % (dev, name), value, why)

    def _add_vips(self, dev):
        ours = local_addresses()
        for vip in self.vips:
            where = ours.get(socket.inet_aton(vip))
            if where == dev:
                self.note("%s is already on %s; left as it is" % (vip, dev))
                continue
            if where:
                raise hostconf.HostError("the VIP %s is already on %s: this host would answer ARP "
                                         "for it there; remove it first" % (vip, where))
            self.changes.command(["ip", "addr", "add", vip + "/32", "dev", dev],
                                 ["ip", "addr", "del", vip + "/32", "dev", dev],
                                 "the VIP as a local address, so that the stack accepts the "
                                 "director's packets for it and answers from it")

    def _link_up(self, dev, why):
        info = hostconf.link_info(dev) or {}
        if "UP" not in info.get("flags", ()):
            self.changes.command(["ip", "link", "set", dev, "up"], ["ip", "link", "set", dev, "down"], why)

    # ------------------------------------------------------------ dr

    def dr(self):
        self._add_vips("lo")
        for dev in ["all"] + ([self.args.iface] if self.args.iface else []):
            self._conf(dev, "arp_ignore", 1,
                       "answer ARP only for addresses on the interface asked (the VIP is on lo): "
                       "who-has VIP must be answered by the director alone (the kernel uses "
                       "the larger of all and the interface's value)")
            self._conf(dev, "arp_announce", 2,
                       "never put the VIP in our own ARP requests as their sender address, which "
                       "would teach the neighbours that the VIP is here")
        return "direct-routing real server for %s ready (VIP on lo, ARP for it left to the director)" \
            % ", ".join(self.vips)

    # ------------------------------------------------------------ nat

    def nat(self):
        director = self.args.director
        hop = hostconf.ip_json("-4", "route", "get", director)
        hop = hop[0] if hop else {}
        if hop.get("gateway") or hop.get("type", "unicast") != "unicast" or not hop.get("dev"):
            raise hostconf.HostError("the director %s is not on a segment of ours (ip route get: %s): "
                                     "a NAT real server's gateway must be" % (director, hop or "no route"))
        dev = self.args.iface or hop["dev"]
        if dev != hop["dev"]:
            raise hostconf.HostError("the director %s is reached through %s, not %s"
                                     % (director, hop["dev"], dev))
        # The segment itself: clients on it (the tutorial's, all in one subnet) would be
        # answered directly, from our own address instead of the VIP, and drop the answer.
        segment = []
        for link in hostconf.ip_json("-4", "addr", "show", "dev", dev):
            for a in link.get("addr_info", ()):
                net = ipaddress.IPv4Network("%s/%s" % (a["local"], a.get("prefixlen", 32)), strict=False)
                if ipaddress.IPv4Address(director) in net and net.prefixlen < 31:
                    connected = routes_exact(str(net))
                    if connected:
                        segment.append((str(net), a["local"], connected[0]))
        for route in default_routes():
            self.changes.command(["ip", "route", "del"] + route, ["ip", "route", "add"] + route,
                                 "the director must be the only default route: a NAT real "
                                 "server's replies go back through it to be rewritten")
        for net, rip, connected in segment:
            self.changes.command(["ip", "route", "add", director + "/32", "dev", dev, "src", rip],
                                 ["ip", "route", "del", director + "/32", "dev", dev, "src", rip],
                                 "the director stays on-link when its segment is routed through it")
            self.changes.command(["ip", "route", "replace", net, "via", director, "dev", dev, "src", rip],
                                 ["ip", "route", "replace"] + connected,
                                 "clients on this segment too: answered directly they would get "
                                 "the reply from %s, not from the VIP, and drop it" % rip)
        self.changes.command(["ip", "route", "add", "default", "via", director, "dev", dev],
                             ["ip", "route", "del", "default", "via", director, "dev", dev],
                             "replies to clients go to the director, which rewrites their "
                             "source back to the VIP (ip_vs_out)")
        return "NAT real server ready (replies through the director %s: the default route%s)" % (
            director, "".join(" and %s" % net for net, _, _ in segment))

    # ------------------------------------------------------------ tunnel

    def tunnel(self):
        a = self.args
        choice = a.decap
        if choice != "userspace" and a.encap == "ipip":
            have = kernel_ipip()
            if have == "present" or (have == "loadable" and self._create_tunl0(choice == "kernel")):
                self.decap = "kernel"
                return self._kernel_tunnel()
            if choice == "kernel":
                raise hostconf.HostError("--kernel: this kernel has no ipip module (no tunl0, and "
                                         "no module to load)")
            self.note("this kernel has no ipip module (no tunl0): this process decapsulates")
        elif choice is None:
            self.note("%s is decapsulated by this process (the kernel path, tunl0, is ipip only)"
                      % a.encap)
        self.decap = "userspace"
        return self._userspace_tunnel()

    def _create_tunl0(self, forced):
        try:
            self.changes.command(["ip", "link", "add", "name", "tunl0", "type", "ipip"],
                                 ["ip", "link", "del", "tunl0"],
                                 "the kernel's IPIP fallback device, as the tutorial uses it")
            return True
        except hostconf.HostError as e:
            if hostconf.link_info("tunl0") is not None:
                return True    # the module came and made it (its fallback device is not ours to delete)
            if forced:
                raise
            self.note("no tunl0 (%s)" % e)
            return False

    def _tunnel_common(self, dev):
        self._conf(dev, "arp_ignore", 8, "never answer ARP for the VIP on the tunnel device "
                   "(the tutorial's 不回应arp请求)")
        self._conf(dev, "rp_filter", 2,
                   "loose source validation on the tunnel device: the client's address is routed "
                   "through the outside interface, not through this device, so strict rp_filter "
                   "would drop every decapsulated packet (the effective value is the larger of "
                   "all and the device, and 2 is the largest: `all` need not change)")
        self._add_vips(dev)
        self._link_up(dev, "bring the tunnel device up")
        out = self.args.iface
        self._conf(out, "arp_ignore", 2, "the outside interface answers ARP only for its own "
                   "addresses, asked from its own subnet: not for the VIP")
        for dev in ("all", out):
            # all too: a reply leaves by whichever interface its route picks (the kernel
            # uses the larger of all and the device's value).
            self._conf(dev, "arp_announce", 2, "never name the VIP as the sender of our own ARP "
                       "requests: the replies leave from the VIP, and a neighbour that learnt "
                       "the VIP at our MAC would send the VIP's traffic here, not to the director")

    def _kernel_tunnel(self):
        self._tunnel_common("tunl0")
        return "tunnel real server for %s ready (kernel ipip decapsulation on tunl0)" % ", ".join(self.vips)

    def _userspace_tunnel(self):
        a = self.args
        tun_name = a.tun_name
        if hostconf.link_info(tun_name) is not None:
            raise hostconf.HostError("%s exists already; it is not ours to use (--tun-name)" % tun_name)
        if hostconf.run(["nft", "list", "table", "ip", NFT_TABLE], check=False):
            raise hostconf.HostError("nftables table ip %s exists already (is another lvs "
                                     "realserver running with another --state-file?)" % NFT_TABLE)
        self.changes.command(["ip", "tuntap", "add", "dev", tun_name, "mode", "tun"],
                             ["ip", "link", "del", "dev", tun_name],
                             "a persistent TUN device: decapsulated packets are written into it and "
                             "arrive as if received on it; persistent, so that its settings stay "
                             "until --down undoes them, even if this process is killed")
        from .ports import TunPort
        self.tun = TunPort(tun_name)     # attach now: a device nobody holds has no carrier
        if os.path.exists("/proc/sys/net/ipv6/conf/%s" % tun_name):
            self.changes.sysctl("net.ipv6.conf.%s.disable_ipv6" % tun_name, 1,
                                "no IPv6 autoconfiguration traffic into a device nobody reads")
        self._tunnel_common(tun_name)
        proto = ENCAP_PROTO[a.encap]
        match = "udp dport %d" % a.gue_port if a.encap == "gue" else "ip protocol %d" % proto
        what = {"ipip": "protocol 4 (IPIP): protocol unreachable",
                "gre": "protocol 47 (GRE): protocol unreachable",
                "gue": "UDP port %s (GUE): port unreachable" % a.gue_port}[a.encap]
        body = ("    chain input {\n"
                "        type filter hook input priority filter; policy accept;\n"
                '        iifname "%s" %s counter drop\n'
                "    }" % (a.iface, match))
        self.changes.nft_table("ip", NFT_TABLE, body,
                               "this process reads the tunnel packets from %s; the kernel, which "
                               "cannot decapsulate them, must not answer them with ICMP %s"
                               % (a.iface, what))
        from .ports import RawPort
        self.raw = RawPort(a.iface)      # before "ready": no tunnel packet may be missed after it
        return "tunnel real server for %s ready (userspace %s decapsulation on %s -> %s)" % (
            ", ".join(self.vips), a.encap, a.iface, tun_name)


# ---------------------------------------------------------------- the decapsulator's loop

def _addr_watch():
    """A netlink socket that becomes readable when an IPv4 address changes (RTMGRP_IPV4_IFADDR)."""
    try:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        s.bind((0, 0x10))
        s.setblocking(False)
        return s
    except (OSError, AttributeError):
        return None


def run_decapsulator(args, raw, tun, stop, log):
    """Until `stop` is set (by SIGTERM/SIGINT through the wakeup pipe): frames from --iface in,
    inner packets into the TUN device. Sleeps in select() when idle."""
    watch = _addr_watch()
    wake_r, wake_w = os.pipe()
    try:
        for fd in (wake_r, wake_w):
            os.set_blocking(fd, False)
        old_wakeup = signal.set_wakeup_fd(wake_w)
        dec = Decapsulator(args.encap, [socket.inet_aton(v) for v in args.vips],
                           local_addresses(args.iface), args.gue_port, raw.mac)
        sel = selectors.DefaultSelector()
        sel.register(raw.fileno(), selectors.EVENT_READ, "raw")
        sel.register(tun.fileno(), selectors.EVENT_READ, "tun")
        sel.register(wake_r, selectors.EVENT_READ, "wake")
        if watch is not None:
            sel.register(watch.fileno(), selectors.EVENT_READ, "addr")
        stray = 0
        try:
            while not stop:
                deadline = dec.reasm.next_deadline()
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                if watch is None:
                    timeout = 5.0 if timeout is None else min(timeout, 5.0)
                for key, _ in sel.select(timeout):
                    what = key.data
                    if what == "raw":
                        now = time.monotonic()
                        try:
                            frames = raw.recv_batch(BATCH)
                        except PortGone as e:  # the outside interface is gone: nothing to serve
                            raise hostconf.HostError(e.strerror)
                        for frame in frames:
                            inner = dec.frame(frame, now)
                            if inner is not None:
                                tun.send(inner)
                    elif what == "tun":
                        stray += len(tun.recv_batch(BATCH))   # nothing is routed into it; drain
                    elif what == "wake":
                        try:
                            os.read(wake_r, 512)
                        except BlockingIOError:
                            pass
                    elif what == "addr":
                        try:
                            while watch.recv(65536):
                                pass
                        except (BlockingIOError, InterruptedError):
                            pass
                        dec.local = set(local_addresses(args.iface))
                if watch is None:
                    dec.local = set(local_addresses(args.iface))
                dec.expire(time.monotonic())
        finally:
            signal.set_wakeup_fd(old_wakeup)
            sel.close()
        ring = raw.ring_drops()
        log("%s: %s%s%s" % (OWNER, dec.summary(), "; ring drops %d" % ring if ring else "",
                            "; %d stray packets from %s" % (stray, tun.name) if stray else ""))
    finally:
        if watch is not None:
            watch.close()
        os.close(wake_r)
        os.close(wake_w)


# ---------------------------------------------------------------- the command

def _parse_vips(text):
    vips = []
    for part in (text or "").split(","):
        part = part.strip()
        try:
            addr = ipaddress.IPv4Address(part)
        except ValueError:
            raise ValueError("bad VIP address %r" % part)
        if addr.is_unspecified or addr.is_multicast or addr.is_loopback or int(addr) == 0xFFFFFFFF:
            raise ValueError("%s cannot be a VIP" % part)
        if str(addr) not in vips:
            vips.append(str(addr))
    return vips


def _check_ifname(name):
    if not name or len(name) > 15 or "/" in name or "." in name or name.strip() != name:
        # '.' too: sysctl names use it as the separator (net.ipv4.conf.IF.*)
        raise ValueError("unusable interface name %r" % name)


def _validate(p, args):
    """Argument errors (usage, exit 2) and address errors (exit 1, ValueError)."""
    if args.down:
        extra = [o for o, v in (("--method", args.method), ("--vip", args.vip), ("--iface", args.iface),
                                ("--director", args.director), ("--detach", args.detach)) if v]
        if extra:
            p.error("--down takes only --state-file (not %s)" % " ".join(extra))
        return
    if not args.method:
        p.error("--method is required (or --down)")
    if args.method in ("dr", "tunnel") and not args.vip:
        p.error("--method %s needs --vip" % args.method)
    if args.method == "tunnel" and not args.iface:
        p.error("--method tunnel needs --iface (the outside interface the tunnel packets arrive on)")
    if args.method == "nat" and not args.director:
        p.error("--method nat needs --director (the director's address, the new default route)")
    if args.method != "nat" and args.director:
        p.error("--director is for --method nat")
    if args.method != "tunnel" and (args.encap or args.gue_port is not None or args.decap):
        p.error("--encap, --gue-port, --userspace and --kernel are for --method tunnel")
    args.encap = args.encap or "ipip"
    if args.encap == "gue" and args.gue_port is None:
        p.error("--encap gue needs --gue-port (the director's --tun-port: IPVS has no default)")
    if args.encap != "gue" and args.gue_port is not None:
        p.error("--gue-port is for --encap gue")
    if args.gue_port is not None and not 1 <= args.gue_port <= 65535:
        p.error("--gue-port must be 1-65535")
    if args.decap == "kernel" and args.encap != "ipip":
        p.error("--kernel decapsulates only ipip (tunl0); gue and gre are decapsulated in userspace")
    args.vips = _parse_vips(args.vip) if args.vip else []
    if args.director:
        d = ipaddress.IPv4Address(args.director)   # ValueError: a bad address
        if d.is_unspecified or d.is_multicast or int(d) == 0xFFFFFFFF:
            raise ValueError("%s cannot be the director's address" % args.director)
        args.director = str(d)
    if args.iface:
        _check_ifname(args.iface)
    _check_ifname(args.tun_name)


def _say(text):
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _fail(text):
    sys.stderr.write("%s: %s\n" % (OWNER, text))
    return 1


def _command(p, args):
    try:
        _validate(p, args)
    except ValueError as e:
        return _fail(str(e))
    if os.geteuid() != 0:
        return _fail("needs root: it changes addresses, routes, sysctls and nftables")
    default_state = args.state_file is None
    if default_state:
        args.state_file = os.path.join(hostconf.run_dir(), "realserver.state")
    if args.down:
        return down(args.state_file, _say)
    if os.path.exists(args.state_file):
        hint = "lvs realserver --down" + ("" if default_state else " --state-file " + args.state_file)
        return _fail("%s exists: a real server set up earlier was not taken down; run `%s` first"
                     % (args.state_file, hint))
    if args.iface and hostconf.link_info(args.iface) is None:
        return _fail("no interface %s here" % args.iface)
    if args.method == "tunnel" and args.detach:
        return _detach(args)
    return up(args, _say)


def up(args, log, ready=None):
    """Make the changes; for a userspace tunnel, then run the decapsulator until SIGTERM/SIGINT.
    `ready(text)` is called once everything is in place (the detached child tells its parent)."""
    stop = []
    def on_signal(signum, frame):
        stop.append(signum)
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    setup = Setup(args, log)
    try:
        try:
            setup.changes.claim()
        except (hostconf.HostError, OSError) as e:   # someone else's journal: not ours to undo
            return _fail_setup("%s; run `lvs realserver --down` first" % e, ready)
        try:
            text = getattr(setup, args.method)()
        except BaseException as e:
            for port in (setup.raw, setup.tun):
                if port is not None:
                    port.close()
            failures = setup.changes.undo()
            if isinstance(e, (hostconf.HostError, OSError)):
                return _fail_setup("%s%s" % (e, _undo_note(failures)), ready)
            raise
        if setup.decap != "userspace":
            log("%s: %s" % (OWNER, text))
            if ready:
                ready(text, running=False)     # nothing needs to keep running
            return 0
        tun = setup.tun
        log("%s: %s%s" % (OWNER, text, "" if ready else "; SIGTERM or Ctrl-C undoes it all"))
        if ready:
            ready(text)
        status = 0
        try:
            run_decapsulator(args, setup.raw, tun, stop, log)
        except hostconf.HostError as e:
            log("%s: decapsulator stopped: %s" % (OWNER, e))
            status = 1
        except Exception:
            log("%s: decapsulator failed:\n%s" % (OWNER, traceback.format_exc().rstrip()))
            status = 1
        finally:
            setup.raw.close()
            tun.close()                        # the device is persistent: it stays for the undo
            failures = setup.changes.undo()
        if failures:
            log("%s: could not undo: %s" % (OWNER, "; ".join(failures)))
            return 1
        return status
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _undo_note(failures):
    return "" if not failures else " (and undoing failed: %s)" % "; ".join(failures)


def _fail_setup(text, ready):
    if ready:
        ready(None, error=text)
        return 1
    return _fail(text)


def _detach(args):
    """Fork; the child makes the changes and runs the decapsulator. Its lines come back
    through a pipe; we return once it reports ready (or failed), within 60 s."""
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:     # the child
        status = 1
        try:
            os.close(r)
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)    # never hold the caller's terminal or pipes
            os.close(null)
            pipe = [w]
            def log(text):
                if pipe:
                    try:
                        os.write(pipe[0], (text.replace("\0", "") + "\n").encode())
                    except OSError:
                        pipe.clear()
            def ready(text, error=None, running=True):
                word = b"error " if error is not None else b"ok " if running else b"done "
                if pipe:
                    try:
                        os.write(pipe[0], b"\0" + word + (error or text).encode() + b"\n")
                        os.close(pipe[0])
                    except OSError:
                        pass
                    pipe.clear()
                if error is None and running:
                    # From now on our lines (the undo, the counters) go where --down shows them.
                    try:
                        fd = os.open(_log_path(args.state_file),
                                     os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
                        pipe.append(fd)
                    except OSError:
                        pass
            status = up(args, log, ready)
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(w)
    buf, deadline = b"", time.monotonic() + 60
    with selectors.DefaultSelector() as sel:
        sel.register(r, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(max(0.0, deadline - time.monotonic())):
                continue
            chunk = os.read(r, 65536)
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                text = line.decode(errors="replace")
                if text.startswith("\0ok "):
                    os.close(r)
                    _say("%s: running as pid %d; `lvs realserver --down` stops it and undoes all"
                         % (OWNER, pid))
                    return 0
                if text.startswith("\0done "):
                    os.close(r)
                    _reap(pid)
                    return 0
                if text.startswith("\0error "):
                    os.close(r)
                    _reap(pid)
                    return _fail(text[len("\0error "):])
                _say(text)
            if not chunk:
                os.close(r)
                _reap(pid)
                return _fail("the decapsulator (pid %d) ended before it was ready" % pid)
    os.close(r)
    return _fail("the decapsulator (pid %d) was not ready within 60 s; `lvs realserver --down` "
                 "stops it" % pid)


def _log_path(state_path):
    return state_path + ".log"


def _show_log(state_path, log):
    """Print and remove what a detached decapsulator wrote after it was ready."""
    path = _log_path(state_path)
    try:
        with open(path, errors="replace") as f:
            text = f.read()
        os.unlink(path)
    except OSError:
        return
    for line in text.splitlines():
        log("  " + line)


def _reap(pid):
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def down(state_path, log, timeout=15.0):
    """Undo what `lvs realserver` did: stop its decapsulator if it still runs (it undoes on
    its way out), else replay the state file's undo steps."""
    try:
        with open(state_path) as f:
            state = json.load(f)
    except FileNotFoundError:
        log("%s: nothing to undo (no %s)" % (OWNER, state_path))
        return 0
    except (OSError, ValueError) as e:
        return _fail("cannot read %s: %s" % (state_path, e))
    pid = state.get("pid")
    if isinstance(pid, int) and hostconf.writer_alive(pid, "realserver"):
        log("%s: stopping pid %d (SIGTERM); it undoes its changes as it exits" % (OWNER, pid))
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while hostconf.process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if hostconf.process_alive(pid):
            return _fail("pid %d did not stop within %.0f s" % (pid, timeout))
        _show_log(state_path, log)
        if not os.path.exists(state_path):
            log("%s: down (pid %d stopped and undid its changes)" % (OWNER, pid))
            return 0
        log("%s: pid %d left its state file; undoing from it" % (OWNER, pid))
    _show_log(state_path, log)
    found, failures = hostconf.cleanup(state_path, log=log, owner=OWNER)
    return _done(failures, log)


def _done(failures, log):
    if failures:
        return _fail("could not undo everything: %s" % "; ".join(failures))
    log("%s: down (every change undone)" % OWNER)
    return 0


def add_subparser(sub):
    p = sub.add_parser(
        "realserver", help="prepare this host to be a real server (DR, tunnel, NAT)",
        description="Prepare this host or network namespace to be an IPVS real server, printing "
                    "each change and why; --down undoes exactly what was done.")
    p.add_argument("--method", choices=("dr", "tunnel", "nat"),
                   help="the forwarding method the director uses for this server (-g, -i, -m)")
    p.add_argument("--vip", metavar="VIP[,VIP...]", help="the virtual service addresses (dr, tunnel)")
    p.add_argument("--iface", metavar="IF",
                   help="the outside interface (required for tunnel: the tunnel packets arrive there)")
    p.add_argument("--encap", choices=("ipip", "gue", "gre"),
                   help="tunnel: the director's --tun-type (default ipip)")
    p.add_argument("--gue-port", type=int, metavar="N", help="tunnel, gue: the director's --tun-port")
    p.add_argument("--director", metavar="DIP", help="nat: the director's address, made the default route")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--userspace", dest="decap", action="store_const", const="userspace",
                   help="tunnel: decapsulate in this process even if the kernel could")
    g.add_argument("--kernel", dest="decap", action="store_const", const="kernel",
                   help="tunnel: the kernel's ipip module and tunl0, or fail")
    p.add_argument("--tun-name", default=TUN_NAME, metavar="NAME",
                   help="tunnel, userspace: the TUN device to create (default %s)" % TUN_NAME)
    p.add_argument("--detach", action="store_true",
                   help="tunnel: run the decapsulator in the background; return once it is ready")
    p.add_argument("--state-file", metavar="PATH",
                   help="the journal of changes (default: realserver.state in this namespace's "
                        "/run/pylvs directory)")
    p.add_argument("--down", action="store_true", help="undo what a previous lvs realserver did")
    p.set_defaults(func=lambda args: _command(p, args), decap=None)
    return p
