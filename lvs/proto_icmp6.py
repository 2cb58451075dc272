"""ICMPv6 errors that quote a connection (ip_vs_out_icmp_v6, ip_vs_in_icmp_v6).

Informational messages (type 128 and up: echo, neighbour discovery) are the
director's own business, never IPVS's. Every error type (below 128) may be
related; the quoted IPv6 packet, its transport header found past any
extension headers, names the connection:
- a packet client -> real server, in an error from the real server's side: for
  NAT, only when ip_vs_checksum_complete passes, which sums from the end of the
  fixed header without the pseudo-header -- so an error with a correct ICMPv6
  checksum is dropped, and one checksummed without the pseudo-header is
  translated (outer source and quoted destination become the VIP) and
  re-checksummed properly. Then the director routes it on to the client.
- a packet VIP -> client, in an error from the client's side: rewritten the other
  way for NAT (no checksum check on this side) and sent to the real server, or
  sent by the connection's own method for DR and tunnels.
Unlike IPv4 there is no case for an error about our own tunnel packet: its quoted
protocol (41, or UDP/GRE to the tunnel) names no connection, and the director
keeps it. Errors that match nothing are routed by the host, not by IPVS.
"""

import struct

from forwarders import nat
from forwarders._common import decrement_hlim, mtu_ok_v6

from . import ipv6
from .checksum import checksum, l4_checksum
from .flags import IP_VS_CONN_F_FWD_MASK, IP_VS_CONN_F_MASQ, IPPROTO_TCP, IPPROTO_UDP

ICMPV6_INFOMSG_MASK = 0x80


def _nat_icmp6(buf, off, ports, inout, cp):
    """ip_vs_nat_icmp_v6: outer and quoted addresses, the quoted port, the ICMPv6 checksum;
    the quoted packet's own transport checksum is left alone."""
    inner = off + 8
    if inout:
        buf[8:24] = cp.vaddr
        buf[inner + 24:inner + 40] = cp.vaddr
        struct.pack_into("!H", buf, ports + 2, cp.vport)
    else:
        buf[24:40] = cp.daddr
        buf[inner + 8:inner + 24] = cp.daddr
        struct.pack_into("!H", buf, ports, cp.dport)
    buf[off + 2:off + 4] = b"\0\0"
    struct.pack_into("!H", buf, off + 2, l4_checksum(bytes(buf[8:24]), bytes(buf[24:40]),
                                                     ipv6.NEXTHDR_ICMP, bytes(buf[off:])))


def handle(engine, buf, off):
    n = len(buf)
    if n < off + 8:
        return engine.count_drop("truncated")   # frag_safe_skb_hp: NF_DROP
    if buf[off] & ICMPV6_INFOMSG_MASK:
        return engine.count_drop("icmp_not_related")
    inner = off + 8
    if n < inner + 40 or buf[inner] >> 4 != 6:
        return engine.count_drop("icmp_not_related")
    quoted = ipv6.find_hdr(buf, inner)
    if quoted is None or quoted.protocol not in (IPPROTO_TCP, IPPROTO_UDP) or quoted.fragoffs:
        return engine.count_drop("icmp_not_related")
    ports = quoted.offset
    if n < ports + 4:
        return engine.count_drop("icmp_not_related")
    proto = quoted.protocol
    esrc = bytes(buf[inner + 8:inner + 24])
    edst = bytes(buf[inner + 24:inner + 40])
    esport, edport = struct.unpack_from("!HH", buf, ports)
    tab = engine.conntab
    length = len(buf)

    cp = tab.by_out.get((proto, edst, edport, esrc, esport))
    if cp is not None:
        # From the real server's side, towards the client (handle_response_icmp).
        if cp.flags & IP_VS_CONN_F_FWD_MASK == IP_VS_CONN_F_MASQ:
            if checksum(buf[40:]) != 0:
                return engine.count_drop("bad_icmp_checksum")
            _nat_icmp6(buf, off, ports, True, cp)
        engine._out_stats(cp, length)
        nat.forward_v6(engine, buf, cp)
        return
    if engine.backup_only():
        return engine.count_drop("backup_only")
    cp = tab.by_in.get((proto, edst, edport, esrc, esport))
    new = False
    if cp is None:
        if not engine.config.schedule_icmp:
            return engine.count_drop("icmp_not_related")
        cp = engine.schedule_icmp(buf, inner, ports - inner, proto, edst, esrc, edport, esport)
        if cp is None:
            return
        new = True
    engine._in_stats(cp, length)
    engine.relaying_icmp = True
    try:
        if cp.flags & IP_VS_CONN_F_FWD_MASK != IP_VS_CONN_F_MASQ:
            engine.transmit(cp, buf, off)
        elif decrement_hlim(engine, buf) and mtu_ok_v6(engine, buf, engine.path_mtu(cp.dest)):
            _nat_icmp6(buf, off, ports, False, cp)
            engine.output(cp.daddr, bytes(buf), engine.path_mtu(cp.dest))
    finally:
        engine.relaying_icmp = False
    cp.in_pkts += 1
    if new:
        engine._conn_put(cp)
