"""IP-in-IP tunnelling (ip_vs_tunnel_xmit): a new outer IPv4 header to the real server.

The outer header is built as the kernel builds it: TTL copied from the inner
packet after its decrement; TOS from the inner DSCP with ECN encapsulated per
RFC 6040 (INET_ECN_encapsulate: CE becomes ECT(0)); DF copied from the inner
packet when pmtu_disc is on, clear otherwise; ID 0 when DF is set
(ip_select_ident), else from the engine's seeded generator; source the
director's address. GUE and GRE tunnels are not built: their packets are
dropped and counted.
"""

import struct

from lvs.verdicts import Transmit

from lvs.checksum import checksum
from forwarders._common import decrement_ttl, mtu_ok

IPPROTO_IPIP = 4


def ecn_encapsulate(tos):
    ecn = tos & 3
    return (tos & ~3) | (2 if ecn == 3 else ecn)


def xmit(engine, cp, buf, ihl):
    if cp.dest is not None and cp.dest.tun_type != 0:
        engine.count_drop("tunnel_type_unsupported")
        return None
    if not decrement_ttl(engine, buf) or not mtu_ok(engine, buf, engine.mtu - 20, True):
        return None
    saddr = engine.director_addr or cp.vaddr
    df = buf[6] & 0x40 if engine.config.pmtu_disc else 0
    ident = 0 if df else engine.ip_ident(saddr, cp.daddr, IPPROTO_IPIP)
    outer = bytearray(struct.pack("!BBHHBBBBH4s4s", 0x45, ecn_encapsulate(buf[1]), 20 + len(buf),
                                  ident, df, 0, buf[8], IPPROTO_IPIP, 0, saddr, cp.daddr))
    struct.pack_into("!H", outer, 10, checksum(outer))
    return Transmit(cp.daddr, bytes(outer + buf))
