"""IPv6 header facts the packet path needs: the extension-header walk
(ipv6_find_hdr), the hop-by-hop options check ip6_rcv_core makes before
any netfilter hook, and the header of packets the director itself sends.

Offsets: the fixed header is 40 bytes, payload length at 4, next header at
6, hop limit at 7, source 8..24, destination 24..40.
"""

import struct

NEXTHDR_HOP = 0
NEXTHDR_TCP = 6
NEXTHDR_UDP = 17
NEXTHDR_IPV6 = 41
NEXTHDR_ROUTING = 43
NEXTHDR_FRAGMENT = 44
NEXTHDR_GRE = 47
NEXTHDR_ESP = 50
NEXTHDR_AUTH = 51
NEXTHDR_ICMP = 58
NEXTHDR_NONE = 59
NEXTHDR_DEST = 60
EXT_HEADERS = frozenset((NEXTHDR_HOP, NEXTHDR_ROUTING, NEXTHDR_FRAGMENT, NEXTHDR_AUTH,
                         NEXTHDR_NONE, NEXTHDR_DEST))   # ipv6_ext_hdr()
IPV6_MIN_MTU = 1280
HOP_LIMIT = 64                  # net.ipv6.conf.*.hop_limit, for the director's own packets


class Headers:
    """Where ipv6_find_hdr(target -1) ends: the upper-layer protocol and its offset,
    and, when a Fragment header was crossed, where it is and what named it."""

    __slots__ = ("protocol", "offset", "fragoffs", "frag_at", "frag_prev")

    def __init__(self, protocol, offset, fragoffs, frag_at, frag_prev):
        self.protocol = protocol
        self.offset = offset
        self.fragoffs = fragoffs    # the fragment offset (0: none, or the first)
        self.frag_at = frag_at      # offset of the Fragment header, or None
        self.frag_prev = frag_prev  # offset of the next-header byte naming it


def find_hdr(buf, start=0):
    """ipv6_find_hdr(skb, &offset, -1, &fragoffs, &flags) on the IPv6 packet at `start`:
    the Headers, or None for -EBADMSG (an extension header cut short)."""
    n = len(buf)
    nexthdr = buf[start + 6]
    prev = start + 6
    off = start + 40
    frag_at = frag_prev = None
    while nexthdr in EXT_HEADERS and nexthdr != NEXTHDR_NONE:
        if off + 2 > n:
            return None
        if nexthdr == NEXTHDR_FRAGMENT:
            if off + 4 > n:
                return None
            frag_at, frag_prev = off, prev
            fragoff = ((buf[off + 2] << 8) | buf[off + 3]) & ~7
            if fragoff:
                # A later fragment: the walk stops here (no header follows).
                return Headers(buf[off], off + 8, fragoff, frag_at, frag_prev)
            hdrlen = 8
        elif nexthdr == NEXTHDR_AUTH:
            hdrlen = (buf[off + 1] + 2) << 2    # ipv6_authlen
        else:
            hdrlen = (buf[off + 1] + 1) << 3    # ipv6_optlen
        prev = off
        nexthdr = buf[off]
        off += hdrlen
    return Headers(nexthdr, off, 0, frag_at, frag_prev)


def hop_options_ok(buf):
    """ip6_parse_tlv over a hop-by-hop header at 40, as ip6_rcv_core checks it before
    PREROUTING: Pad1/PadN and known options pass; an unknown option whose action
    bits say skip (00) passes, any other action discards the packet. (The kernel
    then answers actions 10/11 with a parameter problem; pylvs only drops.)"""
    if len(buf) < 48:
        return False
    end = 40 + ((buf[41] + 1) << 3)
    if end > len(buf):
        return False
    off = 42
    while off < end:
        opt = buf[off]
        if opt == 0:            # Pad1
            off += 1
            continue
        if off + 2 > end:
            return False
        optlen = buf[off + 1] + 2
        if off + optlen > end:
            return False
        # PadN (1), router alert (5), CALIPSO (7), jumbo (0xC2), IOAM (0x31) are known
        if opt not in (1, 5, 7, 0x31, 0xC2) and opt >> 6:
            return False
        off += optlen
    return True


def header(tc_flow, payload_len, nexthdr, hop_limit, saddr, daddr):
    """A 40-byte IPv6 header; tc_flow is the traffic class << 20 | flow label."""
    return struct.pack("!IHBB16s16s", 0x60000000 | tc_flow, payload_len, nexthdr, hop_limit,
                       saddr, daddr)


def is_unicast(addr):
    """ipv6_addr_type() & IPV6_ADDR_UNICAST: not multicast, unspecified or v4-mapped."""
    return addr[0] != 0xFF and addr != bytes(16) and addr[:12] != _MAPPED


_MAPPED = bytes(10) + b"\xff\xff"
