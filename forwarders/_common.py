"""What every method does before its own rewrite (__ip_vs_get_out_rt and
__ip_vs_get_out_rt_v6): the TTL or hop limit, and the path MTU."""

import struct

from lvs.checksum import apply, fold
from lvs.icmp import ICMP_DEST_UNREACH, ICMP_EXC_TTL, ICMP_FRAG_NEEDED, ICMP_TIME_EXCEEDED


def decrement_ttl(engine, buf, src=None):
    """The route to a real server is a forward: TTL 1 dies with ICMP time exceeded."""
    if buf[8] <= 1:
        engine.send_icmp_error(buf, ICMP_TIME_EXCEEDED, ICMP_EXC_TTL, 0, src)
        engine.count_drop("ttl_exceeded")
        return False
    buf[8] -= 1
    # TTL is the high byte of its 16-bit word: the checksum moves by 0x0100.
    check = struct.unpack_from("!H", buf, 10)[0]
    struct.pack_into("!H", buf, 10, apply(check, fold(0xFEFF)))
    return True


def mtu_ok(engine, buf, mtu, tunnel, src=None):
    """ensure_mtu_is_adequate: a DF packet too big for the path gets frag-needed."""
    if tunnel and not engine.config.pmtu_disc:
        return True  # it will be fragmented instead
    if engine.relaying_icmp:
        return True  # ICMP errors are never refused for size; they are fragmented
    length = struct.unpack_from("!H", buf, 2)[0]
    if buf[6] & 0x40 and length > mtu:
        engine.send_icmp_error(buf, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, mtu, src)
        engine.count_drop("frag_needed")
        return False
    return True


def forward_ok(engine, buf, src):
    """ip_forward's order for packets the director routes: TTL check, MTU check, then
    the decrement; errors come from the director's own address `src`."""
    if buf[8] <= 1:
        return decrement_ttl(engine, buf, src)
    if not mtu_ok(engine, buf, engine.mtu, False, src):
        return False
    return decrement_ttl(engine, buf, src)


def decrement_hlim(engine, buf):
    """decrement_ttl for IPv6: hop limit 1 dies with time exceeded (no header checksum)."""
    if buf[7] <= 1:
        engine.send_icmp_error(buf, ICMP_TIME_EXCEEDED, ICMP_EXC_TTL, 0)
        engine.count_drop("ttl_exceeded")
        return False
    buf[7] -= 1
    return True


def mtu_ok_v6(engine, buf, mtu):
    """ensure_mtu_is_adequate for IPv6 (__mtu_check_toobig_v6): no DF bit, so anything
    longer than the path is refused with packet too big; a reassembled datagram is
    measured by its largest fragment. An ICMP error being relayed is dropped silently."""
    reasm = engine._reasm
    size = reasm.max_size if reasm is not None else len(buf)
    if size > mtu:
        if not engine.relaying_icmp:
            engine.send_icmp_error(buf, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, mtu)
        engine.count_drop("frag_needed")
        return False
    return True


def forward_ok_v6(engine, buf, src):
    """ip6_forward's order for packets the director only routes: hop limit, then MTU."""
    if buf[7] <= 1:
        engine.send_icmp_error(buf, ICMP_TIME_EXCEEDED, ICMP_EXC_TTL, 0, src)
        engine.count_drop("ttl_exceeded")
        return False
    if not mtu_ok_v6(engine, buf, engine.mtu):
        return False
    buf[7] -= 1
    return True
