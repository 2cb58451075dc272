"""ICMP errors that quote a connection (ip_vs_in_icmp, ip_vs_out_icmp).

Only destination unreachable, source quench and time exceeded are "related".
The quoted packet names the connection: a packet client -> real server when
the error comes from the real server's side (forwarded to the client with
the VIP put back, outer source and inner destination), a packet VIP ->
client when it comes from the client's side (forwarded to the real server,
rewritten the other way for NAT, sent by the connection's own method for
DR and tunnel). Both lookups use the same key built from the quoted packet.
Everything else ICMP is the director's own business and is not forwarded.
"""

import struct

from .checksum import checksum
from .verdicts import Transmit
from .flags import IP_VS_CONN_F_FWD_MASK, IP_VS_CONN_F_MASQ

RELATED = (3, 4, 11)


def _nat_icmp(buf, ihl, inner, inout, cp):
    """ip_vs_nat_icmp: rewrite outer and quoted headers; the inner L4 checksum is left alone."""
    if inout:
        buf[12:16] = cp.vaddr
        buf[inner + 16:inner + 20] = cp.vaddr
    else:
        buf[16:20] = cp.daddr
        buf[inner + 12:inner + 16] = cp.daddr
    struct.pack_into("!H", buf, 10, 0)
    struct.pack_into("!H", buf, 10, checksum(buf[:ihl]))
    cihl = (buf[inner] & 0x0F) * 4
    struct.pack_into("!H", buf, inner + 10, 0)
    struct.pack_into("!H", buf, inner + 10, checksum(buf[inner:inner + cihl]))
    if inout:
        struct.pack_into("!H", buf, inner + cihl + 2, cp.vport)
    else:
        struct.pack_into("!H", buf, inner + cihl, cp.dport)
    struct.pack_into("!H", buf, ihl + 2, 0)
    struct.pack_into("!H", buf, ihl + 2, checksum(buf[ihl:]))


def handle(engine, buf, ihl):
    from forwarders import nat
    from .engine import _XMIT
    n = len(buf)
    if n < ihl + 8:
        return engine.count_drop("truncated")
    if buf[ihl] not in RELATED:
        return engine.count_drop("icmp_not_related")
    inner = ihl + 8
    if n < inner + 20 or buf[inner] >> 4 != 4:
        return engine.count_drop("icmp_not_related")
    cihl = (buf[inner] & 0x0F) * 4
    proto = buf[inner + 9]
    if (proto not in (6, 17) or cihl < 20 or n < inner + cihl + 4
            or struct.unpack_from("!H", buf, inner + 6)[0] & 0x1FFF):
        return engine.count_drop("icmp_not_related")
    esrc = bytes(buf[inner + 12:inner + 16])
    edst = bytes(buf[inner + 16:inner + 20])
    esport, edport = struct.unpack_from("!HH", buf, inner + cihl)
    key = (proto, edst, edport, esrc, esport)
    tab = engine.conntab
    length = len(buf)
    cp = tab.by_out.get(key)
    if cp is not None:
        # From the real server's side, towards the client.
        if cp.flags & IP_VS_CONN_F_FWD_MASK == IP_VS_CONN_F_MASQ:
            if checksum(buf[ihl:]) != 0:
                return engine.count_drop("bad_icmp_checksum")
            _nat_icmp(buf, ihl, inner, True, cp)
        sent = nat.forward(engine, buf, cp)
        if sent is not None:
            engine._out_stats(cp, length)
            engine._out.append(sent)
        return
    cp = tab.by_in.get(key)
    if cp is None:
        return engine.count_drop("icmp_not_related")
    # From the client's side, towards the real server.
    if checksum(buf[ihl:]) != 0:
        return engine.count_drop("bad_icmp_checksum")
    engine._in_stats(cp, length)
    method = cp.flags & IP_VS_CONN_F_FWD_MASK
    if method != IP_VS_CONN_F_MASQ:
        xmit = _XMIT.get(method)
        sent = xmit(engine, cp, buf, ihl) if xmit else None
    else:
        from forwarders._common import decrement_ttl, mtu_ok
        sent = None
        if decrement_ttl(engine, buf) and mtu_ok(engine, buf, engine.mtu, False):
            _nat_icmp(buf, ihl, inner, False, cp)
            sent = Transmit(cp.daddr, bytes(buf))
    cp.in_pkts += 1
    if sent is not None:
        engine._out.append(sent)
