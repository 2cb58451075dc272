"""ICMPv6 errors the director sends (icmp6_send, as IPVS calls icmpv6_send).

The same three as for IPv4, in ICMPv6's words: port unreachable (destination
unreachable, code 4) from ip_vs_leave, time exceeded (hop limit, code 0) from
decrement_ttl, and packet too big (with the MTU) from ensure_mtu_is_adequate;
and the parameter problem the director's own input path sends about a
hop-by-hop header (lvs/ipv6.py: hop_options_verdict).
As icmp6_send builds them: hop limit 64, traffic class 0, a flow label from
the flow's hash (ip6_make_flowlabel; ours is keyed by the engine's seed), the
offending packet quoted up to a 1280-byte reply, the checksum over the IPv6
pseudo-header; never about an ICMPv6 error, nor to a source that does not name
one node.
"""

import struct

from . import ipv6
from .checksum import l4_checksum

ICMPV6_DEST_UNREACH = 1
ICMPV6_PKT_TOOBIG = 2
ICMPV6_TIME_EXCEED = 3
ICMPV6_PORT_UNREACH = 4
ICMPV6_EXC_HOPLIMIT = 0
ICMPV6_EXC_FRAGTIME = 1
ICMPV6_INFOMSG_MASK = 0x80

# IPv4's (type, code) as the callers name them -> ICMPv6's.
FROM_IPV4 = {(3, 3): (ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH),
             (11, 0): (ICMPV6_TIME_EXCEED, ICMPV6_EXC_HOPLIMIT),
             (11, 1): (ICMPV6_TIME_EXCEED, ICMPV6_EXC_FRAGTIME),
             (3, 4): (ICMPV6_PKT_TOOBIG, 0)}
MAX_QUOTE = ipv6.IPV6_MIN_MTU - 40 - 8


def is_ineligible(packet):
    """is_ineligible(): the packet is itself an ICMPv6 error (or its header is cut)."""
    h = ipv6.find_hdr(packet)
    if h is None or h.protocol != ipv6.NEXTHDR_ICMP:
        return False
    if h.offset >= len(packet):
        return h.fragoffs == 0
    return not packet[h.offset] & ICMPV6_INFOMSG_MASK


def build_error6(packet, icmp_type, code, info, saddr, flowlabel):
    """The IPv6 packet of an ICMPv6 error about `packet`, or None where icmp6_send
    stays silent."""
    dst = bytes(packet[8:24])
    if not ipv6.is_unicast(dst) or is_ineligible(packet):
        return None
    if packet[24] == 0xFF and icmp_type != ICMPV6_PKT_TOOBIG and not (
            icmp_type == ipv6.ICMPV6_PARAMPROB and code == ipv6.ICMPV6_UNK_OPTION
            and info < len(packet) and packet[info] & 0xC0 == 0x80):
        return None     # about a multicast packet: only packet too big, or an unknown option
                        # whose action says to answer even then
    quote = bytes(packet[:MAX_QUOTE])
    body = bytearray(struct.pack("!BBHI", icmp_type, code, 0, info) + quote)
    struct.pack_into("!H", body, 2, l4_checksum(saddr, dst, ipv6.NEXTHDR_ICMP, bytes(body)))
    return ipv6.header(flowlabel, len(body), ipv6.NEXTHDR_ICMP, ipv6.HOP_LIMIT, saddr, dst) + bytes(body)
