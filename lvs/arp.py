"""ARP for IPv4 over Ethernet (RFC 826): the frames the live director reads and writes."""

import struct

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ARPOP_REQUEST = 1
ARPOP_REPLY = 2
BROADCAST = b"\xff" * 6
_ARP = struct.Struct("!HHBBH6s4s6s4s")  # htype ptype hlen plen op sha spa tha tpa


def parse(frame):
    """(op, sender MAC, sender IP, target IP) of an Ethernet ARP frame, or None."""
    if len(frame) < 14 + _ARP.size:
        return None
    htype, ptype, hlen, plen, op, sha, spa, _, tpa = _ARP.unpack_from(frame, 14)
    if htype != 1 or ptype != ETH_P_IP or hlen != 6 or plen != 4:
        return None
    return op, sha, spa, tpa


def frame(op, src_mac, sha, spa, tha, tpa, dst_mac):
    return (dst_mac + src_mac + struct.pack("!H", ETH_P_ARP)
            + _ARP.pack(1, ETH_P_IP, 6, 4, op, sha, spa, tha, tpa))


def reply(my_mac, my_ip, request_sha, request_spa):
    """The answer to `who-has my_ip tell request_spa`."""
    return frame(ARPOP_REPLY, my_mac, my_mac, my_ip, request_sha, request_spa, request_sha)


def request(my_mac, my_ip, target_ip):
    """`who-has target_ip tell my_ip`, broadcast."""
    return frame(ARPOP_REQUEST, my_mac, my_mac, my_ip, b"\0" * 6, target_ip, BROADCAST)
