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
"""

import struct

from lvs.checksum import checksum, l4_checksum
from lvs.flags import (IP_VS_CONN_F_TUNNEL_TYPE_GRE, IP_VS_CONN_F_TUNNEL_TYPE_GUE,
                       IP_VS_TUNNEL_ENCAP_FLAG_CSUM, IP_VS_TUNNEL_ENCAP_FLAG_REMCSUM)
from forwarders._common import decrement_ttl, mtu_ok

IPPROTO_IPIP, IPPROTO_UDP, IPPROTO_GRE = 4, 17, 47
LOCAL_PORT_MIN, LOCAL_PORT_MAX = 32768, 60999  # ip_local_port_range defaults
GRE_CSUM = 0x8000
ETH_P_IP = 0x0800
GUE_HEADER = b"\x00\x04\x00\x00"   # GUE v0, hlen 0, carries IPIP
GRE_HEADER = b"\x00\x00\x08\x00"   # no flags, IPv4


def ecn_encapsulate(tos):
    ecn = tos & 3
    return (tos & ~3) | (2 if ecn == 3 else ecn)


def gue_source_port(engine, buf):
    """udp_flow_src_port: the flow hash spread over the local port range.

    The kernel's flow hash is keyed at boot; ours by the engine's seed, so
    one flow always leaves from one port and a replay is reproducible.
    """
    ihl = (buf[0] & 0x0F) * 4
    h = engine.flow_hash(bytes(buf[12:20]) + bytes(buf[9:10]) + bytes(buf[ihl:ihl + 4]))
    h ^= (h << 16) & 0xFFFFFFFF
    return ((h * (LOCAL_PORT_MAX - LOCAL_PORT_MIN)) >> 32) + LOCAL_PORT_MIN


def _encap(engine, dest, buf, saddr, daddr):
    """The bytes between the outer IP header and the inner packet, and the outer protocol."""
    tun_type = dest.tun_type if dest is not None else 0
    if tun_type == IP_VS_CONN_F_TUNNEL_TYPE_GUE:
        payload = GUE_HEADER + bytes(buf)
        udp = bytearray(struct.pack("!HHHH", gue_source_port(engine, buf), dest.tun_port,
                                    8 + len(payload), 0)) + payload
        if dest.tun_flags & (IP_VS_TUNNEL_ENCAP_FLAG_CSUM | IP_VS_TUNNEL_ENCAP_FLAG_REMCSUM):
            struct.pack_into("!H", udp, 6, l4_checksum(saddr, daddr, IPPROTO_UDP, bytes(udp)) or 0xFFFF)
        return bytes(udp), IPPROTO_UDP
    if tun_type == IP_VS_CONN_F_TUNNEL_TYPE_GRE:
        if dest.tun_flags & IP_VS_TUNNEL_ENCAP_FLAG_CSUM:
            gre = bytearray(struct.pack("!HHHH", GRE_CSUM, ETH_P_IP, 0, 0)) + buf
            struct.pack_into("!H", gre, 4, checksum(gre))
            return bytes(gre), IPPROTO_GRE
        return GRE_HEADER + bytes(buf), IPPROTO_GRE
    return bytes(buf), IPPROTO_IPIP


def overhead(dest):
    """Bytes the tunnel adds before the inner packet (the MTU it costs)."""
    tun_type = dest.tun_type if dest is not None else 0
    if tun_type == IP_VS_CONN_F_TUNNEL_TYPE_GUE:
        return 20 + 8 + 4
    if tun_type == IP_VS_CONN_F_TUNNEL_TYPE_GRE:
        return 20 + (8 if dest.tun_flags & IP_VS_TUNNEL_ENCAP_FLAG_CSUM else 4)
    return 20


def xmit(engine, cp, buf, ihl):
    dest = cp.dest
    if not decrement_ttl(engine, buf) or not mtu_ok(engine, buf, engine.path_mtu(dest) - overhead(dest), True):
        return None
    saddr = engine.director_addr or cp.vaddr
    df = buf[6] & 0x40 if engine.config.pmtu_disc else 0
    payload, proto = _encap(engine, dest, buf, saddr, cp.daddr)
    ident = 0 if df else engine.ip_ident(saddr, cp.daddr, proto)
    outer = bytearray(struct.pack("!BBHHBBBBH4s4s", 0x45, ecn_encapsulate(buf[1]), 20 + len(payload),
                                  ident, df, 0, buf[8], proto, 0, saddr, cp.daddr))
    struct.pack_into("!H", outer, 10, checksum(outer))
    return engine.output(cp.daddr, bytes(outer) + payload, engine.path_mtu(dest))
