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


MAX_HBH_OPTS_CNT = 8       # net.ipv6.max_hbh_opts_number
IPV6_MAXPLEN = 65535
ICMPV6_PARAMPROB = 4
ICMPV6_HDR_FIELD, ICMPV6_UNK_OPTION = 0, 2
OPT_PAD1, OPT_PADN, OPT_ROUTERALERT, OPT_CALIPSO, OPT_IOAM, OPT_JUMBO = 0, 1, 5, 7, 0x31, 0xC2


def hop_options_verdict(buf):
    """ipv6_parse_hopopts and ip6_parse_tlv over a hop-by-hop header at 40 (`buf` the
    datagram, trimmed to its payload length unless that is 0, as ip6_rcv_core): None when it passes, else (drop reason, the
    parameter problem the kernel sends as (code, pointer), or None). As the kernel with
    its defaults: at most 7 bytes of padding in a row, PadN all zeros, at most 8 other
    options; router alert of length 2; IOAM 4n-aligned (then ignored: ioam6_enabled=0);
    CALIPSO refused (no DOI is configured); a jumbo payload option checked as
    ipv6_hop_jumbo does; an unknown option as its two high bits say (skip, discard,
    discard and answer, discard and answer unless sent to a multicast address)."""
    bad = ("bad_hop_options", None)
    n = len(buf)
    if n < 48 or 40 + ((buf[41] + 1) << 3) > n:
        return bad
    off, left = 42, ((buf[41] + 1) << 3) - 2
    padlen = count = 0
    while left > 0:
        opt = buf[off]
        if opt == OPT_PAD1:
            padlen += 1
            if padlen > 7:
                return bad
            off += 1
            left -= 1
            continue
        if left < 2:
            return bad
        optlen = buf[off + 1] + 2
        if optlen > left:
            return bad
        if opt == OPT_PADN:
            padlen += optlen
            if padlen > 7 or any(buf[off + 2:off + optlen]):
                return bad
        else:
            count += 1
            if count > MAX_HBH_OPTS_CNT:
                return bad
            if opt == OPT_ROUTERALERT:
                if buf[off + 1] != 2:
                    return bad
            elif opt == OPT_IOAM:
                if off & 3:
                    return bad
            elif opt == OPT_JUMBO:
                if buf[off + 1] != 4 or off & 3 != 2:
                    return bad
                jumbo_len = int.from_bytes(buf[off + 2:off + 6], "big")
                if jumbo_len <= IPV6_MAXPLEN:
                    return "bad_hop_options", (ICMPV6_HDR_FIELD, off + 2)
                if buf[4] or buf[5]:
                    return "bad_hop_options", (ICMPV6_HDR_FIELD, off)
                if jumbo_len > n - 40:
                    return "truncated", None
            elif opt == OPT_CALIPSO:
                return bad          # calipso_validate: CRC aside, the host defines no DOI
            else:
                action = opt >> 6
                if action == 1 or (action == 3 and buf[24] == 0xFF):
                    return "unknown_hop_option", None
                if action:
                    return "unknown_hop_option", (ICMPV6_UNK_OPTION, off)
            padlen = 0
        off += optlen
        left -= optlen
    return None


def header(tc_flow, payload_len, nexthdr, hop_limit, saddr, daddr):
    """A 40-byte IPv6 header; tc_flow is the traffic class << 20 | flow label."""
    return struct.pack("!IHBB16s16s", 0x60000000 | tc_flow, payload_len, nexthdr, hop_limit,
                       saddr, daddr)


def is_unicast(addr):
    """ipv6_addr_type() & IPV6_ADDR_UNICAST: not multicast, unspecified or v4-mapped."""
    return addr[0] != 0xFF and addr != bytes(16) and addr[:12] != _MAPPED


_MAPPED = bytes(10) + b"\xff\xff"
