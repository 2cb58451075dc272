"""The live director: the engine on real interfaces.

The engine answers "send this IPv4 packet towards that address"; this module
does what the kernel does around IPVS so that the answer reaches the wire:

  in    Ethernet frames from AF_PACKET ports. ARP requests for the VIPs of
        configured services are answered with the port's MAC (the kernel
        would answer them because the VIP is one of its addresses; here the
        host does not own the VIP, so nobody else will). IPv4 frames sent to
        our MAC that IPVS could care about (to a VIP, from a real server, ICMP)
        go to the engine. Echo requests to a VIP are answered, and a VIP port
        no service claims is refused (RST, or ICMP port unreachable for UDP),
        as the director's own stack does when it holds the VIP.
  out   route lookup, neighbour resolution (lvs/neigh.py), Ethernet framing.
  host  the host's own stack sees the same frames. An nftables table of
        ours drops, before conntrack, what the engine handles: everything
        addressed to a VIP (the host would otherwise answer, or forward it
        back to us through our own ARP answer), NAT real servers' replies and
        their ICMP errors (the host would otherwise forward them unrewritten
        or drop them noisily). Its sets follow lvsadm's changes.
"""

import ipaddress
import socket
import struct

from . import arp, hostconf
from . import fanout as fanout_mod
from .checksum import checksum, l4_checksum
from .flags import IP_VS_CONN_F_MASQ, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP
from .icmp import build_error, ipv4_header, is_icmp_error
from .neigh import Neighbours, Routes
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


def tcp_reset(packet, ihl, tot):
    """The RST a closed port answers with (tcp_v4_send_reset): to an ACK, with its
    ack number as our sequence; otherwise acknowledging what the segment held. As
    6.1's ip_send_unicast_reply sends it: the segment's TOS less its ECN bits, DF,
    and (DF, from an unconnected socket) IP ID 0."""
    th = ihl
    sport, dport, seq, ack = struct.unpack_from("!HHII", packet, th)
    flags = packet[th + 13]
    if flags & 0x10:
        rseq, rack, rflags = ack, 0, 0x04
    else:
        doff = (packet[th + 12] >> 4) << 2
        length = tot - ihl - doff + (1 if flags & 0x02 else 0) + (1 if flags & 0x01 else 0)
        rseq, rack, rflags = 0, (seq + length) & 0xFFFFFFFF, 0x14
    saddr, daddr = bytes(packet[16:20]), bytes(packet[12:16])
    tcp = bytearray(struct.pack("!HHIIBBHHH", dport, sport, rseq, rack, 0x50, rflags, 0, 0, 0))
    struct.pack_into("!H", tcp, 16, l4_checksum(saddr, daddr, IPPROTO_TCP, bytes(tcp)))
    return ipv4_header(packet[1] & 0xFC, 40, 0, 0x4000, IPPROTO_TCP, saddr, daddr) + bytes(tcp)


class Director:
    def __init__(self, engine, ifnames, changes, log, ring=True, fanout=False):
        self.engine = engine
        # --workers (lvs/fanout.py): ifname -> fanout group id, the program installed
        self.fanout = ({name: fanout_mod.group_id(i) for i, name in enumerate(ifnames)}
                       if fanout else None)
        self.fanout_program = None
        self.worker = False         # a forked worker: no host changes, no ARP answers
        self.vip_owner = True       # False on a standby director: the VIPs' ARP is another's
        self.ifnames = list(ifnames)
        self.changes = changes
        self.log = log
        self.ring = ring
        self.ports = []
        self.by_name = {}
        self.addrs = {}            # ifname -> [(addr, prefixlen)]
        self.routes = Routes(self.ifnames)
        self.neigh = Neighbours()
        self.vips = frozenset()
        self.dest_addrs = frozenset()
        self.all_to_engine = False  # fwmark services: any packet may be theirs
        self.nft_elements = (set(), set(), set())
        self.counters = {"arp_replies": 0, "echo_replies": 0, "to_engine": 0, "sent": 0,
                         "no_route": 0, "not_for_us": 0, "refused": 0}

    # ------------------------------------------------------------ setup

    def start(self, now):
        for name in self.ifnames:
            self.addrs[name] = [(a, plen) for a, plen, _ in hostconf.ipv4_addresses(name)]
            if not self.addrs[name]:
                raise hostconf.HostError("%s has no IPv4 address: the director needs one "
                                         "(source of its ARP requests and tunnels)" % name)
        for name in self.ifnames:
            self.changes.ethtool_off(name, OFFLOADS,
                                     "AF_PACKET must see frames as they were sent, not merged by "
                                     "GRO/LRO into packets bigger than the MTU")
        self.changes.nft_table("ip", NFT_TABLE, _NFT_BODY,
                               "the host does not own the VIPs: keep its stack from answering, "
                               "resetting or forwarding the packets pylvs handles")
        self._open_ports()
        for port in self.ports:
            self.log("lvs daemon: %s attached (AF_PACKET, %s, MAC %s%s)"
                     % (port.name, port.ring_mode, port.mac.hex(":"),
                        ", fanout group %d" % self.fanout[port.name] if self.fanout else ""))
        if self.engine.director_addr is None:
            # The kernel's tunnel source is the route's source address: ours.
            self.engine.director_addr = self.addrs[self.ifnames[0]][0][0]
        self.engine.mtu = min(hostconf.link_info(name).get("mtu", 1500) for name in self.ifnames)
        self.routes.load(now)
        self.sync()

    def _open_ports(self):
        for name in self.ifnames:
            if self.fanout is None:
                port = RawPort(name, ring=self.ring)
            else:
                # IPv4 through the group; ARP to every process, outside it.
                port = RawPort(name, ring=self.ring, protocol=ETH_P_IP, fanout=self.fanout[name])
                self.ports.append(RawPort(name, ring=False, protocol=ETH_P_ARP))
            self.ports.append(port)
            self.by_name[name] = port

    def become_worker(self):
        """In a forked worker: ports of its own in the same groups; the host
        changes and the ARP answers stay with the daemon."""
        for port in self.ports:
            port.close()             # the daemon's sockets: only our copies of them
        self.ports, self.by_name = [], {}
        self.changes = None
        self.worker = True
        self._open_ports()

    def close(self):
        for port in self.ports:
            port.close()
        self.ports = []

    # ------------------------------------------------------------ following lvsadm

    def sync(self):
        """Follow the engine's services: VIPs answered by ARP, the nft sets."""
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
        self.dest_addrs = frozenset(dests)
        self.all_to_engine = fwmark
        masq_elems = set()
        for proto, addr, port in masq:
            for p in ((proto,) if proto else (6, 17)):
                masq_elems.add("%s . %s . %d" % ({6: "tcp", 17: "udp"}[p], socket.inet_ntoa(addr), port))
        want = ({socket.inet_ntoa(a) for a in vips}, masq_elems,
                {socket.inet_ntoa(a) for _, a, _ in masq})
        script = []
        for name, have, new in zip(("vips", "masq", "masq_addrs"), self.nft_elements, want):
            gone, added = have - new, new - have
            if gone:
                script.append("delete element ip %s %s { %s }" % (NFT_TABLE, name, ", ".join(sorted(gone))))
            if added:
                script.append("add element ip %s %s { %s }" % (NFT_TABLE, name, ", ".join(sorted(added))))
        if self.worker:
            return  # the daemon keeps the host in step
        if script:
            hostconf.run(["nft", "-f", "-"], input="\n".join(script) + "\n")
            self.log("lvs daemon: nft: " + "; ".join(script))
        self.nft_elements = want
        if self.fanout is not None:
            self._program_groups({a for _, a, _ in masq})

    def _program_groups(self, nat_addrs):
        """The fanout groups' program follows the NAT real servers and persistence masks."""
        mask = 0xFFFFFFFF
        for svc in self.engine.services.values():
            if svc.persistent:
                mask &= svc.netmask
        if len(nat_addrs) > fanout_mod.MAX_NAT_ADDRS:
            self.log("lvs daemon: more than %d NAT real server addresses: replies from the rest "
                     "may reach another worker" % fanout_mod.MAX_NAT_ADDRS)
        prog = fanout_mod.client_hash_program(nat_addrs, mask)
        if prog != self.fanout_program:
            for name in self.ifnames:
                fanout_mod.set_program(self.by_name[name].sock, prog)
            self.fanout_program = prog

    def own_vips(self, own):
        """Answer ARP for the VIPs (a takeover: announced at once by gratuitous
        ARP, so that hosts on the segment send to us now) or leave them to another."""
        self.vip_owner = own
        if not own or self.worker:
            return 0
        sent = 0
        for port in self.by_name.values():   # with fanout, not the interfaces' ARP ports too
            for vip in sorted(self.vips):
                port.send(arp.request(port.mac, vip, vip))
                sent += 1
        self.counters["gratuitous_arp"] = self.counters.get("gratuitous_arp", 0) + sent
        self.log("lvs daemon: the VIPs are ours (%d gratuitous ARP sent)" % sent)
        return sent

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
            if ethertype != arp.ETH_P_IP or frame[0:6] != mine:
                continue  # ip_vs_in: only PACKET_HOST frames; IPv6 is not ours yet
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
        self.send(engine.receive_batch(batch, now, unclaimed), now)
        vips = self.vips
        for packet in unclaimed:
            if packet[16:20] in vips:
                self._refuse(packet, now)

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
        route = self.routes.lookup(bytes(nexthop), now)
        if route is None:
            self.counters["no_route"] += 1
            return
        ifname, onlink = route
        port = self.by_name[ifname]
        body = b"\x08\x00" + bytes(packet)
        mac = self.neigh.lookup(onlink, ifname, now)
        if mac is None:
            self.neigh.queue(onlink, ifname, body, now)
            self.timers(now)
            return
        self._emit(port, mac, body)

    def _emit(self, port, mac, body):
        if port.send(mac + port.mac + body):
            self.counters["sent"] += 1

    def _source_for(self, ifname, target):
        """The address our ARP request names as sender: one on the target's subnet if we have it."""
        addrs = self.addrs[ifname]
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

    def next_deadline(self):
        return self.neigh.next_deadline()

    def stats(self):
        out = dict(self.counters)
        out["neigh_failed"] = self.neigh.failed
        out["vip_owner"] = int(self.vip_owner)
        for port in self.ports:
            name = port.name + ("_arp" if port.protocol == ETH_P_ARP else "")
            for k, v in port.counters.items():
                out["%s_%s" % (name, k)] = v
            out["%s_rx_ring_drops" % name] = port.ring_drops()
        return out
