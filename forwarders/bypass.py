"""Cache bypass (ip_vs_bypass_xmit): with cache_bypass set, a firewall-mark
service that has no real server left routes the packet on to the address it
was sent to, as a plain router would, instead of refusing it."""

from forwarders._common import decrement_hlim, decrement_ttl, mtu_ok, mtu_ok_v6


def xmit(engine, cp, buf, ihl):
    if not decrement_ttl(engine, buf) or not mtu_ok(engine, buf, engine.mtu, False):
        return None
    return engine.output(bytes(buf[16:20]), bytes(buf), engine.mtu)


def xmit_v6(engine, cp, buf, ihl):
    if not decrement_hlim(engine, buf) or not mtu_ok_v6(engine, buf, engine.mtu):
        return None
    return engine.output(bytes(buf[24:40]), bytes(buf), engine.mtu)
