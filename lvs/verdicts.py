"""What the engine answers with: packets to send, with their next hop."""


class Transmit:
    """A packet to send: `packet` is the IPv4 packet, `nexthop` the address whose MAC it goes to."""

    __slots__ = ("nexthop", "packet")

    def __init__(self, nexthop, packet):
        self.nexthop = nexthop
        self.packet = packet

    def __repr__(self):
        return "Transmit(nexthop=%s, %d bytes)" % (".".join(map(str, self.nexthop)), len(self.packet))
