"""What the engine answers with: packets to send, with their next hop."""

import ipaddress


class Transmit:
    """A packet to send: `packet` is the IPv4 or IPv6 packet, `nexthop` the address
    (4 or 16 bytes) whose MAC it goes to."""

    __slots__ = ("nexthop", "packet")

    def __init__(self, nexthop, packet):
        self.nexthop = nexthop
        self.packet = packet

    def __repr__(self):
        return "Transmit(nexthop=%s, %d bytes)" % (ipaddress.ip_address(bytes(self.nexthop)),
                                                   len(self.packet))
