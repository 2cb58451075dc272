"""IPv6 Neighbour Discovery over Ethernet (RFC 4861): the messages the live director reads and writes.

What IPv4's ARP is to lvs/arp.py, Neighbour Solicitation (135) and Neighbour
Advertisement (136) are here, built as net/ipv6/ndisc.c builds them and
checked as it checks them (ndisc_rcv, ndisc_recv_ns, ndisc_recv_na,
ndisc_parse_options):

  build   hop limit 255, traffic class and flow label 0, the ICMPv6 checksum
          over the IPv6 pseudo-header; a solicitation carries the source
          link-layer address option unless its source is the unspecified
          address (a DAD probe), an advertisement the target link-layer
          address when asked to; a solicitation to resolve goes to the
          target's solicited-node multicast address, framed to its
          33:33:ff:xx:xx:xx MAC.
  parse   only what ndisc would accept: hop limit 255 (a message that crossed a
          router is not Neighbour Discovery), code 0, a valid checksum, at
          least 24 bytes, a target that is not multicast, options of non-zero
          length that fit, an Ethernet link-layer option of exactly 8 bytes; a
          DAD probe only to a solicited-node address and without a source
          link-layer option; a solicited advertisement never to a multicast
          address; never in fragments (RFC 6980). Of duplicated options the
          first counts, as in ndisc_parse_options.
"""

import collections
import struct

from . import ipv6
from .checksum import l4_checksum

ETH_P_IPV6 = 0x86DD
ICMPV6_ECHO_REQUEST = 128
ICMPV6_ECHO_REPLY = 129
NDISC_NEIGHBOUR_SOLICITATION = 135
NDISC_NEIGHBOUR_ADVERTISEMENT = 136
ND_OPT_SOURCE_LL_ADDR = 1
ND_OPT_TARGET_LL_ADDR = 2
ND_OPT_NONCE = 14
HOP_LIMIT = 255                        # ndisc_sk's hop limit; and what ndisc_rcv requires

NA_ROUTER, NA_SOLICITED, NA_OVERRIDE = 0x80, 0x40, 0x20   # the first byte of the reserved word

UNSPECIFIED = bytes(16)
ALL_NODES = bytes.fromhex("ff020000000000000000000000000001")
_SOLICITED_PREFIX = bytes.fromhex("ff0200000000000000000001ff")

Message = collections.namedtuple("Message", "type src dst target flags lladdr nonce")
Message.__doc__ = """A parsed NS or NA: ICMPv6 type, IPv6 source and destination, the target,
the NA's flag byte (R, S, O; 0 for an NS), the link-layer address the message carries (the
source's for an NS, the target's for an NA; None without the option) and the NS's nonce."""


def solicited_node(addr):
    """ff02::1:ffXX:XXXX, the solicited-node multicast address of `addr` (RFC 4291 2.7.1)."""
    return _SOLICITED_PREFIX + bytes(addr[13:16])


def is_solicited_node(addr):
    return bytes(addr[:13]) == _SOLICITED_PREFIX


def multicast_mac(group):
    """The Ethernet address of an IPv6 multicast group: 33:33 and its last four bytes (RFC 2464 7)."""
    return b"\x33\x33" + bytes(group[12:16])


def is_multicast(addr):
    return addr[0] == 0xFF


def is_link_local(addr):
    return addr[0] == 0xFE and addr[1] & 0xC0 == 0x80


def _lladdr_option(kind, mac):
    return struct.pack("!BB6s", kind, 1, mac)


def _packet(saddr, daddr, body):
    body = bytearray(body)
    struct.pack_into("!H", body, 2, l4_checksum(saddr, daddr, ipv6.NEXTHDR_ICMP, bytes(body)))
    return ipv6.header(0, len(body), ipv6.NEXTHDR_ICMP, HOP_LIMIT, saddr, daddr) + bytes(body)


def solicitation(my_mac, saddr, target, daddr=None):
    """The IPv6 packet of an NS for `target` (ndisc_ns_create): to its solicited-node
    address unless `daddr` (a unicast probe) is given; with our link-layer address
    unless `saddr` is unspecified."""
    body = struct.pack("!BBHI16s", NDISC_NEIGHBOUR_SOLICITATION, 0, 0, 0, target)
    if saddr != UNSPECIFIED:
        body += _lladdr_option(ND_OPT_SOURCE_LL_ADDR, my_mac)
    return _packet(saddr, daddr if daddr is not None else solicited_node(target), body)


def advertisement(my_mac, saddr, daddr, target, router, solicited, override, tlla=True):
    """The IPv6 packet of an NA for `target` (ndisc_send_na)."""
    flags = (NA_ROUTER if router else 0) | (NA_SOLICITED if solicited else 0) | (NA_OVERRIDE if override else 0)
    body = struct.pack("!BBHB3x16s", NDISC_NEIGHBOUR_ADVERTISEMENT, 0, 0, flags, target)
    if tlla:
        body += _lladdr_option(ND_OPT_TARGET_LL_ADDR, my_mac)
    return _packet(saddr, daddr, body)


def frame(dst_mac, src_mac, packet):
    return dst_mac + src_mac + b"\x86\xdd" + bytes(packet)


def is_ndp(packet):
    """An NS or NA at the fixed header's end (before any checks)? Cheap, for the receive loop."""
    return (len(packet) >= 41 and packet[6] == ipv6.NEXTHDR_ICMP
            and packet[40] in (NDISC_NEIGHBOUR_SOLICITATION, NDISC_NEIGHBOUR_ADVERTISEMENT))


def parse(packet):
    """The Message of an IPv6 packet holding an NS or NA that ndisc would accept, or
    (None, reason) when it would not; reason is a short name for counting."""
    n = len(packet)
    if n < 40 or packet[0] >> 4 != 6:
        return None, "ndp_truncated"
    end = 40 + ((packet[4] << 8) | packet[5])
    if end > n:
        return None, "ndp_truncated"
    if packet[6] != ipv6.NEXTHDR_ICMP:
        return None, "ndp_ext_headers"   # no extension headers, and so never fragments (RFC 6980)
    if packet[7] != HOP_LIMIT:
        return None, "ndp_bad_hop_limit"
    icmp = bytes(packet[40:end])
    kind = icmp[0] if icmp else 0
    if kind not in (NDISC_NEIGHBOUR_SOLICITATION, NDISC_NEIGHBOUR_ADVERTISEMENT):
        return None, "ndp_not_ndp"
    src, dst = bytes(packet[8:24]), bytes(packet[24:40])
    if len(icmp) < 24:
        return None, "ndp_truncated"
    if icmp[1] != 0:
        return None, "ndp_bad_code"
    if l4_checksum(src, dst, ipv6.NEXTHDR_ICMP, icmp) != 0:
        return None, "ndp_bad_checksum"
    target = icmp[8:24]
    if is_multicast(target):
        return None, "ndp_multicast_target"
    options = {}
    off = 24
    while off < len(icmp):
        if off + 2 > len(icmp):
            return None, "ndp_bad_option"
        length = icmp[off + 1] << 3
        if length == 0 or off + length > len(icmp):
            return None, "ndp_bad_option"
        options.setdefault(icmp[off], icmp[off:off + length])
        off += length
    lladdr_kind = ND_OPT_SOURCE_LL_ADDR if kind == NDISC_NEIGHBOUR_SOLICITATION else ND_OPT_TARGET_LL_ADDR
    lladdr = options.get(lladdr_kind)
    if lladdr is not None:
        if len(lladdr) != 8:
            return None, "ndp_bad_lladdr"
        lladdr = lladdr[2:8]
    flags, nonce = 0, None
    if kind == NDISC_NEIGHBOUR_SOLICITATION:
        if src == UNSPECIFIED and (not is_solicited_node(dst) or lladdr is not None):
            return None, "ndp_bad_dad"
        opt = options.get(ND_OPT_NONCE)
        if opt is not None and len(opt) == 8:
            nonce = opt[2:8]
    else:
        flags = icmp[4] & (NA_ROUTER | NA_SOLICITED | NA_OVERRIDE)
        if is_multicast(dst) and flags & NA_SOLICITED:
            return None, "ndp_multicast_solicited"
    return Message(kind, src, dst, target, flags, lladdr, nonce), None
