"""ICMP errors the director sends (icmp_send, as IPVS calls it).

IPVS sends three: port unreachable when a service has no usable real server
(ip_vs_leave), time exceeded when the TTL runs out on the way to a real
server (decrement_ttl), and fragmentation needed when a DF packet does not
fit the path (ensure_mtu_is_adequate). Like icmp_send, the error quotes the
offending packet up to a 576-byte reply, comes from the address the packet
was sent to, with the packet's TOS bits under internetwork-control
precedence and TTL 64, and is never
sent about another ICMP error.
"""

import struct

from .checksum import checksum

ICMP_DEST_UNREACH = 3
ICMP_TIME_EXCEEDED = 11
ICMP_PORT_UNREACH = 3
ICMP_FRAG_NEEDED = 4
ICMP_EXC_TTL = 0

ERROR_TYPES = frozenset((3, 4, 5, 11, 12))  # dest unreach, quench, redirect, time exceeded, param problem
MAX_REPLY = 576


def ipv4_header(tos, total, ident, frag, proto, saddr, daddr, ttl=64):
    """A 20-byte IPv4 header with its checksum, for packets the director itself sends."""
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, tos, total, ident, frag, ttl, proto, 0, saddr, daddr))
    struct.pack_into("!H", hdr, 10, checksum(hdr))
    return bytes(hdr)


def is_icmp_error(packet, ihl):
    return packet[9] == 1 and len(packet) > ihl and packet[ihl] in ERROR_TYPES


def build_error(packet, icmp_type, code, info, saddr, ident):
    """The IPv4 packet of an ICMP error about `packet` (its IP header first).

    Returns None where icmp_send would stay silent: errors about ICMP errors
    and about non-first fragments.
    """
    ihl = (packet[0] & 0x0F) * 4
    if is_icmp_error(packet, ihl):
        return None
    if struct.unpack_from("!H", packet, 6)[0] & 0x1FFF:
        return None
    quote = bytes(packet[:MAX_REPLY - 28])
    icmp = bytearray(struct.pack("!BBHI", icmp_type, code, 0, info) + quote)
    struct.pack_into("!H", icmp, 2, checksum(icmp))
    total = 20 + len(icmp)
    tos = (packet[1] & 0x1E) | 0xC0  # the quoted TOS bits, internetwork-control precedence
    return ipv4_header(tos, total, ident, 0, 1, saddr, bytes(packet[12:16])) + bytes(icmp)
