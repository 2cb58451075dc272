"""The live director: the engine on real interfaces.

The engine answers "send this IPv4 or IPv6 packet towards that address"; this
module does what the kernel does around IPVS so that the answer reaches the wire:

  in    Ethernet frames from AF_PACKET ports. ARP requests for the IPv4 VIPs
        of configured services, and Neighbour Solicitations for the IPv6 ones
        (lvs/ndp.py), are answered with the port's MAC (the kernel would
        answer them because the VIP is one of its addresses; here the host
        does not own the VIP, so nobody else will); the VIPs' solicited-node
        multicast groups are joined so that the solicitations reach us. IPv4
        and IPv6 frames sent to our MAC that IPVS could care about (to a VIP,
        from a real server, ICMP/ICMPv6 errors) go to the engine. Echo
        requests to a VIP are answered, and a VIP port no service claims is
        refused (RST, or ICMP/ICMPv6 port unreachable for UDP), as the
        director's own stack does when it holds the VIP.
  out   route lookup, neighbour resolution by ARP or NDP (lvs/neigh.py),
        Ethernet framing.
  host  the host's own stack sees the same frames. nftables tables of
        ours (ip and ip6) drop, before conntrack, what the engine handles:
        everything addressed to a VIP (the host would otherwise answer, or
        forward it back to us through our own ARP/NA answer, with a
        redirect), NAT real servers' replies and their ICMP errors (the host
        would otherwise forward them unrewritten or drop them noisily). Their
        sets follow lvsadm's changes.
  load  established connections first: each batch's fast-path packets are
        handled and sent before the general path works through the rest
        (lvs/fastpath.py, run's defer). While more than half the receive ring
        waits, the general path cannot keep up and the kernel is about to drop
        frames blindly, established ones too: then new connections' SYNs are
        shed (counted shed_syn; their clients send them again) and the rest is
        served. PYLVS_ESTABLISHED_FIRST=0 handles batches in arrival order,
        =order orders them without shedding.
"""

import ipaddress
import os
import socket
import struct

from . import arp, hostconf, ndp
from . import fanout as fanout_mod
from .checksum import checksum
from .director6 import ALL_NODES_MAC, ETH_P_IPV6, Director6
from .flags import IP_VS_CONN_F_MASQ, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP
from .icmp import build_error, ipv4_header, is_icmp_error
from .neigh import HostNeigh6, Neighbours, Routes, ipv6_addresses
from .proto_tcp import reset_segment
from .ports import RawPort
from .ports.raw import ETH_P_ARP, ETH_P_IP


NFT_TABLE = "pylvs"
BATCH = 64
OFFLOADS = (("gro", "generic-receive-offload"), ("lro", "large-receive-offload"),
            ("rx-gro-hw", "rx-gro-hw"))

_NFT_BODY = """\
    set vips { type ipv4_addr; }
    set masq { type inet_proto . ipv4_addr . inet_service; }
    set masq_addrs { type ipv4_addr; }
    chain prerouting {
        type filter hook prerouting priority raw - 10; policy accept;
        ip daddr @vips drop
        meta l4proto { tcp, udp } meta l4proto . ip saddr . th sport @masq drop
        ip saddr @masq_addrs icmp type { destination-unreachable, source-quench, redirect, time-exceeded, parameter-problem } drop
    }"""

# The same for IPv6, in a table of its own family (the sets have the same names).
_NFT6_BODY = """\
    set vips { type ipv6_addr; }
    set masq { type inet_proto . ipv6_addr . inet_service; }
    set masq_addrs { type ipv6_addr; }
    chain prerouting {
        type filter hook prerouting priority raw - 10; policy accept;
        ip6 daddr @vips drop
        meta l4proto { tcp, udp } meta l4proto . ip6 saddr . th sport @masq drop
        ip6 saddr @masq_addrs icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem } drop
    }"""


def tcp_reset(packet, ihl, tot):
    """The RST a closed port answers with (tcp_v4_send_reset, proto_tcp.reset_segment).
    As 6.1's ip_send_unicast_reply sends it: the segment's TOS less its ECN bits, DF,
    and (DF, from an unconnected socket) IP ID 0."""
    saddr, daddr = bytes(packet[16:20]), bytes(packet[12:16])
    tcp = reset_segment(packet, ihl, tot, saddr, daddr)
    return ipv4_header(packet[1] & 0xFC, 40, 0, 0x4000, IPPROTO_TCP, saddr, daddr) + tcp


class Director(Director6):
    def __init__(self, engine, ifnames, changes, log, ring=True, fanout=False):
        self.engine = engine
        # --workers (lvs/fanout.py): ifname -> its fanout group ids (IPv4, IPv6), the
        # programs installed, and the IPv6 group's port of each interface
        self.fanout = ({name: (fanout_mod.group_id(i, 4), fanout_mod.group_id(i, 6))
                        for i, name in enumerate(ifnames)} if fanout else None)
        self.fanout_program = None
        self.fanout_program6 = None
        self.by_name6 = {}
        self.worker = False         # a forked worker: no host changes, no ARP answers
        self.vip_owner = True       # False on a standby director: the VIPs' ARP/NDP is another's
        self.ifnames = list(ifnames)
        self.changes = changes
        self.log = log
        self.ring = ring
        self.ports = []
        self.by_name = {}
        self.addrs = {}            # ifname -> [(addr, prefixlen)]
        self.addrs6 = {}           # ifname -> [(addr, prefixlen, scope)]
        self.addrs6_read = {}      # ifname -> when addrs6 was last read (a miss rereads it)
        self.routes = Routes(self.ifnames)
        self.routes6 = Routes(self.ifnames, family=6)
        self.neigh = Neighbours()
        self.neigh6 = Neighbours(host_table=HostNeigh6())
        self.vips = frozenset()     # both families: 4-byte and 16-byte addresses
        self.vips6 = frozenset()
        self.dest_addrs = frozenset()
        self.all_to_engine = False  # fwmark services: any packet may be theirs
        self.nft_elements = (set(), set(), set())
        self.nft6_elements = (set(), set(), set())
        self.mcast6 = None          # ifname -> AF_INET6 socket holding the VIPs' solicited-node groups
        self.groups = {}            # ifname -> {group: "ip" | "packet"}, as joined
        self._logged = set()        # one-time log lines already said
        self.counters = {"arp_replies": 0, "echo_replies": 0, "to_engine": 0, "sent": 0,
                         "no_route": 0, "not_for_us": 0, "refused": 0,
                         "na_replies": 0, "ns_sent": 0, "ndp_invalid": 0,
                         "deferred": 0, "shed_syn": 0}
        # Each batch's fast-path packets are handled and sent before its general-path
        # ones (PYLVS_ESTABLISHED_FIRST=0: strictly in arrival order, as the engine's
        # receive_batch does).
        # And while more than half the receive ring waits (the general path cannot keep
        # up: the kernel is about to drop frames blindly, established ones too), new
        # connections' SYNs are shed, counted "shed_syn" (=order: ordering only).
        mode = os.environ.get("PYLVS_ESTABLISHED_FIRST", "1")
        self.established_first = mode != "0"
        self.shed = mode == "1"

    # ------------------------------------------------------------ setup

    def start(self, now):
        for name in self.ifnames:
            self.addrs[name] = [(a, plen) for a, plen, _ in hostconf.ipv4_addresses(name)]
            self.addrs6[name] = ipv6_addresses(name)
            self.addrs6_read[name] = now
            if not self.addrs[name] and not self.addrs6[name]:
                raise hostconf.HostError("%s has no IPv4 or IPv6 address: the director needs one "
                                         "(source of its ARP requests, neighbour solicitations "
                                         "and tunnels)" % name)
            if not self.addrs[name]:
                self._log_once(("no4", name), "lvs daemon: %s has no IPv4 address: IPv4 has no source "
                               "there (ARP requests from 0.0.0.0)" % name)
            if not self.addrs6[name]:
                self._log_once(("no6", name), "lvs daemon: %s has no IPv6 address: IPv6 has no source "
                               "there (no neighbour solicitations)" % name)
        for name in self.ifnames:
            self.changes.ethtool_off(name, OFFLOADS,
                                     "AF_PACKET must see frames as they were sent, not merged by "
                                     "GRO/LRO into packets bigger than the MTU")
        self.changes.nft_table("ip", NFT_TABLE, _NFT_BODY,
                               "the host does not own the VIPs: keep its stack from answering, "
                               "resetting or forwarding the packets pylvs handles")
        self.changes.nft_table("ip6", NFT_TABLE, _NFT6_BODY,
                               "the same for IPv6: the host must not answer, reset or forward "
                               "(nor send redirects for) what pylvs handles")
        self._open_ports()
        self.mcast6 = {}
        for port in self.ports:
            self.log("lvs daemon: %s attached (AF_PACKET, %s, MAC %s%s)"
                     % (port.name, port.ring_mode, port.mac.hex(":"),
                        ", fanout groups %d and %d" % self.fanout[port.name] if self.fanout else ""))
        first = self.ifnames[0]
        if self.engine.director_addr is None and self.addrs[first]:
            # The kernel's tunnel source is the route's source address: ours.
            self.engine.director_addr = self.addrs[first][0][0]
        if self.engine.director_addr6 is None:
            for addr, _, scope in self.addrs6[first]:
                if scope == "global":
                    self.engine.director_addr6 = addr
                    break
        self.engine.mtu = min(hostconf.link_info(name).get("mtu", 1500) for name in self.ifnames)
        self.routes.load(now)
        self.routes6.load(now)
        self.sync()

    def _open_ports(self):
        for name in self.ifnames:
            if self.fanout is None:
                port = RawPort(name, ring=self.ring)
            else:
                # IPv4 and IPv6 through their groups; ARP and Neighbour Discovery to every
                # process, outside them (ND arrives in the IPv6 group too: ignored there).
                group4, group6 = self.fanout[name]
                port = RawPort(name, ring=self.ring, protocol=ETH_P_IP, fanout=group4)
                port6 = RawPort(name, ring=self.ring, protocol=ETH_P_IPV6, fanout=group6)
                nd = RawPort(name, ring=False, protocol=ETH_P_IPV6, bpf=fanout_mod.nd_filter())
                nd.nd_only = True
                self.ports += [RawPort(name, ring=False, protocol=ETH_P_ARP), nd, port6]
                self.by_name6[name] = port6
            self.ports.append(port)
            self.by_name[name] = port

    def become_worker(self):
        """In a forked worker: ports of its own in the same groups; the host
        changes and the ARP answers stay with the daemon."""
        for port in self.ports:
            port.close()             # the daemon's sockets: only our copies of them
        self.ports, self.by_name, self.by_name6 = [], {}, {}
        self._close_groups()
        self.changes = None
        self.worker = True
        self._open_ports()

    def close(self):
        for port in self.ports:
            port.close()
        self.ports = []
        self._close_groups()

    def _log_once(self, key, text):
        if key not in self._logged:
            self._logged.add(key)
            self.log(text)

    # ------------------------------------------------------------ following lvsadm

    def sync(self):
        """Follow the engine's services: VIPs answered by ARP and NDP, the nft sets."""
        engine = self.engine
        vips, masq = set(), set()
        dests = set()
        fwmark = False
        for svc in engine.services.values():
            if svc.fwmark:
                fwmark = True
            else:
                vips.add(svc.addr)
            for dest in svc.destinations:
                dests.add(dest.addr)
                if dest.fwd == IP_VS_CONN_F_MASQ:
                    masq.add((svc.protocol if not svc.fwmark else 0, dest.addr, dest.port))
        for dest in engine.trash:
            dests.add(dest.addr)
            if dest.fwd == IP_VS_CONN_F_MASQ:
                masq.add((dest.svc.protocol if not dest.svc.fwmark else 0, dest.addr, dest.port))
        self.vips = frozenset(vips)
        self.vips6 = frozenset(a for a in vips if len(a) == 16)
        self.dest_addrs = frozenset(dests)
        self.all_to_engine = fwmark
        script = []
        want4 = self._nft_want([(p, a, port) for p, a, port in masq if len(a) == 4],
                               [a for a in vips if len(a) == 4], socket.AF_INET)
        want6 = self._nft_want([(p, a, port) for p, a, port in masq if len(a) == 16],
                               self.vips6, socket.AF_INET6)
        self._nft_script(script, "ip", self.nft_elements, want4)
        self._nft_script(script, "ip6", self.nft6_elements, want6)
        if self.worker:
            return  # the daemon keeps the host in step
        if script:
            hostconf.run(["nft", "-f", "-"], input="\n".join(script) + "\n")
            self.log("lvs daemon: nft: " + "; ".join(script))
        self.nft_elements, self.nft6_elements = want4, want6
        self._follow_groups()
        self._check_vips6()
        if self.fanout is not None:
            self._program_groups({a for _, a, _ in masq if len(a) == 4},
                                 {a for _, a, _ in masq if len(a) == 16})

    @staticmethod
    def _nft_want(masq, vips, family):
        ntop = lambda a: socket.inet_ntop(family, a)
        masq_elems = set()
        for proto, addr, port in masq:
            for p in ((proto,) if proto else (6, 17)):
                masq_elems.add("%s . %s . %d" % ({6: "tcp", 17: "udp"}[p], ntop(addr), port))
        return ({ntop(a) for a in vips}, masq_elems, {ntop(a) for _, a, _ in masq})

    @staticmethod
    def _nft_script(script, family, have_sets, want):
        for name, have, new in zip(("vips", "masq", "masq_addrs"), have_sets, want):
            gone, added = have - new, new - have
            if gone:
                script.append("delete element %s %s %s { %s }" % (family, NFT_TABLE, name, ", ".join(sorted(gone))))
            if added:
                script.append("add element %s %s %s { %s }" % (family, NFT_TABLE, name, ", ".join(sorted(added))))

    def _program_groups(self, nat_addrs, nat_addrs6):
        """The fanout groups' programs follow the NAT real servers and persistence masks."""
        mask, prefix = 0xFFFFFFFF, 128
        for svc in self.engine.services.values():
            if svc.persistent:
                if len(svc.addr) == 4:
                    mask &= svc.netmask
                else:
                    prefix = min(prefix, svc.netmask)
        for addrs, most in ((nat_addrs, fanout_mod.MAX_NAT_ADDRS), (nat_addrs6, fanout_mod.MAX_NAT_ADDRS6)):
            if len(addrs) > most:
                self.log("lvs daemon: more than %d NAT real server addresses of a family: replies "
                         "from the rest may reach another worker" % most)
        prog = fanout_mod.client_hash_program(nat_addrs, mask)
        if prog != self.fanout_program:
            for name in self.ifnames:
                fanout_mod.set_program(self.by_name[name].sock, prog)
            self.fanout_program = prog
        prog = fanout_mod.client_hash_program6(nat_addrs6, prefix)
        if prog != self.fanout_program6:
            for name in self.ifnames:
                fanout_mod.set_program(self.by_name6[name].sock, prog)
            self.fanout_program6 = prog

    def own_vips(self, own):
        """Answer ARP and NDP for the VIPs (a takeover: announced at once by gratuitous
        ARP and unsolicited NA, so that hosts on the segment send to us now) or leave
        them to another."""
        self.vip_owner = own
        if not own or self.worker:
            return 0
        garp = una = 0
        for port in self.by_name.values():   # with fanout, not the interfaces' ARP ports too
            for vip in sorted(self.vips):
                if len(vip) == 4:
                    port.send(arp.request(port.mac, vip, vip))
                    garp += 1
                else:
                    # ndisc_send_unsol_na: to all nodes, Override, the target's address.
                    na = ndp.advertisement(port.mac, vip, ndp.ALL_NODES, vip, router=True,
                                           solicited=False, override=True)
                    port.send(ndp.frame(ALL_NODES_MAC, port.mac, na))
                    una += 1
        self.counters["gratuitous_arp"] = self.counters.get("gratuitous_arp", 0) + garp
        self.counters["unsolicited_na"] = self.counters.get("unsolicited_na", 0) + una
        self.log("lvs daemon: the VIPs are ours (%d gratuitous ARP, %d unsolicited NA sent)" % (garp, una))
        return garp + una

    # ------------------------------------------------------------ packets in

    def receive(self, port, frames, now):
        """Handle a batch of frames from `port`: the engine gets its packets as one
        batch (lvs/fastpath.py), the rest is answered here."""
        engine = self.engine
        mine = port.mac
        counters = self.counters
        batch = []
        for frame in frames:
            if len(frame) < 34:
                continue
            ethertype = (frame[12] << 8) | frame[13]
            if ethertype == arp.ETH_P_ARP:
                self._arp(port, frame, now)
                continue
            if ethertype == ETH_P_IPV6:
                self._receive6(port, frame, batch, now)
                continue
            if ethertype != arp.ETH_P_IP or frame[0:6] != mine:
                continue  # ip_vs_in: only PACKET_HOST frames
            packet = frame[14:]
            to_vip = packet[16:20] in self.vips
            if not (to_vip or self.all_to_engine or packet[12:16] in self.dest_addrs
                    or is_icmp_error(packet, (packet[0] & 15) << 2)):
                counters["not_for_us"] += 1
                continue  # the host's own traffic
            if to_vip and packet[9] == IPPROTO_ICMP and self._echo(packet, now):
                continue
            batch.append(packet)
        if not batch:
            return
        counters["to_engine"] += len(batch)
        unclaimed = []
        fast = engine.fast
        if self.established_first and fast is not None:
            # Established connections first: the fast path's answers go out before
            # the general path (new connections, state changes) works through the
            # rest of the batch; each flow keeps its order (FastPath.run's defer).
            later = []
            self.send(fast.run(batch, now, unclaimed, defer=later), now)
            if later and self.shed and port.backlogged():
                later = self._shed(later)
            if later:
                counters["deferred"] += len(later)
                self.send(engine.receive_batch(later, now, unclaimed), now)
        else:
            self.send(engine.receive_batch(batch, now, unclaimed), now)
        vips = self.vips
        for packet in unclaimed:
            if packet[0] >> 4 == 6:
                if packet[24:40] in vips:
                    self._refuse6(packet, now)
            elif packet[16:20] in vips:
                self._refuse(packet, now)

    def _shed(self, packets):
        """Overload: drop the TCP SYNs (no ACK) among the general path's packets, IPv4
        without options and IPv6 without extension headers, as the wire would have lost
        them (the clients send them again)."""
        kept = [p for p in packets if not (
            (p[0] == 0x45 and p[9] == IPPROTO_TCP and len(p) >= 40 and p[33] & 0x12 == 0x02)
            or (p[0] >> 4 == 6 and p[6] == IPPROTO_TCP and len(p) >= 60 and p[53] & 0x12 == 0x02))]
        self.counters["shed_syn"] += len(packets) - len(kept)
        return kept

    def _arp(self, port, frame, now):
        parsed = arp.parse(frame)
        if parsed is None:
            return
        op, sha, spa, tpa = parsed
        if spa == b"\0\0\0\0":
            return  # an address probe (RFC 5227): nothing to learn, nothing to answer
        for_us = op == arp.ARPOP_REQUEST and tpa in self.vips and self.vip_owner
        for body in self.neigh.learn(spa, sha, port.name, now, create=for_us):
            self._emit(port, sha, body)
        if for_us and not self.worker:
            port.send(arp.reply(port.mac, tpa, sha, spa))
            self.counters["arp_replies"] += 1

    def _echo(self, packet, now):
        """An echo request to a VIP: answered from the VIP, as the director's stack would
        (icmp_reply: the request's TOS; the ICMP socket does no PMTU discovery, so no DF
        and an IP ID from the per-destination counters)."""
        ihl = (packet[0] & 15) << 2
        tot = (packet[2] << 8) | packet[3]
        if tot > len(packet) or tot < ihl + 8 or packet[ihl] != 8 or (packet[6] & 0x3F) or packet[7]:
            return False
        if checksum(packet[:ihl]) or checksum(packet[ihl:tot]):
            return False
        icmp = bytearray(packet[ihl:tot])
        icmp[0] = 0
        icmp[2:4] = b"\0\0"
        struct.pack_into("!H", icmp, 2, checksum(icmp))
        vip, client = bytes(packet[16:20]), bytes(packet[12:16])
        header = ipv4_header(packet[1], 20 + len(icmp), self.engine.ip_ident(vip, client, IPPROTO_ICMP),
                             0, IPPROTO_ICMP, vip, client)
        self._output(packet[12:16], header + bytes(icmp), now)
        self.counters["echo_replies"] += 1
        return True

    def _refuse(self, packet, now):
        """A VIP port no service claims: answered as the director's own stack answers
        a closed port of one of its addresses (tcp_v4_send_reset, or ICMP port
        unreachable for UDP), since on the kernel's director the VIP is local."""
        ihl = (packet[0] & 15) << 2
        tot = (packet[2] << 8) | packet[3]
        if tot > len(packet) or ((packet[6] << 8) | packet[7]) & 0x3FFF:
            return  # fragments: the reassembled datagram was the one refused
        vip, client = bytes(packet[16:20]), bytes(packet[12:16])
        if packet[9] == IPPROTO_UDP and self.engine._icmp_allow(client, 3, 3):
            ident = self.engine.ip_ident(vip, client, IPPROTO_ICMP)
            reply = build_error(packet[:tot], 3, 3, 0, vip, ident)
        elif packet[9] == IPPROTO_TCP and tot - ihl >= 20 and not packet[ihl + 13] & 0x04:
            reply = tcp_reset(packet, ihl, tot)
        else:
            return
        if reply is not None:
            self._output(packet[12:16], reply, now)
            self.counters["refused"] += 1

    # ------------------------------------------------------------ packets out

    def send(self, transmits, now):
        for tx in transmits:
            self._output(tx.nexthop, tx.packet, now)

    def _output(self, nexthop, packet, now):
        nexthop = bytes(nexthop)
        if len(nexthop) == 16:
            routes, neigh = self.routes6, self.neigh6
        else:
            routes, neigh = self.routes, self.neigh
        route = routes.lookup(nexthop, now)
        if route is None:
            self.counters["no_route"] += 1
            return
        ifname, onlink = route
        body = (b"\x86\xdd" if packet[0] >> 4 == 6 else b"\x08\x00") + bytes(packet)
        self._to_neighbour(self.by_name[ifname], neigh, onlink, body, now)

    def _to_neighbour(self, port, neigh, onlink, body, now):
        mac = neigh.lookup(onlink, port.name, now)
        if mac is None:
            neigh.queue(onlink, port.name, body, now)
            self.timers(now)
            return
        self._emit(port, mac, body)

    def _emit(self, port, mac, body):
        if port.send(mac + port.mac + body):
            self.counters["sent"] += 1

    def _source_for(self, ifname, target):
        """The address our ARP request names as sender: one on the target's subnet if we have it."""
        addrs = self.addrs.get(ifname)
        if not addrs:
            return b"\0\0\0\0"   # no IPv4 address here (said at start): arp_solicit's 0.0.0.0
        t = ipaddress.IPv4Address(target)
        for addr, plen in addrs:
            if t in ipaddress.IPv4Network((addr, plen), strict=False):
                return addr
        return addrs[0][0]

    # ------------------------------------------------------------ timers

    def timers(self, now):
        for addr, ifname in self.neigh.due(now):
            port = self.by_name[ifname]
            port.send(arp.request(port.mac, self._source_for(ifname, addr), addr))
        for addr, ifname in self.neigh6.due(now):
            port = self.by_name[ifname]
            src = self._source6_for(ifname, now)
            if src is None:
                continue
            known = self.neigh6.entries.get(addr)
            if known is not None:
                # Re-confirming a known entry (PROBE): a unicast solicitation to it.
                packet = ndp.solicitation(port.mac, src, addr, daddr=addr)
                port.send(ndp.frame(known[0], port.mac, packet))
            else:
                group = ndp.solicited_node(addr)
                port.send(ndp.frame(ndp.multicast_mac(group), port.mac, ndp.solicitation(port.mac, src, addr)))
            self.counters["ns_sent"] += 1

    def next_deadline(self):
        deadlines = [d for d in (self.neigh.next_deadline(), self.neigh6.next_deadline()) if d is not None]
        return min(deadlines) if deadlines else None

    def stats(self):
        out = dict(self.counters)
        if self.engine.fast is not None:
            out["fastpath_hits"] = self.engine.fast.hits
        out["neigh_failed"] = self.neigh.failed + self.neigh6.failed
        out["neigh_table_fulls"] = self.neigh.table_fulls + self.neigh6.table_fulls
        out["vip_owner"] = int(self.vip_owner)
        for port in self.ports:
            name = port.name + ("_arp" if port.protocol == ETH_P_ARP else
                                "_nd" if getattr(port, "nd_only", False) else
                                "_v6" if port.protocol == ETH_P_IPV6 else "")
            for k, v in port.counters.items():
                out["%s_%s" % (name, k)] = v
            out["%s_rx_ring_drops" % name] = port.ring_drops()
            if getattr(port, "ring", None) is not None:
                out["%s_rx_ring_waiting" % name], out["%s_rx_ring_gap" % name] = port.ring_waiting()
        return out
