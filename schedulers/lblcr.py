"""Locality-based least-connection with replication: net/netfilter/ipvs/ip_vs_lblcr.c.

Each destination address maps to a SET of dests (newest first, as
list_add_rcu puts them). A packet takes the set's weighted least-connection
member (ip_vs_dest_set_min: skips overloaded, needs weight > 0 and
AVAILABLE, strict loh*dw > doh*lw). If the set has more than one member and
was not modified for lblcr_expiration, its most loaded member
(ip_vs_dest_set_max) is dropped - after the min was chosen, so the dest
returned may be the one just dropped. If the min is missing or lblc-style
overloaded (is_overloaded), the service-wide wlc choice is made and added
to the set. Entry expiry is the same periodic timer as lblc.
"""

from lvs.flags import IP_VS_DEST_F_AVAILABLE, IP_VS_DEST_F_OVERLOAD
from lvs.registry import register_scheduler

from ._base import Scheduler
from ._hashing import LocalityScheduler
from ._index import LocalityIndexed

IP_VS_LBLCR_TAB_BITS = 10


def _overhead(dest):
    return (dest.activeconns << 8) + dest.inactconns


class _Entry:
    __slots__ = ("dests", "lastmod", "lastuse")

    def __init__(self, dest, now):
        self.dests = [dest]
        self.lastmod = now
        self.lastuse = now


def set_min(dests):
    it = iter(dests)
    least = None
    for d in it:
        if d.flags & IP_VS_DEST_F_OVERLOAD:
            continue
        if d.weight > 0 and d.flags & IP_VS_DEST_F_AVAILABLE:
            least, loh = d, _overhead(d)
            break
    if least is None:
        return None
    for d in it:
        if d.flags & IP_VS_DEST_F_OVERLOAD:
            continue
        doh = _overhead(d)
        if loh * d.weight > doh * least.weight and d.flags & IP_VS_DEST_F_AVAILABLE:
            least, loh = d, doh
    return least


def set_max(dests):
    it = iter(dests)
    most = None
    for d in it:
        if d.weight > 0:
            most, moh = d, _overhead(d)
            break
    if most is None:
        return None
    for d in it:
        doh = _overhead(d)
        if moh * d.weight < doh * most.weight and d.weight > 0:
            most, moh = d, doh
    return most


@register_scheduler
class LocalityLeastConnectionReplicated(LocalityIndexed, LocalityScheduler, Scheduler):
    name = "lblcr"
    TAB_BITS = IP_VS_LBLCR_TAB_BITS
    EXPIRATION_SYSCTL = "lblcr_expiration"

    def __init__(self, svc, config=None, now=None):
        super().__init__(svc, config)
        self._init_table(now)

    def schedule(self, svc, pkt, now):
        self.tick(now)
        en = self.entries.get(pkt.daddr)
        if en is None:
            dest = self.wlc_choice(svc)
            if dest is not None and not self.dead:
                self.entries[pkt.daddr] = _Entry(dest, now)
            return dest
        en.lastuse = now
        dest = set_min(en.dests)
        # Compaction: a set untouched for the expiration drops its busiest.
        if len(en.dests) > 1 and now > en.lastmod + self._expiration():
            m = set_max(en.dests)
            if m is not None:
                en.dests.remove(m)
                en.lastmod = now
        if dest is not None and not self.overloaded(dest, svc):
            return dest
        dest = self.wlc_choice(svc)
        if dest is None:
            return None
        if not self.dead and dest not in en.dests:
            en.dests.insert(0, dest)
            en.lastmod = now
        return dest
