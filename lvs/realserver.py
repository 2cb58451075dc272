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

IPv6 (a VIP or a director's address may be either family; 6.1 tunnels either
family in either, so an IPv4 VIP may arrive in IPv6 and the other way round):

  dr      the VIP on lo as /128, and nothing else. NDP has no arp_ignore, and
          needs none: Linux answers a Neighbour Solicitation only for an
          address on the interface it arrived on (ndisc_recv_ns looks the
          target up with ipv6_get_ifaddr(net, target, dev, strict=1); else
          only anycast or proxy_ndp entries are answered), so a VIP on lo is
          never advertised on eth0. Nor arp_announce: ndisc_solicit takes the
          triggering packet's source (the VIP) only if that address is on the
          outgoing interface, else the interface's link-local address. What
          the kernel user does instead is therefore only this: put the IPv6
          VIP on lo (or another interface the clients' segment is not on),
          never on the outside interface, where it would be answered and
          DAD would probe for it. The director answers the solicitations.
  tunnel  IPv6 has no rp_filter (only a netfilter rpfilter rule, ip6tables -m
          rpfilter or nft `fib saddr . iif oif missing`, would drop the
          decapsulated packets; none is set by default), and the TUN device
          has no ARP: an IPv6 VIP needs no sysctl, only IPv6 on the device
          (and no link-local address there, addr_gen_mode=1). Userspace
          decapsulation takes ip6ip6 (next header 41 in IPv6), IPv4 in IPv6
          (next header 4), IPv6 in IPv4 (protocol 41), GRE (0x86DD or 0x0800)
          and GUE (protocol byte 41 or 4) over either outer family; an
          nftables table `ip6 pylvs_rs` keeps the kernel from answering the
          IPv6 ones with ICMPv6 parameter problem or port unreachable. The
          kernel's way, for ipip, is each path's fallback device: tunl0
          (ipip) for IPv4 in IPv4, sit0 (sit) for IPv6 in IPv4, ip6tnl0
          (ip6_tunnel) for either in IPv6, set to `mode any` when IPv4 comes
          in IPv6; it is used when every device needed exists or its module
          can be loaded, with the IPv6 VIPs on lo, as tunl0 is for IPv4.
  nat     the IPv6 default route through the director, and the segment's
          prefix too (at the kernel route's metric, 256, which `replace`
          must name to replace it).

Every change goes through the host-change journal (lvs/hostconf.py): it is
printed with its reason and written to the state file before it is made,
and `--down` undoes exactly what was done, also after a SIGKILL.

The decapsulation itself is lvs/decap.py: pure, bytes in, an inner packet or
a drop reason out, so it is tested without root.
"""

import ipaddress
import json
import os
import selectors
import signal
import socket
import sys
import time
import traceback

from . import hostconf
from .decap import IPPROTO_GRE, IPPROTO_IPIP, IPPROTO_IPV6, Decapsulator
from .ports.raw import PortGone

OWNER = "lvs realserver"
TUN_NAME = "lvstun0"
NFT_TABLE = "pylvs_rs"
BATCH = 64
NDP_NOTE = ("%s needs no sysctl: IPv6 has no arp_ignore, and needs none, because Linux answers a "
            "Neighbour Solicitation only for an address on the interface it arrived on "
            "(ndisc_recv_ns: ipv6_get_ifaddr(..., dev, strict)), so the VIP is never advertised "
            "on %s; nor arp_announce: our own solicitations take a source address of the "
            "outgoing interface (ndisc_solicit uses the packet's source only if it is on it), "
            "never the VIP. Keep IPv6 VIPs off the outside interface: there they would be answered")
RPF_NOTE = ("IPv6 has no rp_filter: the decapsulated IPv6 packets from clients routed elsewhere "
            "are accepted as they are (only a netfilter rpfilter rule, ip6tables -m rpfilter or "
            "nft fib, would drop them; none is set here)")

def addr_bytes(text):
    """An address as the decapsulator compares it: 4 bytes for IPv4, 16 for IPv6."""
    return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)


def family_of(text):
    return 6 if ":" in text else 4


def ipv6_addresses(ifname=None, scope=None):
    """[(address bytes, prefix length, interface)] of this namespace's IPv6 addresses (of one
    interface; of one scope, e.g. "global")."""
    argv = ["-6", "addr", "show"] + (["dev", ifname] if ifname else []) + (["scope", scope] if scope else [])
    found = []
    for link in hostconf.ip_json(*argv):
        for a in link.get("addr_info", ()):
            if a.get("family") == "inet6":
                found.append((socket.inet_pton(socket.AF_INET6, a["local"]), a.get("prefixlen", 128),
                              link.get("ifname", "")))
    return found


def local_addresses(ifname=None):
    """{address bytes: interface} of this namespace's IPv4 and IPv6 addresses (of one interface)."""
    found = {addr: dev for addr, _, dev in hostconf.ipv4_addresses(ifname)}
    if os.path.exists("/proc/sys/net/ipv6"):
        found.update((addr, dev) for addr, _, dev in ipv6_addresses(ifname))
    return found


def outer_families(ifname):
    """The address families tunnel packets can reach us in on `ifname`: 4 if it has an IPv4
    address, 6 if it has a global IPv6 one (a director sends to the real server's address)."""
    families = set()
    if hostconf.ipv4_addresses(ifname):
        families.add(4)
    if os.path.exists("/proc/sys/net/ipv6") and ipv6_addresses(ifname, "global"):
        families.add(6)
    return families


def default_routes(family=4):
    """The main table's default routes as `ip route` prints them, one token list each."""
    return routes_exact("0.0.0.0/0" if family == 4 else "::/0", family)


def routes_exact(prefix, family=4):
    """The main table's routes for exactly `prefix`, as token lists `ip route add` takes back."""
    out = hostconf.run(["ip", "-%d" % family, "route", "show", "table", "main", "exact", prefix])
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


# The kernel's tunnel modules and their fallback devices (made in every namespace when the
# module is loaded): which one decapsulates what, by (outer family, inner family).
KERNEL_TUNNELS = {(4, 4): ("tunl0", "ipip", "ipip"), (4, 6): ("sit0", "sit", "sit"),
                  (6, 6): ("ip6tnl0", "ip6_tunnel", "ip6tnl"), (6, 4): ("ip6tnl0", "ip6_tunnel", "ip6tnl")}


def kernel_module(device, module):
    """'present' if the module's fallback `device` exists here, 'loadable' if the module is
    loaded or on disk (or built in), else None."""
    if hostconf.link_info(device) is not None:
        return "present"
    if os.path.isdir("/sys/module/" + module):
        return "loadable"   # loaded, but no fallback device in this namespace
    release = os.uname().release
    for name in ("modules.builtin", "modules.dep"):
        try:
            with open(os.path.join("/lib/modules", release, name)) as f:
                if "/%s.ko" % module in f.read():
                    return "loadable"
        except OSError:
            pass
    return None


def kernel_ipip():
    """'present' if tunl0 exists here, 'loadable' if the ipip module is loaded or on disk, else None."""
    return kernel_module("tunl0", "ipip")


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

    @property
    def vips4(self):
        return [v for v in self.vips if family_of(v) == 4]

    @property
    def vips6(self):
        return [v for v in self.vips if family_of(v) == 6]

    def _add_vips(self, dev, vips=None):
        ours = local_addresses()
        for vip in self.vips if vips is None else vips:
            six = family_of(vip) == 6
            where = ours.get(addr_bytes(vip))
            if where == dev:
                self.note("%s is already on %s; left as it is" % (vip, dev))
                continue
            if where:
                raise hostconf.HostError("the VIP %s is already on %s: this host would answer %s "
                                         "for it there; remove it first"
                                         % (vip, where, "Neighbour Solicitations" if six else "ARP"))
            if six:
                self._ipv6_on(dev)
            prefix = vip + ("/128" if six else "/32")
            self.changes.command(["ip", "addr", "add", prefix, "dev", dev] + (["nodad"] if six else []),
                                 ["ip", "addr", "del", prefix, "dev", dev],
                                 "the VIP as a local address, so that the stack accepts the "
                                 "director's packets for it and answers from it")

    def _ipv6_on(self, dev):
        """An IPv6 VIP needs IPv6 on its device: refuse where it is off (not ours to turn on,
        except on the TUN device we made)."""
        name = "net.ipv6.conf.%s.disable_ipv6" % dev
        try:
            off = hostconf.read_sysctl(name) != "0"
        except OSError:
            raise hostconf.HostError("IPv6 is not available here (no %s): no IPv6 VIP" % name)
        if off:
            raise hostconf.HostError("IPv6 is off on %s (%s=1): turn it on for an IPv6 VIP"
                                     % (dev, name))

    def _link_up(self, dev, why):
        info = hostconf.link_info(dev) or {}
        if "UP" not in info.get("flags", ()):
            self.changes.command(["ip", "link", "set", dev, "up"], ["ip", "link", "set", dev, "down"], why)

    # ------------------------------------------------------------ dr

    def dr(self):
        self._add_vips("lo")
        if self.vips6:
            self.note(NDP_NOTE % ("an IPv6 VIP on lo", self.args.iface or "the outside interface"))
        if not self.vips4:
            return "direct-routing real server for %s ready (VIP on lo, never advertised by NDP)" \
                % ", ".join(self.vips)
        for dev in ["all"] + ([self.args.iface] if self.args.iface else []):
            self._conf(dev, "arp_ignore", 1,
                       "answer ARP only for addresses on the interface asked (the VIP is on lo): "
                       "who-has VIP must be answered by the director alone (the kernel uses "
                       "the larger of all and the interface's value)")
            self._conf(dev, "arp_announce", 2,
                       "never put the VIP in our own ARP requests as their sender address, which "
                       "would teach the neighbours that the VIP is here")
        return "direct-routing real server for %s ready (VIP on lo, %s left to the director)" \
            % (", ".join(self.vips), "ARP for it" if not self.vips6 else "ARP and NDP for them")

    # ------------------------------------------------------------ nat

    def nat(self):
        director = self.args.director
        family = family_of(director)
        fam = "-%d" % family
        hop = hostconf.ip_json(fam, "route", "get", director)
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
        host_len = 32 if family == 4 else 128
        ip_route = ["ip"] + ([] if family == 4 else [fam]) + ["route"]
        for link in hostconf.ip_json(fam, "addr", "show", "dev", dev):
            for a in link.get("addr_info", ()):
                if a.get("scope", "global") != "global":
                    continue     # IPv6 link-local: not where clients are
                net = ipaddress.ip_network("%s/%s" % (a["local"], a.get("prefixlen", host_len)), strict=False)
                if ipaddress.ip_address(director) in net and net.prefixlen < host_len - 1:
                    connected = routes_exact(str(net), family)
                    if connected:
                        segment.append((str(net), a["local"], connected[0]))
        for route in default_routes(family):
            self.changes.command(ip_route + ["del"] + route, ip_route + ["add"] + route,
                                 "the director must be the only default route: a NAT real "
                                 "server's replies go back through it to be rewritten")
        for net, rip, connected in segment:
            self.changes.command(ip_route + ["add", "%s/%d" % (director, host_len), "dev", dev, "src", rip],
                                 ip_route + ["del", "%s/%d" % (director, host_len), "dev", dev, "src", rip],
                                 "the director stays on-link when its segment is routed through it")
            # IPv6 replaces only the route of the same metric (the kernel's is 256; ip's default 1024)
            metric = []
            if family == 6 and "metric" in connected:
                metric = ["metric", connected[connected.index("metric") + 1]]
            self.changes.command(ip_route + ["replace", net, "via", director, "dev", dev, "src", rip] + metric,
                                 ip_route + ["replace"] + connected,
                                 "clients on this segment too: answered directly they would get "
                                 "the reply from %s, not from the VIP, and drop it" % rip)
        self.changes.command(ip_route + ["add", "default", "via", director, "dev", dev],
                             ip_route + ["del", "default", "via", director, "dev", dev],
                             "replies to clients go to the director, which rewrites their "
                             "source back to the VIP (ip_vs_out)")
        return "NAT real server ready (replies through the director %s: the default route%s)" % (
            director, "".join(" and %s" % net for net, _, _ in segment))

    # ------------------------------------------------------------ tunnel

    def _tunnel_paths(self):
        """The (outer family, inner family) pairs to decapsulate: the outer family is that of
        the address the director sends to (ours on --iface), the inner one a VIP's; 6.1's
        IPVS puts either family in either."""
        outer = outer_families(self.args.iface)
        if not outer:
            raise hostconf.HostError("%s has no address (IPv4, or global IPv6): the director sends "
                                     "the tunnel packets to one of ours there" % self.args.iface)
        inner = {family_of(v) for v in self.vips}
        return sorted((o, i) for o in outer for i in inner)

    def tunnel(self):
        a = self.args
        choice = a.decap
        paths = self._tunnel_paths()
        if choice != "userspace" and a.encap == "ipip":
            missing = self._kernel_devices(paths, choice == "kernel")
            if not missing:
                self.decap = "kernel"
                return self._kernel_tunnel(paths)
            what = " and ".join("%s module (no %s" % (module, dev) for dev, module in missing)
            if choice == "kernel":
                raise hostconf.HostError("--kernel: this kernel has no %s, and no module to load)" % what)
            self.note("this kernel has no %s): this process decapsulates" % what)
        elif choice is None:
            self.note("%s is decapsulated by this process (the kernel path, tunl0, is ipip only)"
                      % a.encap)
        self.decap = "userspace"
        return self._userspace_tunnel(paths)

    def _kernel_devices(self, paths, forced):
        """The kernel's fallback devices the paths need, made where the module can be loaded;
        [(device, module)] of those missing (none made then, unless --kernel insisted)."""
        needed = []
        for path in paths:
            dev, module, kind = KERNEL_TUNNELS[path]
            if (dev, module, kind) not in needed:
                needed.append((dev, module, kind))
        have = {dev: kernel_module(dev, module) for dev, module, _ in needed}
        missing = [(dev, module) for dev, module, _ in needed if have[dev] is None]
        if missing:
            return missing
        for dev, module, kind in needed:
            if have[dev] == "loadable" and not self._create_fallback(dev, module, kind, forced):
                missing.append((dev, module))
        return missing

    def _create_fallback(self, dev, module, kind, forced):
        why = ("the kernel's IPIP fallback device, as the tutorial uses it" if dev == "tunl0" else
               "the kernel's %s fallback device: it decapsulates what the director tunnels to us"
               % module)
        try:
            self.changes.command(["ip", "link", "add", "name", dev, "type", kind],
                                 ["ip", "link", "del", dev], why)
            return True
        except hostconf.HostError as e:
            if hostconf.link_info(dev) is not None:
                return True    # the module came and made it (its fallback device is not ours to delete)
            if forced:
                raise
            self.note("no %s (%s)" % (dev, e))
            return False

    def _tunnel_device_v4(self, dev):
        """An IPv4 packet comes out of `dev`: its ARP quiet, its source check loose."""
        self._conf(dev, "arp_ignore", 8, "never answer ARP for the VIP on the tunnel device "
                   "(the tutorial's 不回应arp请求)")
        self._conf(dev, "rp_filter", 2,
                   "loose source validation on the tunnel device: the client's address is routed "
                   "through the outside interface, not through this device, so strict rp_filter "
                   "would drop every decapsulated packet (the effective value is the larger of "
                   "all and the device, and 2 is the largest: `all` need not change)")

    def _outside_arp(self):
        out = self.args.iface
        self._conf(out, "arp_ignore", 2, "the outside interface answers ARP only for its own "
                   "addresses, asked from its own subnet: not for the VIP")
        for dev in ("all", out):
            # all too: a reply leaves by whichever interface its route picks (the kernel
            # uses the larger of all and the device's value).
            self._conf(dev, "arp_announce", 2, "never name the VIP as the sender of our own ARP "
                       "requests: the replies leave from the VIP, and a neighbour that learnt "
                       "the VIP at our MAC would send the VIP's traffic here, not to the director")

    def _ipv6_notes(self, where):
        if self.vips6:
            self.note(NDP_NOTE % ("an IPv6 VIP on %s" % where, self.args.iface))
            self.note(RPF_NOTE)

    def _kernel_tunnel(self, paths):
        devices = []
        for path in paths:
            dev, module, _ = KERNEL_TUNNELS[path]
            if (dev, module) not in devices:
                devices.append((dev, module))
        if (6, 4) in paths:
            self.changes.command(["ip", "-6", "tunnel", "change", "ip6tnl0", "mode", "any"],
                                 ["ip", "-6", "tunnel", "change", "ip6tnl0", "mode", "ip6ip6"],
                                 "ip6tnl0 takes only IPv6 inside (mode ip6ip6) until told any: "
                                 "the IPv4 VIPs' packets come in IPv6 too")
        v4_devices = [KERNEL_TUNNELS[p][0] for p in paths if p[1] == 4]
        for i, dev in enumerate(v4_devices):
            self._tunnel_device_v4(dev)
            if i == 0:
                self._add_vips(dev, self.vips4)    # as the tutorial: the VIP on tunl0
        if self.vips6:
            # No ARP, no rp_filter for IPv6: the VIP can be on any device; lo whichever
            # tunnel device (sit0, ip6tnl0) delivers it.
            self._add_vips("lo", self.vips6)
        for dev, _ in devices:
            self._link_up(dev, "bring the tunnel device up")
        if self.vips4:
            self._outside_arp()
        self._ipv6_notes("lo")
        if [d for d, _ in devices] == ["tunl0"]:
            how = "kernel ipip decapsulation on tunl0"
        else:
            how = "kernel decapsulation on %s" % ", ".join("%s (%s)" % d for d in devices)
        return "tunnel real server for %s ready (%s)" % (", ".join(self.vips), how)

    def _userspace_tunnel(self, paths):
        a = self.args
        tun_name = a.tun_name
        outer = sorted({o for o, _ in paths})
        inner = sorted({i for _, i in paths})
        if hostconf.link_info(tun_name) is not None:
            raise hostconf.HostError("%s exists already; it is not ours to use (--tun-name)" % tun_name)
        for family in outer:
            nft_family = "ip" if family == 4 else "ip6"
            if hostconf.run(["nft", "list", "table", nft_family, NFT_TABLE], check=False):
                raise hostconf.HostError("nftables table %s %s exists already (is another lvs "
                                         "realserver running with another --state-file?)"
                                         % (nft_family, NFT_TABLE))
        self.changes.command(["ip", "tuntap", "add", "dev", tun_name, "mode", "tun"],
                             ["ip", "link", "del", "dev", tun_name],
                             "a persistent TUN device: decapsulated packets are written into it and "
                             "arrive as if received on it; persistent, so that its settings stay "
                             "until --down undoes them, even if this process is killed")
        from .ports import TunPort
        self.tun = TunPort(tun_name)     # attach now: a device nobody holds has no carrier
        conf6 = "net.ipv6.conf.%s." % tun_name
        if os.path.exists("/proc/sys/net/ipv6/conf/%s" % tun_name):
            if self.vips6:
                self.changes.sysctl(conf6 + "disable_ipv6", 0,
                                    "IPv6 on the TUN device: the IPv6 VIPs' packets arrive on it")
                self.changes.sysctl(conf6 + "addr_gen_mode", 1,
                                    "no link-local address: no router solicitations or DAD "
                                    "into a device nobody reads")
            else:
                self.changes.sysctl(conf6 + "disable_ipv6", 1,
                                    "no IPv6 autoconfiguration traffic into a device nobody reads")
        elif self.vips6:
            raise hostconf.HostError("IPv6 is not available here: no IPv6 VIP")
        if self.vips4:
            self._tunnel_device_v4(tun_name)
        self._add_vips(tun_name)
        self._link_up(tun_name, "bring the tunnel device up")
        if self.vips4:
            self._outside_arp()
        self._ipv6_notes(tun_name)
        for family in outer:
            self._guard(family, inner)
        from .ports import RawPort
        self.raw = RawPort(a.iface)      # before "ready": no tunnel packet may be missed after it
        return "tunnel real server for %s ready (userspace %s decapsulation on %s -> %s)" % (
            ", ".join(self.vips), a.encap, a.iface, tun_name)

    def _guard(self, family, inner):
        """nftables, input hook: the tunnel packets the kernel would answer itself (it has no
        module for them) dropped after our AF_PACKET socket has read them."""
        a = self.args
        nft_family, l4 = ("ip", "ip protocol") if family == 4 else ("ip6", "meta l4proto")
        if a.encap == "gue":
            match = "udp dport %d" % a.gue_port
            what = "UDP port %s (GUE): port unreachable" % a.gue_port
        else:
            protos = ([IPPROTO_GRE] if a.encap == "gre" else
                      [{4: IPPROTO_IPIP, 6: IPPROTO_IPV6}[i] for i in inner])
            match = "%s %s" % (l4, protos[0] if len(protos) == 1 else
                               "{ %s }" % ", ".join(str(p) for p in protos))
            names = {IPPROTO_IPIP: "4 (IPIP)", IPPROTO_IPV6: "41 (IPv6)", IPPROTO_GRE: "47 (GRE)"}
            what = "%s %s: %s" % ("protocol" if family == 4 else "next header",
                                  " and ".join(names[p] for p in protos),
                                  "protocol unreachable" if family == 4 else
                                  "parameter problem (unrecognized next header)")
        body = ("    chain input {\n"
                "        type filter hook input priority filter; policy accept;\n"
                '        iifname "%s" %s counter drop\n'
                "    }" % (a.iface, match))
        self.changes.nft_table(nft_family, NFT_TABLE, body,
                               "this process reads the tunnel packets from %s; the kernel, which "
                               "cannot decapsulate them, must not answer them with ICMP%s %s"
                               % (a.iface, "" if family == 4 else "v6", what))


# ---------------------------------------------------------------- the decapsulator's loop

def _addr_watch():
    """A netlink socket that becomes readable when an address changes (RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV6_IFADDR)."""
    try:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        s.bind((0, 0x10 | 0x100))
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
        dec = Decapsulator(args.encap, [addr_bytes(v) for v in args.vips],
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
                deadline = dec.next_deadline()
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
        if part.startswith("[") and part.endswith("]"):
            part = part[1:-1]            # [2001:db8::2], as lvsadm writes it
        try:
            addr = ipaddress.ip_address(part)
        except ValueError:
            raise ValueError("bad VIP address %r" % part)
        if _unusable(addr):
            raise ValueError("%s cannot be a VIP" % part)
        if str(addr) not in vips:
            vips.append(str(addr))
    return vips


def _unusable(addr):
    if addr.is_unspecified or addr.is_multicast or addr.is_loopback:
        return True
    if addr.version == 4:
        return int(addr) == 0xFFFFFFFF
    return addr.is_link_local or addr.ipv4_mapped is not None   # a link-local VIP has no route


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
        text = args.director
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        d = ipaddress.ip_address(text)   # ValueError: a bad address
        if _unusable(d) and not (d.version == 6 and d.is_link_local):
            raise ValueError("%s cannot be the director's address" % args.director)
        if d.version == 6 and d.is_link_local:
            raise ValueError("%s: give the director's global IPv6 address (a link-local one "
                             "needs an interface scope)" % args.director)
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
