"""Masquerading (ip_vs_nat_xmit, handle_response): the director rewrites both ways.

Inbound, the destination VIP:vport becomes the real server's daddr:dport;
replies get the VIP:vport back as their source. Checksums move by RFC 1624
deltas computed once per connection, as the kernel's tcp_fast_csum_update
does, and equal a full recomputation.
"""

import struct


from lvs.checksum import apply, delta
from lvs.checksum import l4_checksum
from forwarders._common import decrement_hlim, decrement_ttl, forward_ok, forward_ok_v6, mtu_ok, mtu_ok_v6

_TCP, _UDP = 6, 17


_DELTAS = {}          # (vaddr, vport, daddr, dport) -> deltas: the same for every client
_DELTAS_MAX = 1 << 14


def conn_deltas(cp):
    """(IP header delta, L4 delta) for client->server, then the same for the reply."""
    deltas = cp.deltas
    if deltas is None:
        key = (cp.vaddr, cp.vport, cp.daddr, cp.dport)
        deltas = _DELTAS.get(key)
        if deltas is None:
            old = cp.vaddr + cp.vport.to_bytes(2, "big")
            new = cp.daddr + cp.dport.to_bytes(2, "big")
            deltas = (delta(cp.vaddr, cp.daddr), delta(old, new),
                      delta(cp.daddr, cp.vaddr), delta(new, old))
            if len(_DELTAS) >= _DELTAS_MAX:
                _DELTAS.clear()
            _DELTAS[key] = deltas
        cp.deltas = deltas
    return deltas


def _rewrite(buf, ihl, addr_off, port_off, addr, port, ip_d, l4_d):
    buf[addr_off:addr_off + 4] = addr
    struct.pack_into("!H", buf, ihl + port_off, port)
    struct.pack_into("!H", buf, 10, apply(struct.unpack_from("!H", buf, 10)[0], ip_d))
    _l4_update(buf, ihl, buf[9], l4_d, 12, 16)


def _l4_update(buf, thoff, proto, l4_d, src_at, dst_at):
    """The transport checksum after the address and port rewrite: by the delta, or in
    full over the pseudo-header (addresses at src_at/dst_at, of the packet's family)."""
    if proto == _TCP:
        off = thoff + 16
        struct.pack_into("!H", buf, off, apply(struct.unpack_from("!H", buf, off)[0], l4_d))
    elif proto == _UDP:
        off = thoff + 6
        check = struct.unpack_from("!H", buf, off)[0]
        if check:
            check = apply(check, l4_d)
        else:
            # udp_dnat/snat_handler: a datagram sent without a checksum gets
            # a full one (0 is sent as CSUM_MANGLED_0).
            n = dst_at - src_at
            buf[off:off + 2] = b"\0\0"
            check = l4_checksum(bytes(buf[src_at:dst_at]), bytes(buf[dst_at:dst_at + n]), _UDP,
                                bytes(buf[thoff:]))
        struct.pack_into("!H", buf, off, check or 0xFFFF)


def xmit(engine, cp, buf, ihl):
    if engine.short:
        engine.count_drop("truncated")  # tcp/udp_dnat_handler: no header to rewrite
        return None
    if not decrement_ttl(engine, buf) or not mtu_ok(engine, buf, engine.mtu, False):
        return None
    ip_d, l4_d, _, _ = conn_deltas(cp)
    _rewrite(buf, ihl, 16, 2, cp.daddr, cp.dport, ip_d, l4_d)
    return engine.output(cp.daddr, bytes(buf), engine.path_mtu(cp.dest))


def reply(engine, cp, buf, ihl):
    """A real server's reply, forwarded to the client with the VIP as its source."""
    if engine.short:
        engine.count_drop("truncated")
        return None
    if not forward_ok(engine, buf, engine.own_address(cp.vaddr)):
        return None
    _, _, ip_d, l4_d = conn_deltas(cp)
    _rewrite(buf, ihl, 12, 0, cp.vaddr, cp.vport, ip_d, l4_d)
    return engine.output(cp.caddr, bytes(buf), engine.mtu)


def forward(engine, buf, cp):
    """A packet the director only routes (ip_forward): TTL down, otherwise as it came."""
    if not forward_ok(engine, buf, engine.own_address(cp.vaddr)):
        return None
    return engine.output(bytes(buf[16:20]), bytes(buf), engine.mtu)


# IPv6 (ip_vs_nat_xmit_v6, handle_response for AF_INET6): no header checksum; the
# TCP/UDP checksum covers the IPv6 pseudo-header, so the same per-connection delta
# over address and port moves it. The transport header is found at `thoff`, past
# any extension headers; a UDP checksum of 0 is not allowed over IPv6, but the
# kernel's handlers still fill one in, as for IPv4.

def _rewrite_v6(buf, thoff, proto, addr_off, port_off, addr, port, l4_d):
    buf[addr_off:addr_off + 16] = addr
    struct.pack_into("!H", buf, thoff + port_off, port)
    _l4_update(buf, thoff, proto, l4_d, 8, 24)


def xmit_v6(engine, cp, buf, thoff):
    if engine.short:
        engine.count_drop("truncated")
        return None
    if not decrement_hlim(engine, buf) or not mtu_ok_v6(engine, buf, engine.path_mtu(cp.dest)):
        return None
    _, l4_d, _, _ = conn_deltas(cp)
    _rewrite_v6(buf, thoff, cp.protocol, 24, 2, cp.daddr, cp.dport, l4_d)
    return engine.output(cp.daddr, bytes(buf), engine.path_mtu(cp.dest))


def reply_v6(engine, cp, buf, thoff):
    if engine.short:
        engine.count_drop("truncated")
        return None
    if not forward_ok_v6(engine, buf, engine.own_address(cp.vaddr)):
        return None
    _, _, _, l4_d = conn_deltas(cp)
    _rewrite_v6(buf, thoff, cp.protocol, 8, 0, cp.vaddr, cp.vport, l4_d)
    return engine.output(cp.caddr, bytes(buf), engine.mtu)


def forward_v6(engine, buf, cp):
    if not forward_ok_v6(engine, buf, engine.own_address(cp.vaddr)):
        return None
    return engine.output(bytes(buf[24:40]), bytes(buf), engine.mtu)
