"""The live director's IPv6 half (a mixin of lvs/director.py's Director).

What the kernel's IPv6 stack does around IPVS on a director: Neighbour
Solicitations for the IPv6 VIPs answered as ndisc_recv_ns answers them for a
local address (lvs/ndp.py), the VIPs' solicited-node groups joined so that the
solicitations reach us, DAD probes and rival claims noticed, echo requests to a
VIP answered, a VIP port no service claims refused (tcp_v6_send_reset, ICMPv6
port unreachable), and the source of our own solicitations.
"""

import ipaddress
import socket
import struct

from . import hostconf, ipv6, ndp
from .checksum import l4_checksum
from .flags import IPPROTO_TCP, IPPROTO_UDP
from .icmp6 import ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH, build_error6
from .icmp_send import ICMPV6_RATELIMIT
from .neigh import ROUTE_RELOAD, ipv6_addresses
from .proto_tcp import reset_segment

ETH_P_IPV6 = ndp.ETH_P_IPV6
IPV6_JOIN_GROUP, IPV6_LEAVE_GROUP = 20, 21
ALL_NODES_MAC = ndp.multicast_mac(ndp.ALL_NODES)


def tcp_reset6(packet, th, end, flowlabel):
    """tcp_v6_send_reset for a segment at `th` of an IPv6 packet ending at `end`
    (proto_tcp.reset_segment); hop limit 64, the segment's traffic class less its ECN
    bits, a flow label of the flow's hash (auto_flowlabels; `flowlabel` is ours)."""
    saddr, daddr = bytes(packet[24:40]), bytes(packet[8:24])
    tcp = reset_segment(packet, th, end, saddr, daddr)
    tclass = (((packet[0] & 0x0F) << 4) | (packet[1] >> 4)) & 0xFC
    return ipv6.header(tclass << 20 | flowlabel, 20, IPPROTO_TCP, ipv6.HOP_LIMIT, saddr, daddr) + tcp


def _icmp6_error(packet):
    """An ICMPv6 error (type below 128), its header found past any extension headers."""
    if packet[6] == ipv6.NEXTHDR_ICMP:
        return len(packet) > 40 and packet[40] < 128
    if packet[6] not in ipv6.EXT_HEADERS:
        return False
    h = ipv6.find_hdr(packet)
    return (h is not None and h.protocol == ipv6.NEXTHDR_ICMP and not h.fragoffs
            and h.offset < len(packet) and packet[h.offset] < 128)


class Director6:
    """Director's IPv6 receive, NDP, echo and refusals."""

    def _check_vips6(self):
        """The host must not answer solicitations for the VIPs itself. ndisc_recv_ns answers
        for the interface's own addresses, its anycast ones (the subnet-router anycast
        address of each prefix, once forwarding is on) and, with proxy_ndp, its proxy
        entries; none of them is a VIP unless someone made it one. Said once per VIP and
        cause; nothing is changed."""
        if not self.vips6:
            return
        proxy = None
        for name in self.ifnames:
            try:
                forwarding = hostconf.read_sysctl("net.ipv6.conf.%s.forwarding" % name) == "1"
            except OSError:
                forwarding = False
            for vip in self.vips6:
                text = socket.inet_ntop(socket.AF_INET6, vip)
                for addr, plen, _ in self.addrs6.get(name, ()):
                    if addr == vip:
                        why = "is an address of %s" % name
                    elif forwarding and plen < 127 and \
                            ipaddress.IPv6Network((addr, plen), strict=False).network_address.packed == vip:
                        why = "is the subnet-router anycast address of %s's prefix" % name
                    else:
                        continue
                    self._log_once(("own6", vip, name), "lvs daemon: VIP %s %s: the host answers its "
                                   "neighbour solicitations too" % (text, why))
            try:
                on = any(hostconf.read_sysctl("net.ipv6.conf.%s.proxy_ndp" % n) == "1" for n in ("all", name))
            except OSError:
                on = False
            if on:
                if proxy is None:
                    try:
                        proxy = {e.get("dst") for e in hostconf.ip_json("-6", "neigh", "show", "proxy")}
                    except hostconf.HostError:
                        proxy = set()
                for vip in self.vips6:
                    text = socket.inet_ntop(socket.AF_INET6, vip)
                    if text in proxy:
                        self._log_once(("proxy6", vip), "lvs daemon: VIP %s has a proxy neighbour entry "
                                       "(proxy_ndp): the host answers its solicitations too" % text)

    def _follow_groups(self):
        """Join the solicited-node multicast group of every IPv6 VIP on each interface, so that
        solicitations reach us through the NIC's filter (and MLD snooping switches: the host's
        stack reports the groups). A socket of ours holds them (IPV6_JOIN_GROUP); where the
        interface has no IPv6 the AF_PACKET socket's membership stands in. Both end with the
        sockets: nothing to undo."""
        if self.mcast6 is None:
            return  # not started (tests): no sockets
        want = {ndp.solicited_node(v) for v in self.vips6}
        for name in self.ifnames:
            have = self.groups.setdefault(name, {})
            port = self.by_name.get(name)
            for group in sorted(set(have) - want):
                self._group(name, port, group, have.pop(group), join=False)
            for group in sorted(want - set(have)):
                how = self._group(name, port, group, None, join=True)
                if how:
                    have[group] = how

    def _group(self, name, port, group, how, join):
        if how != "packet":
            try:
                sock = self.mcast6.get(name)
                if sock is None:
                    sock = self.mcast6[name] = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
                mreq = group + struct.pack("@I", port.ifindex)
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_JOIN_GROUP if join else IPV6_LEAVE_GROUP, mreq)
                return "ip"
            except (OSError, AttributeError):
                if not join:
                    return None
        try:
            port.membership(ndp.multicast_mac(group), join)
            return "packet"
        except (OSError, AttributeError) as e:
            self._log_once(("group", name), "lvs daemon: %s: cannot join the VIPs' solicited-node "
                           "groups (%s): solicitations may not reach us" % (name, e))
            return None

    def _close_groups(self):
        for sock in (self.mcast6 or {}).values():
            sock.close()
        if self.mcast6 is not None:
            self.mcast6 = {}
        self.groups = {}

    def _receive6(self, port, frame, batch, now):
        """An IPv6 frame: Neighbour Discovery is ours whatever its MAC (unicast to us, the
        VIPs' solicited-node groups, all nodes); the rest only when sent to our MAC."""
        packet = frame[14:]
        if len(packet) < 40 or packet[0] >> 4 != 6:
            return
        if ndp.is_ndp(packet):
            if self.fanout is None or getattr(port, "nd_only", False):
                self._ndp(port, frame, packet, now)
            return      # with --workers, ND is read on the socket every process has
        if frame[0:6] != port.mac:
            return  # multicast: not IPVS's (ip_vs_in takes PACKET_HOST frames only)
        to_vip = packet[24:40] in self.vips6
        if not (to_vip or self.all_to_engine or packet[8:24] in self.dest_addrs or _icmp6_error(packet)):
            self.counters["not_for_us"] += 1
            return  # the host's own traffic
        if to_vip and packet[6] == ipv6.NEXTHDR_ICMP and len(packet) > 40 \
                and packet[40] == ndp.ICMPV6_ECHO_REQUEST and self._echo6(packet, now):
            return
        batch.append(packet)

    def _ndp(self, port, frame, packet, now):
        msg, why = ndp.parse(packet)
        if msg is None:
            self.counters["ndp_invalid"] += 1
            self.counters[why] = self.counters.get(why, 0) + 1
            return
        if msg.type == ndp.NDISC_NEIGHBOUR_SOLICITATION:
            self._ns(port, frame, msg, now)
        else:
            self._na(port, frame, msg, now)

    def _ns(self, port, frame, msg, now):
        """ndisc_recv_ns, for the VIPs as if they were ours: the sender learnt (a new entry
        only when the solicitation is for a VIP we answer; for the rest, only entries we
        have or are waiting for), then a solicited NA from the VIP. For a multicast
        solicitation with Override and our link-layer address; for a unicast one (a
        reachability probe) neither; to a multicast one without the sender's address
        only if we know it already, as the kernel answers only with a neighbour entry."""
        target = msg.target
        if msg.src == ndp.UNSPECIFIED:
            # Duplicate address detection. The kernel, holding the VIP, would defend it; the
            # host does not hold it, so we stay out of the way and say so.
            if target in self.vips6:
                self._log_once(("dad", target, bytes(frame[6:12])),
                               "lvs daemon: %s (MAC %s) probes for VIP %s (duplicate address "
                               "detection): another host is claiming it; not answered"
                               % (port.name, bytes(frame[6:12]).hex(":"),
                                  socket.inet_ntop(socket.AF_INET6, target)))
            return
        ours = target in self.vips6 and self.vip_owner
        inc = ndp.is_multicast(msg.dst)
        if msg.lladdr is not None:
            for body in self.neigh6.learn(msg.src, msg.lladdr, port.name, now, create=ours):
                self._emit(port, msg.lladdr, body)
        if not ours or self.worker:
            return
        if inc and msg.lladdr is None and msg.src not in self.neigh6.entries:
            return  # __neigh_lookup(create=false) found nothing: no answer
        na = ndp.advertisement(port.mac, target, msg.src, target, router=True, solicited=True,
                               override=inc, tlla=inc)
        self._to_neighbour(port, self.neigh6, msg.src, b"\x86\xdd" + na, now)
        self.counters["na_replies"] += 1

    def _na(self, port, frame, msg, now):
        """ndisc_recv_na: an advertisement updates the entry of its target if we have one or
        wait for one (accept_untracked_na=0); without Override a known address stays; an
        advertisement without the target's address can only confirm."""
        target, lladdr = msg.target, msg.lladdr
        if target in self.vips6 and lladdr is not None and lladdr != port.mac:
            self._log_once(("na", target, lladdr),
                           "lvs daemon: %s: %s advertises VIP %s as its own"
                           % (port.name, lladdr.hex(":"), socket.inet_ntop(socket.AF_INET6, target)))
        neigh = self.neigh6
        entry = neigh.entries.get(target)
        solicited = msg.flags & ndp.NA_SOLICITED
        if lladdr is None:
            if entry is None or not solicited:
                return
            lladdr = entry[0]
        elif entry is not None and target not in neigh.pending:
            if entry[0] != lladdr and not msg.flags & ndp.NA_OVERRIDE:
                return      # ndisc_update without NEIGH_UPDATE_F_OVERRIDE: the known address stays
            if not solicited and entry[0] == lladdr:
                return      # unsolicited, nothing new: no confirmation either
        for body in neigh.learn(target, lladdr, port.name, now):
            self._emit(port, lladdr, body)

    def _echo6(self, packet, now):
        """An ICMPv6 echo request to a VIP (no extension headers, not a fragment): answered
        from the VIP as icmpv6_echo_reply does: the same identifier, sequence, code and
        data, the request's traffic class, hop limit 64, a flow label of the flow's hash
        (auto_flowlabels; ours is keyed by the engine's seed). Not rate limited
        (echo replies are outside icmpv6_ratemask)."""
        end = 40 + ((packet[4] << 8) | packet[5])
        if end > len(packet) or end < 48:
            return False
        vip, client = bytes(packet[24:40]), bytes(packet[8:24])
        if not ipv6.is_unicast(client):
            return False
        icmp = bytearray(packet[40:end])
        if l4_checksum(client, vip, ipv6.NEXTHDR_ICMP, bytes(icmp)):
            return False
        icmp[0] = ndp.ICMPV6_ECHO_REPLY
        icmp[2:4] = b"\0\0"
        struct.pack_into("!H", icmp, 2, l4_checksum(vip, client, ipv6.NEXTHDR_ICMP, bytes(icmp)))
        tclass = ((packet[0] & 0x0F) << 4) | (packet[1] >> 4)
        label = self.engine.flow_hash(vip + client + bytes((ipv6.NEXTHDR_ICMP, ndp.ICMPV6_ECHO_REPLY))) & 0xFFFFF
        reply = ipv6.header(tclass << 20 | label, len(icmp), ipv6.NEXTHDR_ICMP, ipv6.HOP_LIMIT, vip, client)
        self._output(client, reply + bytes(icmp), now)
        self.counters["echo_replies"] += 1
        return True

    def _refuse6(self, packet, now):
        """The same for IPv6: tcp_v6_send_reset, or icmp6_send's port unreachable from the
        VIP (rate limited as the engine limits its ICMPv6 errors)."""
        end = 40 + ((packet[4] << 8) | packet[5])
        if end > len(packet) or end == 40:
            return
        buf = bytes(packet[:end])
        h = ipv6.find_hdr(buf)
        if h is None or h.frag_at is not None:
            return  # fragments: the reassembled datagram was the one refused
        vip, client = buf[24:40], buf[8:24]
        if not ipv6.is_unicast(client):
            return
        engine = self.engine
        if h.protocol == IPPROTO_UDP:
            label = engine.flow_hash(vip + client + bytes((ipv6.NEXTHDR_ICMP, ICMPV6_DEST_UNREACH,
                                                           ICMPV6_PORT_UNREACH))) & 0xFFFFF
            reply = build_error6(buf, ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH, 0, vip, label)
            if reply is not None and not engine._icmp_allow(client, 3, 3, ICMPV6_RATELIMIT):
                engine.icmp_ratelimited += 1
                return
        elif h.protocol == IPPROTO_TCP and end - h.offset >= 20 and not buf[h.offset + 13] & 0x04:
            label = engine.flow_hash(vip + client + buf[h.offset:h.offset + 4] + b"\x06") & 0xFFFFF
            reply = tcp_reset6(buf, h.offset, end, label)
        else:
            return
        if reply is not None:
            self._output(client, reply, now)
            self.counters["refused"] += 1

    def _source6_for(self, ifname, now):
        """The source of our solicitations (ndisc_send_ns without a source: the link-local
        address), else a global one; the interface's addresses are reread (at most once
        a second) while it has none, e.g. until DAD is done."""
        addrs = self.addrs6.get(ifname) or ()
        if not addrs and now - self.addrs6_read.get(ifname, now - ROUTE_RELOAD) >= ROUTE_RELOAD:
            self.addrs6_read[ifname] = now
            addrs = self.addrs6[ifname] = ipv6_addresses(ifname)
        for addr, _, _ in addrs:
            if ndp.is_link_local(addr):
                return addr
        if addrs:
            return addrs[0][0]
        self._log_once(("no6src", ifname), "lvs daemon: %s has no IPv6 address: no neighbour "
                       "solicitations can be sent there" % ifname)
        return None
