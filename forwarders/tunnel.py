"""Tunnelling (ip_vs_tunnel_xmit): a new outer IPv4 header to the real server.

The outer header is built as the kernel builds it: TTL copied from the inner
packet after its decrement; TOS from the inner DSCP with ECN encapsulated per
RFC 6040 (INET_ECN_encapsulate: CE becomes ECT(0)); DF copied from the inner
packet when pmtu_disc is on, clear otherwise; ID 0 when DF is set
(ip_select_ident), else from the engine's seeded generator; source the
director's address. Between the two headers, --tun-type adds:
  ipip  nothing (protocol 4)
  gue   UDP to the dest's --tun-port from a per-flow source port
        (udp_flow_src_port), then a 4-byte GUE header naming IPIP; the UDP
        checksum is filled only with --tun-csum/--tun-remcsum
  gre   a GRE header for IPv4 (protocol 47), with a checksum when --tun-csum

Over IPv6 (ip_vs_tunnel_xmit_v6, for a real server with an IPv6 address) the
outer header is IPv6: traffic class as the TOS above, flow label 0, hop limit
from the inner packet, source the director's IPv6 address; the MTU left
inside must be at least 1280. Either header may carry either family, as 6.1
allows a tunnel server of the other family: an IPv6 packet rides as protocol
41 (GUE names 41, GRE names 0x86DD), never with DF outside.
"""

import struct

from lvs.checksum import checksum, l4_checksum
from lvs.flags import (IP_VS_CONN_F_TUNNEL_TYPE_GRE, IP_VS_CONN_F_TUNNEL_TYPE_GUE,
                       IP_VS_TUNNEL_ENCAP_FLAG_CSUM, IP_VS_TUNNEL_ENCAP_FLAG_REMCSUM)
from lvs import ipv6
from forwarders._common import decrement_hlim, decrement_ttl, mtu_ok, mtu_ok_v6

IPPROTO_IPIP, IPPROTO_UDP, IPPROTO_IPV6, IPPROTO_GRE = 4, 17, 41, 47
LOCAL_PORT_MIN, LOCAL_PORT_MAX = 32768, 60999  # ip_local_port_range defaults
GRE_CSUM = 0x8000
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
GUE_HEADER = b"\x00\x04\x00\x00"   # GUE v0, hlen 0, carries IPIP
GRE_HEADER = b"\x00\x00\x08\x00"   # no flags, IPv4
GUE_HEADER6 = b"\x00\x29\x00\x00"  # the same for an IPv6 packet inside
GRE_HEADER6 = b"\x00\x00\x86\xdd"
IPV4_MIN_TUNNEL_MTU = 68


def ecn_encapsulate(tos):
    ecn = tos & 3
    return (tos & ~3) | (2 if ecn == 3 else ecn)


def gue_source_port(engine, buf):
    """udp_flow_src_port: the flow hash spread over the local port range.

    The kernel's flow hash is keyed at boot; ours by the engine's seed, so
    one flow always leaves from one port and a replay is reproducible.
    """
    if buf[0] >> 4 == 6:
        found = ipv6.find_hdr(buf)
        off = found.offset if found is not None else 40
        h = engine.flow_hash(bytes(buf[8:40]) + bytes((found.protocol if found else 0,))
                             + bytes(buf[off:off + 4]))
    else:
        ihl = (buf[0] & 0x0F) * 4
        h = engine.flow_hash(bytes(buf[12:20]) + bytes(buf[9:10]) + bytes(buf[ihl:ihl + 4]))
    h ^= (h << 16) & 0xFFFFFFFF
    return ((h * (LOCAL_PORT_MAX - LOCAL_PORT_MIN)) >> 32) + LOCAL_PORT_MIN


def _encap(engine, dest, buf, saddr, daddr):
    """The bytes between the outer IP header and the inner packet, and the outer protocol."""
    tun_type = dest.tun_type if dest is not None else 0
    inner6 = buf[0] >> 4 == 6
    if tun_type == IP_VS_CONN_F_TUNNEL_TYPE_GUE:
        payload = (GUE_HEADER6 if inner6 else GUE_HEADER) + bytes(buf)
        udp = bytearray(struct.pack("!HHHH", gue_source_port(engine, buf), dest.tun_port,
                                    8 + len(payload), 0)) + payload
        if dest.tun_flags & (IP_VS_TUNNEL_ENCAP_FLAG_CSUM | IP_VS_TUNNEL_ENCAP_FLAG_REMCSUM):
            struct.pack_into("!H", udp, 6, l4_checksum(saddr, daddr, IPPROTO_UDP, bytes(udp)) or 0xFFFF)
        return bytes(udp), IPPROTO_UDP
    if tun_type == IP_VS_CONN_F_TUNNEL_TYPE_GRE:
        if dest.tun_flags & IP_VS_TUNNEL_ENCAP_FLAG_CSUM:
            gre = bytearray(struct.pack("!HHHH", GRE_CSUM, ETH_P_IPV6 if inner6 else ETH_P_IP, 0, 0)) + buf
            struct.pack_into("!H", gre, 4, checksum(gre))
            return bytes(gre), IPPROTO_GRE
        return (GRE_HEADER6 if inner6 else GRE_HEADER) + bytes(buf), IPPROTO_GRE
    return bytes(buf), IPPROTO_IPV6 if inner6 else IPPROTO_IPIP


def overhead(dest, outer6=False):
    """Bytes the tunnel adds before the inner packet (the MTU it costs)."""
    tun_type = dest.tun_type if dest is not None else 0
    ip = 40 if outer6 else 20
    if tun_type == IP_VS_CONN_F_TUNNEL_TYPE_GUE:
        return ip + 8 + 4
    if tun_type == IP_VS_CONN_F_TUNNEL_TYPE_GRE:
        return ip + (8 if dest.tun_flags & IP_VS_TUNNEL_ENCAP_FLAG_CSUM else 4)
    return ip


def xmit(engine, cp, buf, ihl):
    """ip_vs_tunnel_xmit, or ip_vs_tunnel_xmit_v6 for a real server with an IPv6 address."""
    dest = cp.dest
    outer6 = len(cp.daddr) == 16
    inner6 = buf[0] >> 4 == 6
    limit = engine.path_mtu(dest) - overhead(dest, outer6)
    if inner6:
        if not decrement_hlim(engine, buf):
            return None
    elif not decrement_ttl(engine, buf):
        return None
    if limit < (ipv6.IPV6_MIN_MTU if outer6 else IPV4_MIN_TUNNEL_MTU):
        engine.count_drop("tunnel_mtu")     # __ip_vs_get_out_rt(_v6): "mtu less than"
        return None
    if not (mtu_ok_v6(engine, buf, limit) if inner6 else mtu_ok(engine, buf, limit, True)):
        return None
    own = engine.director_addr6 if outer6 else engine.director_addr
    saddr = own or (cp.vaddr if len(cp.vaddr) == len(cp.daddr) else None)
    if saddr is None:
        engine.count_drop("no_tunnel_source")  # no address of the server's family to send from
        return None
    if overhead(dest, outer6) - (40 if outer6 else 0) + len(buf) > 65535:
        # A datagram reassembled near 64 KiB has no room for the tunnel's headers. The
        # kernel's 16-bit lengths wrap (__ip_local_out's htons(skb->len), ip6_local_out's
        # payload_len 0, the GUE UDP length) and the fragments it then cuts cannot be put
        # together again: nothing usable reaches the server. It ends here, counted.
        engine.count_drop("tunnel_oversize")
        return None
    if inner6:
        dsfield, ttl, df = ((buf[0] & 0x0F) << 4) | (buf[1] >> 4), buf[7], 0
    else:
        dsfield, ttl = buf[1], buf[8]
        df = buf[6] & 0x40 if engine.config.pmtu_disc else 0
    payload, proto = _encap(engine, dest, buf, saddr, cp.daddr)
    if outer6:
        outer = ipv6.header(ecn_encapsulate(dsfield) << 20, len(payload), proto, ttl, saddr, cp.daddr)
    else:
        ident = 0 if df else engine.ip_ident(saddr, cp.daddr, proto)
        outer = bytearray(struct.pack("!BBHHBBBBH4s4s", 0x45, ecn_encapsulate(dsfield), 20 + len(payload),
                                      ident, df, 0, ttl, proto, 0, saddr, cp.daddr))
        struct.pack_into("!H", outer, 10, checksum(outer))
    return engine.output(cp.daddr, bytes(outer) + payload, engine.path_mtu(dest))
