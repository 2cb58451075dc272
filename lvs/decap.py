"""The real server's userspace tunnel decapsulation (what ipip, ip6_tunnel, sit,
fou/gue and ip_gre would do in the kernel), for hosts without those modules.

Pure: a frame or packet in, the inner packet or a drop reason out, so it is
tested without root. decap_frame/decap_packet take one packet; Decapsulator
keeps the reassembly queues and counters for `lvs realserver`'s loop
(lvs/realserver.py run_decapsulator). Both outer families carry either inner
one: ipip (protocol 4 or 41), GRE (0x0800 or 0x86DD), GUE (protocol byte 4 or
41, and version 1), with ECN decapsulation and GUE's remote checksum offload.
"""

import struct
from collections import Counter

from . import ipv6
from .checksum import checksum
from .defrag import Reassembled, Reassembler
from .defrag6 import Reassembled6, Reassembler6

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)
IP_MF_OFFSET = 0x3FFF
IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_UDP, IPPROTO_GRE = 4, 41, 17, 47
GRE_CSUM = 0x8000
GRE_MUST_BE_ZERO = 0x7C00     # RFC 2784: bits 1-5 (routing, key, sequence, strict route, recursion)
GRE_VERSION = 0x0007
GUE_FLAG_PRIV = 0x0001        # struct guehdr flags (include/net/gue.h), host order of the be16
GUE_PFLAG_REMCSUM = 0x80000000
INET_ECN_CE = 3
# What an encapsulating protocol says the inner packet is: ipip's protocol numbers (4 IPv4,
# 41 IPv6, in either outer family), GRE's EtherTypes, GUE's protocol byte.
INNER_BY_PROTO = {IPPROTO_IPIP: 4, IPPROTO_IPV6: 6}
INNER_BY_ETHERTYPE = {ETH_P_IP: 4, ETH_P_IPV6: 6}

# Reasons that mean "not a tunnel packet for us": left alone, not counted as drops.
IGNORED = frozenset(("not_ip", "not_local", "not_tunnel"))
QUEUED = "fragment_queued"    # a fragment held for reassembly: neither a drop nor a packet yet


def ip_of_frame(frame):
    """The IPv4 or IPv6 packet of an Ethernet frame, 802.1Q/802.1ad tags skipped; None if
    it carries neither."""
    off = 12
    while len(frame) >= off + 2:
        ethertype = (frame[off] << 8) | frame[off + 1]
        if ethertype == ETH_P_IP or ethertype == ETH_P_IPV6:
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
        return None, "not_ip"
    return decap_packet(packet, encap, local, vips, gue_port)


def decap_packet(packet, encap, local, vips, gue_port=None, reasm=None, now=0.0, reasm6=None):
    """Decapsulate one outer IPv4 or IPv6 packet: (inner packet, None) or (None, reason).

    `local` and `vips` are sets of addresses as bytes (4 for IPv4, 16 for IPv6): the
    outer destination must be one of ours, the inner one a VIP. Either family may ride
    in either: `encap` ipip takes protocol/next header 4 (IPv4 inside) and 41 (IPv6
    inside), gre the EtherTypes 0x0800 and 0x86DD, gue the protocol bytes 4 and 41.
    Outer fragments are dropped ("outer_fragment") unless a Reassembler (IPv4) or
    Reassembler6 (IPv6) is given; then they are queued and the datagram they complete
    is decapsulated. Never raises on malformed input.
    """
    if len(packet) >= 1 and packet[0] >> 4 == 6:
        return _decap6(packet, encap, local, vips, gue_port, reasm6, now)
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None, "outer_header"
    ihl = (packet[0] & 15) << 2
    if ihl < 20 or len(packet) < ihl:
        return None, "outer_header"
    if packet[16:20] not in local:
        return None, "not_local"
    proto = packet[9]
    if not _tunnel_proto(encap, proto):
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
    return _decap_payload(encap, proto, packet[ihl:], packet[12:20], packet[1], gue_port, vips)


def _tunnel_proto(encap, proto):
    if encap == "ipip":
        return proto in INNER_BY_PROTO
    return proto == (IPPROTO_GRE if encap == "gre" else IPPROTO_UDP)


def _decap6(packet, encap, local, vips, gue_port, reasm6, now):
    """The IPv6 outer header (ipv6_rcv's checks, the extension headers walked as
    ip6_input_finish does, fragments reassembled as ipv6_frag_rcv), then the tunnel."""
    if len(packet) < 40:
        return None, "outer_header"
    if packet[24:40] not in local:
        return None, "not_local"
    plen = (packet[4] << 8) | packet[5]
    if plen == 0 or 40 + plen > len(packet):   # 0: a jumbogram, which no tunnel sends
        return None, "outer_length"
    packet = packet[:40 + plen]                # Ethernet padding off
    if packet[6] == ipv6.NEXTHDR_HOP and ipv6.hop_options_verdict(packet) is not None:
        return None, "outer_header"
    found = ipv6.find_hdr(packet)
    if found is None:
        return None, "outer_header"
    if not _tunnel_proto(encap, found.protocol):
        # (a later fragment names the protocol in its Fragment header: found.protocol too)
        return None, "not_tunnel"
    if found.frag_at is not None:
        if reasm6 is None:
            return None, "outer_fragment"
        done = reasm6.add(packet, found.frag_at, found.frag_prev, now)
        if done is None:
            return None, QUEUED
        if not isinstance(done, Reassembled6):
            return None, done
        packet = bytes(done.packet)
        found = ipv6.find_hdr(packet)
        if found is None or found.frag_at is not None or not _tunnel_proto(encap, found.protocol):
            return None, "outer_header"
    if found.offset > len(packet):
        return None, "outer_header"
    tclass = ((packet[0] & 15) << 4) | (packet[1] >> 4)
    return _decap_payload(encap, found.protocol, packet[found.offset:], packet[8:40], tclass,
                          gue_port, vips)


def _decap_payload(encap, proto, payload, addresses, outer_ds, gue_port, vips):
    """What follows the outer IP header: the inner packet as the tunnel names its family."""
    if encap == "ipip":
        inner, family, remcsum = payload, INNER_BY_PROTO[proto], None
    elif encap == "gre":
        inner, family = _gre(payload)
        if inner is None:
            return None, family
        remcsum = None
    else:
        if len(payload) < 8:
            return None, "udp_truncated"
        if gue_port is None or ((payload[2] << 8) | payload[3]) != gue_port:
            return None, "not_tunnel"
        inner, family, remcsum = _gue(addresses, payload)
        if inner is None:
            return None, family
    return _inner(outer_ds, inner, family, vips, remcsum)


def _gre(payload):
    """GRE (RFC 2784) as IPVS sends it: protocol 0x0800 or 0x86DD, optionally a checksum:
    (inner, family) or (None, reason)."""
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
    family = INNER_BY_ETHERTYPE.get((payload[2] << 8) | payload[3])
    if family is None:
        return None, "gre_protocol"
    return payload[hlen:], family


def _gue(addresses, payload):
    """UDP + GUE (ipvs_gue_encap, fou's gue_udp_recv): the inner packet, its family and its
    remote checksum offload (start, position) or None; or (None, reason, None).
    `addresses` are the outer source and destination (8 or 32 bytes): the UDP checksum's
    pseudo-header. A zero checksum means none, over IPv6 too: IPVS sends it so without
    --tun-csum, and fou's IPv6 sockets accept it (udp_set_no_check6_rx)."""
    length = (payload[4] << 8) | payload[5]
    if length < 8 or length > len(payload):
        return None, "udp_length", None
    payload = payload[:length]
    if payload[6] or payload[7]:
        if len(addresses) == 8:
            pseudo = addresses + b"\0\x11" + struct.pack("!H", length)
        else:
            pseudo = addresses + struct.pack("!IxxxB", length, IPPROTO_UDP)
        if checksum(pseudo + payload):
            return None, "udp_checksum", None
    if len(payload) < 12:
        return None, "gue_truncated", None
    version = payload[8] >> 6
    if version == 1:                 # direct IP: the IP header is the GUE header
        family = payload[8] >> 4
        if family not in (4, 6):
            return None, "gue_protocol", None
        return payload[8:], family, None
    if version != 0:
        return None, "gue_version", None
    if payload[8] & 0x20:
        return None, "gue_control", None
    optlen = (payload[8] & 0x1F) << 2
    family = INNER_BY_PROTO.get(payload[9])
    if family is None:
        return None, "gue_protocol", None   # only IPIP and IPv6: what IPVS sends
    flags = (payload[10] << 8) | payload[11]
    if flags & ~GUE_FLAG_PRIV:
        return None, "gue_flags", None
    if len(payload) < 12 + optlen:
        return None, "gue_truncated", None
    remcsum = None
    if flags & GUE_FLAG_PRIV:
        if optlen < 4:
            return None, "gue_options", None
        pflags = struct.unpack_from("!I", payload, 12)[0]
        if pflags & ~GUE_PFLAG_REMCSUM:
            return None, "gue_flags", None
        if pflags & GUE_PFLAG_REMCSUM:
            if optlen < 8:
                return None, "gue_options", None
            remcsum = struct.unpack_from("!HH", payload, 16)
    return payload[12 + optlen:], family, remcsum


def _inner(outer_ds, inner, family, vips, remcsum):
    """The inner packet checked as ip_rcv / ipv6_rcv would, for a VIP; remote checksum
    offload finished; ECN decapsulated (`outer_ds`: the outer TOS or traffic class)."""
    if family == 6:
        return _inner6(outer_ds, inner, vips, remcsum)
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
        inner = _remcsum(inner, ihl, remcsum)
        if inner is None:
            return None, "gue_remcsum"
    if outer_ds & 3 == INET_ECN_CE:
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


def _inner6(outer_ds, inner, vips, remcsum):
    if len(inner) < 40:
        return None, "inner_truncated"
    if inner[0] >> 4 != 6:
        return None, "inner_not_ipv6"
    plen = (inner[4] << 8) | inner[5]
    if plen == 0 or 40 + plen > len(inner):
        return None, "inner_length"
    if inner[24:40] not in vips:
        return None, "inner_not_vip"
    inner = inner[:40 + plen]
    if remcsum is not None:
        inner = _remcsum(inner, 40, remcsum)
        if inner is None:
            return None, "gue_remcsum"
    if outer_ds & 3 == INET_ECN_CE:
        ecn = (inner[1] >> 4) & 3      # the traffic class's low bits
        if ecn == 0:
            return None, "ecn"
        if ecn != INET_ECN_CE:
            buf = bytearray(inner)
            buf[1] |= INET_ECN_CE << 4  # IP6_ECN_set_ce: no header checksum to fix
            inner = bytes(buf)
    return inner, None


def _remcsum(inner, hlen, remcsum):
    """Remote checksum offload: the director left the inner L4 checksum partial (the
    pseudo-header sum in place); finish it as skb_remcsum_process does. None if the
    option points outside the packet."""
    start, pos = remcsum
    if start < hlen or pos < start or pos + 2 > len(inner):
        return None
    buf = bytearray(inner)
    struct.pack_into("!H", buf, pos, checksum(buf[start:]))
    return bytes(buf)


class Decapsulator:
    """decap_frame with outer fragment reassembly (both families) and counters (no I/O)."""

    def __init__(self, encap, vips, local, gue_port=None, mac=None):
        self.mac = mac
        self.encap = encap
        self.vips = set(vips)
        self.local = set(local)
        self.gue_port = gue_port
        self.reasm = Reassembler()
        self.reasm6 = Reassembler6()
        self.decapsulated = 0
        self.drops = Counter()
        self.ignored = Counter()

    def frame(self, frame, now):
        if self.mac is not None and frame[:6] != self.mac:
            self.ignored["not_local"] += 1
            return None
        packet = ip_of_frame(frame)
        if packet is None:
            self.ignored["not_ip"] += 1
            return None
        inner, reason = decap_packet(packet, self.encap, self.local, self.vips, self.gue_port,
                                     self.reasm, now, self.reasm6)
        if inner is not None:
            self.decapsulated += 1
        elif reason in IGNORED:
            self.ignored[reason] += 1
        elif reason != QUEUED:
            self.drops[reason] += 1
        return inner

    def next_deadline(self):
        deadlines = [d for d in (self.reasm.next_deadline(), self.reasm6.next_deadline())
                     if d is not None]
        return min(deadlines) if deadlines else None

    def expire(self, now):
        for _ in self.reasm.expire(now):
            self.drops["fragment_timeout"] += 1
        for _ in self.reasm6.expire(now):
            self.drops["fragment_timeout"] += 1

    def summary(self):
        drops = " ".join("%s=%d" % kv for kv in sorted(self.drops.items())) or "none"
        return "decapsulated %d packets; dropped: %s" % (self.decapsulated, drops)


# ---------------------------------------------------------------- host facts
