"""Direct routing (ip_vs_dr_xmit): the packet goes to the real server's MAC as it is.

Only the link-layer destination changes (the next hop is the real server,
the IP destination stays the VIP), apart from what any router does: the
kernel's route lookup decrements the TTL and refreshes the IP checksum.
"""

from forwarders._common import decrement_hlim, decrement_ttl, mtu_ok, mtu_ok_v6


def xmit(engine, cp, buf, ihl):
    if not decrement_ttl(engine, buf) or not mtu_ok(engine, buf, engine.mtu, False):
        return None
    return engine.output(cp.daddr, bytes(buf), engine.path_mtu(cp.dest))


def xmit_v6(engine, cp, buf, ihl):
    """ip_vs_dr_xmit_v6: the same, with the hop limit."""
    if not decrement_hlim(engine, buf) or not mtu_ok_v6(engine, buf, engine.path_mtu(cp.dest)):
        return None
    return engine.output(cp.daddr, bytes(buf), engine.path_mtu(cp.dest))
