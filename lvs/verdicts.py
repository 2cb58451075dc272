"""What the engine answers with: packets to send, with their next hop."""

import socket


class Transmit:
    """A packet to send: `packet` is the IPv4 or IPv6 packet, `nexthop` the address
    (4 or 16 bytes) whose MAC it goes to."""

    __slots__ = ("nexthop", "packet")

    def __init__(self, nexthop, packet):
        self.nexthop = nexthop
        self.packet = packet

    def __repr__(self):
        family = socket.AF_INET6 if len(self.nexthop) == 16 else socket.AF_INET
        return "Transmit(nexthop=%s, %d bytes)" % (socket.inet_ntop(family, bytes(self.nexthop)),
                                                   len(self.packet))
