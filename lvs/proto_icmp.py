"""ICMP errors that quote a connection (ip_vs_in_icmp, ip_vs_out_icmp).

Only destination unreachable, source quench and time exceeded are "related".
The quoted packet names the connection:
- a packet client -> real server, when the error comes from the real
  server's side: it goes on to the client with the VIP put back (outer
  source, quoted destination);
- a packet VIP -> client, when it comes from the client's side: it goes to
  the real server, rewritten the other way for NAT, sent by the
  connection's own method for DR and tunnels;
- one of our own tunnel packets (IPIP, GUE, GRE) to a real server: the
  error is about the client's packet inside, so the client hears it, and a
  frag-needed teaches the director the tunnel's path MTU.
With schedule_icmp set, an error from the client's side for which no
connection exists is scheduled like a first packet. Everything else ICMP is
the director's own business and is not forwarded.
"""

import struct

from forwarders import nat
from forwarders._common import decrement_ttl

from .checksum import checksum
from .flags import IP_VS_CONN_F_FWD_MASK, IP_VS_CONN_F_MASQ, IP_VS_CONN_F_TUNNEL

RELATED = (3, 4, 11)
ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED = 3, 4
IPPROTO_IPIP, IPPROTO_UDP, IPPROTO_GRE = 4, 17, 47
ETH_P_IP, GRE_CSUM = 0x0800, 0x8000
IP_RT_MIN_PMTU = 552            # net.ipv4.route.min_pmtu
IP_RT_MTU_EXPIRES = 600.0       # net.ipv4.route.mtu_expires


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


def find_tunnel(engine, addr, port, tun_type):
    """ip_vs_find_tunnel: a tunnel real server by address and tunnel port."""
    for svc in engine.services.values():
        for dest in svc.destinations:
            if (dest.addr == addr and dest.tun_port == port and dest.tun_type == tun_type
                    and dest.fwd == IP_VS_CONN_F_TUNNEL):
                return dest
    return None


def _decap(engine, buf, off):
    """Where the client's packet starts inside a quoted tunnel packet, and the dest, or None."""
    n = len(buf)
    proto = buf[off + 9]
    raddr = bytes(buf[off + 16:off + 20])
    start = off + (buf[off] & 0x0F) * 4
    if struct.unpack_from("!H", buf, off + 6)[0] & 0x1FFF:
        return None
    if proto == IPPROTO_IPIP:
        dest = find_tunnel(engine, raddr, 0, 0)
        return (start, dest) if dest is not None else None
    if proto == IPPROTO_UDP and n >= start + 12:
        dest = find_tunnel(engine, raddr, struct.unpack_from("!H", buf, start + 2)[0], 1)
        g = buf[start + 8]
        if dest is None or g >> 6 or buf[start + 9] != IPPROTO_IPIP:
            return None
        return start + 8 + 4 + ((g & 0x1F) << 2), dest
    if proto == IPPROTO_GRE and n >= start + 4:
        dest = find_tunnel(engine, raddr, 0, 2)
        flags, ptype = struct.unpack_from("!HH", buf, start)
        if dest is None or flags & ~GRE_CSUM or ptype != ETH_P_IP:
            return None
        return start + (8 if flags & GRE_CSUM else 4), dest
    return None


def handle(engine, buf, ihl):
    n = len(buf)
    if n < ihl + 8:
        return engine.count_drop("truncated")
    icmp_type, code = buf[ihl], buf[ihl + 1]
    if icmp_type not in RELATED:
        return engine.count_drop("icmp_not_related")
    inner = ihl + 8
    if n < inner + 20 or buf[inner] >> 4 != 4 or buf[inner] & 0x0F < 5:
        return engine.count_drop("icmp_not_related")
    tunnel = None
    if buf[inner + 9] in (IPPROTO_IPIP, IPPROTO_UDP, IPPROTO_GRE) and engine.is_local(bytes(buf[16:20])):
        tunnel = _decap(engine, buf, inner)
        if tunnel is None and buf[inner + 9] != IPPROTO_UDP:
            return engine.count_drop("icmp_not_related")
        if tunnel is not None:
            inner = tunnel[0]
            if n < inner + 20 or buf[inner] >> 4 != 4 or buf[inner] & 0x0F < 5:
                return engine.count_drop("icmp_not_related")
    cihl = (buf[inner] & 0x0F) * 4
    proto = buf[inner + 9]
    if (proto not in (6, 17) or n < inner + cihl + 4
            or struct.unpack_from("!H", buf, inner + 6)[0] & 0x1FFF):
        return engine.count_drop("icmp_not_related")
    esrc = bytes(buf[inner + 12:inner + 16])
    edst = bytes(buf[inner + 16:inner + 20])
    esport, edport = struct.unpack_from("!HH", buf, inner + cihl)
    tab = engine.conntab
    length = len(buf)

    if tunnel is None:
        cp = tab.by_out.get((proto, edst, edport, esrc, esport))
        if cp is not None:
            # From the real server's side, towards the client.
            if cp.flags & IP_VS_CONN_F_FWD_MASK == IP_VS_CONN_F_MASQ:
                if checksum(buf[ihl:]) != 0:
                    return engine.count_drop("bad_icmp_checksum")
                _nat_icmp(buf, ihl, inner, True, cp)
            if nat.forward(engine, buf, cp):
                engine._out_stats(cp, length)
            return
        if engine.backup_only():
            return engine.count_drop("backup_only")   # ip_vs_in_icmp is ip_vs_in_hook's
        cp = tab.by_in.get((proto, edst, edport, esrc, esport))
    else:
        if engine.backup_only():
            return engine.count_drop("backup_only")
        # Our tunnel packet quotes the client's request as it was sent.
        cp = tab.by_in.get((proto, esrc, esport, edst, edport))
    new = False
    if cp is None:
        if tunnel is not None or not engine.config.schedule_icmp:
            return engine.count_drop("icmp_not_related")
        cp = engine.schedule_icmp(buf, inner, cihl, proto, edst, esrc, edport, esport)
        if cp is None:
            return
        new = True
    if checksum(buf[ihl:]) != 0:
        return engine.count_drop("bad_icmp_checksum")

    if tunnel is not None:
        info = struct.unpack_from("!I", buf, ihl + 4)[0]
        if icmp_type == ICMP_DEST_UNREACH and code == ICMP_FRAG_NEEDED:
            dest = tunnel[1]
            mtu = learn_pmtu(engine, dest, info & 0xFFFF)
            if not buf[inner + 6] & 0x40:
                return engine.count_drop("icmp_consumed")  # the client does not use PMTUD
            if mtu > 68 + 20:
                mtu -= 20
            info = mtu
        # icmp_send about the client's packet, from the address it was sent to.
        engine.send_icmp_error(bytearray(buf[inner:]), icmp_type, code, info)
        engine._out_stats(cp, length - inner)  # counted from the quoted request on
        engine.count_drop("icmp_consumed")
        return

    engine._in_stats(cp, length)
    method = cp.flags & IP_VS_CONN_F_FWD_MASK
    engine.relaying_icmp = True
    try:
        if method != IP_VS_CONN_F_MASQ:
            engine.transmit(cp, buf, ihl)
        elif decrement_ttl(engine, buf):
            _nat_icmp(buf, ihl, inner, False, cp)
            engine.output(cp.daddr, bytes(buf), engine.path_mtu(cp.dest))
    finally:
        engine.relaying_icmp = False
    cp.in_pkts += 1
    if new:
        engine._conn_put(cp)


def learn_pmtu(engine, dest, mtu):
    """ipv4_update_pmtu on the route to a tunnel real server; returns its MTU now."""
    if mtu < IP_RT_MIN_PMTU:
        mtu = min(engine.path_mtu(dest), IP_RT_MIN_PMTU)
    if mtu < engine.path_mtu(dest):
        dest.pmtu = mtu
        dest.pmtu_expires = engine.now + IP_RT_MTU_EXPIRES
        engine.generation += 1  # prepared rewrites assumed the old path MTU
    return engine.path_mtu(dest)
